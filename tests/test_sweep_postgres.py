"""A study shared through a real PostgreSQL server, as workers on several machines share it: two sweep
commands ("machines", each with its own study folder) on one storage URL, one killed mid-trial and run
again. Every point and seed is trained once, and the report equals that of the same study on SQLite.

The test starts a throwaway server (initdb in a temporary folder, listening on 127.0.0.1 only). It needs
PostgreSQL's server programs (Debian: ``apt-get install postgresql``; ``.ci/run`` installs them); without
them it is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.helpers import ROOT, run_python, subprocess_env
from tests.test_sweep import RUN, SPACE

NAME = "grid"  # the study's name in either storage: the reports name it


def server_programs() -> Path | None:
    """The folder of initdb / pg_ctl: on PATH, or where Debian's packages put them."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own on a free loopback port; its URL (the default database)."""
    programs = server_programs()
    if programs is None:
        reason = "PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get install postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    # The server refuses to run as root: then it runs as the package's postgres user, in a folder it owns.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="segdistill-pg-"))
    if as_user:
        shutil.chown(folder, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    subprocess.run([*as_user, programs / "initdb", "-D", data, "-U", "segdistill", "-A", "trust", "--no-sync"], cwd=folder, check=True, capture_output=True)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    subprocess.run([*as_user, programs / "pg_ctl", "start", "-w", "-D", data, "-l", folder / "server.log", "-o", options], cwd=folder, check=True, capture_output=True)
    try:
        yield f"postgresql://segdistill@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, programs / "pg_ctl", "stop", "-m", "immediate", "-D", data], cwd=folder, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def sweep(space: Path, study_dir: Path, *storage: str) -> list[str]:
    return [sys.executable, "study/sweep.py", "--space", str(space), "--seeds", "2", "--study", str(study_dir),
            "--name", NAME, *storage, "--heartbeat", "1", *RUN]  # fmt: skip


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report_tables(study_dir: Path) -> dict[str, str]:
    """The report's results (comparison and grid, as CSV and Markdown); not its trial numbers, times or energy."""
    done = run_python(["study/report.py", str(study_dir)], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = study_dir / "report"
    text = (out / "report.md").read_text()
    results = text[text.index("## Final comparison") : text.index("## Energy")]
    return {"report.md": results, **{name: (out / name).read_text() for name in ("comparison.csv", f"grid_{NAME}.csv")}}


@pytest.mark.slow
def test_two_machines_share_a_postgresql_study_survive_a_kill_and_report_as_sqlite(postgres_url: str, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = ["--storage", postgres_url]
    machines = [start(sweep(space, tmp_path / f"machine{i}", *storage)) for i in (0, 1)]
    sqlite = tmp_path / "sqlite"
    alone = start([*sweep(space, sqlite), "--workers", "2"])  # the same study on SQLite, meanwhile
    try:
        # Kill machine 0 (SIGKILL: no clean-up; its training run dies with it) while it trains a trial.
        deadline = time.monotonic() + 300
        while True:
            assert machines[0].poll() is None, "machine 0 ended before it could be killed"
            assert time.monotonic() < deadline, "machine 0 started no trial in time"
            running = [t for t in trials(postgres_url) if t.state.name == "RUNNING" and "machine0" in t.user_attrs.get("run_dir", "")]
            if running and (Path(running[0].user_attrs["run_dir"]) / "train.log").is_file():
                break
            time.sleep(0.5)
        machines[0].send_signal(signal.SIGKILL)
        machines[0].wait()
        machines[0] = start(sweep(space, tmp_path / "machine0", *storage))
        for sweeper in [*machines, alone]:
            sweeper.wait(timeout=600)
    finally:
        for sweeper in [*machines, alone]:
            sweeper.kill()
    assert [m.returncode for m in [*machines, alone]] == [0, 0, 0]

    final = trials(postgres_url)
    completed = sorted((t.params["train.optimizer.lr"], t.params["seed"]) for t in final if t.state.name == "COMPLETE")
    assert completed == [(0.01, 0), (0.01, 1), (0.02, 0), (0.02, 1)]  # every good point x seed, trained once
    crashed = sorted(t.params["seed"] for t in final if t.state.name == "FAIL" and "error" in t.user_attrs)
    assert crashed == [0, 1]  # the crashing point, once per seed
    killed = [t for t in final if t.state.name == "FAIL" and "error" not in t.user_attrs]
    assert [t.params for t in killed] == [running[0].params]  # the killed trial, retried in its place
    assert {Path(t.user_attrs["run_dir"]).parent.parent.name for t in final if t.state.name == "COMPLETE"} <= {"machine0", "machine1"}

    assert report_tables(tmp_path / "machine1") == report_tables(sqlite)


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=NAME, storage=url).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []
