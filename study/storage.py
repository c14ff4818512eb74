"""Where a study lives: an Optuna RDB storage plus a study folder.

* The storage holds the trials (parameters, seeds, states, values, errors, metrics, energy). By default it
  is the SQLite file ``STUDY/study.db``; ``--storage postgresql://USER@HOST/DB`` (any SQLAlchemy
  URL Optuna accepts; the ``sweep`` extra installs psycopg, SQLAlchemy's PostgreSQL driver) lets workers
  on several machines share one study. The URL is saved in ``study.json``: keep a password out of it (``~/.pgpass`` or
  ``PGPASSWORD``, which PostgreSQL's client reads).
* The folder holds ``study.json`` (the storage URL, the study's name and its setup: base config, space,
  seeds, overrides) and ``runs/NNNN/``, one ordinary run folder per trial.

On SQLite every transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock before reading):
Optuna claims a queued trial by reading that it is waiting and then marking it running, which
PostgreSQL guards with ``SELECT ... FOR UPDATE`` but SQLite, whose reads take no lock, lets two
workers do at once; both would then run the same trial.

Workers send a heartbeat while a trial runs. A trial whose heartbeat stops (its worker was killed) is
marked failed by the next worker that looks, and re-queued with the same parameters (Optuna's
``RetryHeartbeatStaleTrialCallback``); the retry resumes the run folder's checkpoints. Optuna marks a trial
running before its first heartbeat and never finds a trial without one stale, so a worker killed in that
instant left a trial every other worker waited for forever: ``HeartbeatStorage`` also counts as stale a
running trial that has no heartbeat a grace period after it started.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb.models import TrialHeartbeatModel  # Optuna has no public reader of heartbeats
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from segdistill.atomic_files import atomic_write_text
from segdistill.errors import ConfigError

STUDY_FILE = "study.json"
MAX_RETRIES = 3  # a trial whose worker keeps dying (e.g. killed for memory) is not retried forever


def shown_url(url: str) -> str:
    """The storage URL for messages, without its password."""
    return make_url(url).render_as_string(hide_password=True)


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def lock_sqlite_transactions(engine: Engine) -> None:
    """Start every transaction of ``engine`` (SQLite) with BEGIN IMMEDIATE, so that a read-then-write
    such as claiming a waiting trial is atomic between processes."""

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # the sqlite3 module's own deferred BEGIN is off ...

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # ... and this one takes the write lock at once

    engine.dispose()  # connections opened before the listeners (table creation) are not reused


class HeartbeatStorage(RDBStorage):
    """Optuna's RDB storage whose stale trials include those that never sent a heartbeat."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        # datetime_start is the claiming worker's clock (datetime.now()); the grace period covers small skews
        started_before = datetime.now() - timedelta(seconds=self.grace_period)
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        suspects = [t._trial_id for t in running if t.datetime_start < started_before]
        if not suspects:
            return stale
        session = self.scoped_session()
        try:
            beating = {row[0] for row in session.query(TrialHeartbeatModel.trial_id).filter(TrialHeartbeatModel.trial_id.in_(suspects))}
        finally:
            self.scoped_session.remove()
        return stale + [trial_id for trial_id in suspects if trial_id not in beating]


def open_storage(url: str, heartbeat_s: int) -> RDBStorage:
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": 120}} if sqlite else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since Optuna 2.9
        storage = HeartbeatStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_s,
            grace_period=3 * heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
        )
    if sqlite:
        lock_sqlite_transactions(storage.engine)
    return storage


def create_study(study_dir: Path, name: str, url: str, setup: dict[str, Any], heartbeat_s: int) -> optuna.Study:
    """Create the study, or open it to resume when it exists with the same setup (else ConfigError)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    storage = open_storage(url, heartbeat_s)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    existing = study.user_attrs.get("setup")
    if existing is None:
        study.set_user_attr("setup", setup)
    elif existing != setup:
        changed = sorted(k for k in setup if existing.get(k) != setup[k])
        raise ConfigError(
            f"study {name!r} in {shown_url(url)} was started with a different {', '.join(changed)}; resume it with the same "
            "command, or start a new study (another --study folder or --name)"
        )
    info = {"name": name, "storage": url, "heartbeat_s": heartbeat_s, "setup": setup}
    atomic_write_text(study_dir / STUDY_FILE, json.dumps(info, indent=2))
    return study


def read_study_file(study_dir: Path) -> dict[str, Any]:
    path = study_dir / STUDY_FILE
    if not path.is_file():
        raise ConfigError(f"{str(study_dir)!r} is not a study folder: {str(path)!r} does not exist (run study/sweep.py first)")
    return json.loads(path.read_text())


def load_study(study_dir: Path, sampler: optuna.samplers.BaseSampler | None = None) -> tuple[optuna.Study, dict[str, Any]]:
    """The study of a study folder and the content of its study.json (name, storage, heartbeat_s, setup)."""
    info = read_study_file(study_dir)
    storage = open_storage(info["storage"], info["heartbeat_s"])
    return optuna.load_study(study_name=info["name"], storage=storage, sampler=sampler), info
