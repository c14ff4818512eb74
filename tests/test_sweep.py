"""Sweeps: a 2-worker study of tiny synthetic runs sharing one SQLite file, killed and resumed, with a
crashing trial, energy figures and the report files; plus the checks of a search-space file."""

from __future__ import annotations

import glob
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest

from segdistill.errors import ConfigError
from segdistill.study.space import check_against_config, load_space, parse_space
from segdistill.study.storage import load_study, open_storage, read_study_file
from segdistill.study.sweep import parse_args, start
from segdistill.study.worker import CLAIM, build_sampler, claim, duplicate_of
from tests.helpers import ROOT, TINY, run_python, subprocess_env

SPACE = """\
sampler: grid
params:
  train.optimizer.lr: [0.01, 0.02, -1.0]   # -1: torch refuses it when the run starts, a crashing trial
"""
RUN = [*TINY, "train.iterations=2", "train.eval_interval=2", "train.checkpoint_interval=1"]


def rapl_readable() -> bool:
    return any(Path(p).is_file() and Path(p).stat().st_mode & 0o444 for p in glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj"))


def trials(study_dir: Path) -> list[optuna.trial.FrozenTrial]:
    if not (study_dir / "study.json").is_file():  # written once the study exists
        return []
    storage = f"sqlite:///{study_dir / 'study.db'}"
    try:
        return optuna.load_study(study_name=study_dir.name, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def sweep_command(space: Path, study_dir: Path) -> list[str]:
    return [sys.executable, "study/sweep.py", "--space", str(space), "--seeds", "2", "--workers", "2",
            "--study", str(study_dir), "--heartbeat", "1", *RUN]  # fmt: skip


def runs_of(study_dir: Path) -> list[psutil.Process]:
    """Live processes (workers, training runs) working on this study."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(study_dir) in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.mark.slow
def test_two_workers_share_a_study_survive_a_kill_and_report(tmp_path):
    space, study_dir = tmp_path / "space.yaml", tmp_path / "study"
    space.write_text(SPACE)
    first = subprocess.Popen(sweep_command(space, study_dir), cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill the whole sweep (SIGKILL: no clean-up) once a trial has finished while another is training.
    deadline = time.monotonic() + 400
    while True:
        assert first.poll() is None, "the sweep ended before it could be killed mid-way"
        assert time.monotonic() < deadline, "no trial finished in time"
        states = trials(study_dir)
        running = [t for t in states if t.state.name == "RUNNING" and (Path(t.user_attrs.get("run_dir", "-")) / "train.log").is_file()]
        done = [t for t in states if t.state.name == "COMPLETE"]
        if done and running:
            break
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    for _ in range(50):  # the workers and their training runs die with the sweep (PR_SET_PDEATHSIG)
        if not runs_of(study_dir):
            break
        time.sleep(0.2)
    assert not runs_of(study_dir), "training processes outlived the killed sweep"
    finished = {t.number: (Path(t.user_attrs["run_dir"]) / "metrics.json").stat().st_mtime_ns for t in done}
    killed = [t for t in trials(study_dir) if t.state.name == "RUNNING"]  # training, or claimed a moment before the kill

    resumed = subprocess.run(sweep_command(space, study_dir), cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    final = trials(study_dir)
    by_number = {t.number: t for t in final}
    for number, mtime in finished.items():  # finished trials are kept, not redone
        trial = by_number[number]
        assert trial.state.name == "COMPLETE"
        assert (Path(trial.user_attrs["run_dir"]) / "metrics.json").stat().st_mtime_ns == mtime
    completed = sorted((t.params["train.optimizer.lr"], t.params["seed"]) for t in final if t.state.name == "COMPLETE")
    assert completed == [(0.01, 0), (0.01, 1), (0.02, 0), (0.02, 1)]  # every good point x seed, once
    for trial in killed:  # killed trials failed (no error of their own) and were retried once, in their run folder
        assert by_number[trial.number].state.name == "FAIL" and "error" not in by_number[trial.number].user_attrs
        retries = [t for t in final if t.system_attrs.get("retry_history", [None])[-1] == trial.number]
        # one killed before it drew a point has nothing to resume: its retry draws one at its start and steps
        # aside (PRUNED) when a trial that started earlier trains that point already
        assert [t.state.name for t in retries] in ([["COMPLETE"]] if trial.params else [["COMPLETE"], ["PRUNED"]])
        if "run_dir" in trial.user_attrs:  # it had started training: the retry resumes its folder
            assert retries[0].user_attrs["run_dir"] == trial.user_attrs["run_dir"]
    assert any("run_dir" in t.user_attrs for t in killed)
    # .get: a trial killed before the sampler gave it a point has no params (failed, and retried above)
    crashed = [t for t in final if t.params.get("train.optimizer.lr") == -1.0]
    assert len(crashed) == 2 and all(t.state.name == "FAIL" and "Invalid learning rate" in t.user_attrs["error"] for t in crashed)
    assert len([t for t in final if t.state.name != "PRUNED"]) == 6 + len(killed)  # PRUNED: a raced duplicate

    for trial in (t for t in final if t.state.name == "COMPLETE"):
        energy = trial.user_attrs["energy"]
        assert energy["train"]["kwh"] > 0 and energy["train"]["kg_co2"] > 0
        assert energy["eval"]["images"] == 5 and energy["eval"]["kwh"] > 0
        if not rapl_readable():
            assert energy["train"]["estimate"] is True and energy["eval"]["estimate"] is True

    report = run_python(["study/report.py", str(study_dir)], timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    out = study_dir / "report"
    for name in ("report.md", "comparison.csv", "grid_study.csv", "energy.csv", "trials.csv", "heatmap_study.png", "comparison_synthetic_lcnet_050_fcn.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    text = (out / "report.md").read_text()
    assert "| student alone | study | lr=" in text and " ± " in text and "**" in text
    assert "Invalid learning rate" in text
    # every finished run, but one retried after its last checkpoint (0 steps of its own) has no training figure
    trained = sum(t.user_attrs["energy"]["train"]["steps"] > 0 for t in final if t.state.name == "COMPLETE")
    assert trained >= 4 - len(killed)
    assert (f"| student (est.) | {trained} |" if not rapl_readable() else f"| student | {trained} |") in text


def test_a_trial_claimed_by_a_worker_killed_before_its_first_heartbeat_is_retried(tmp_path):
    """Optuna marks a trial running before its heartbeat thread first beats; a worker killed in between
    left a running trial that was never found stale, and every later worker waited for it forever."""
    space, study_dir = tmp_path / "space.yaml", tmp_path / "study"
    space.write_text("params:\n  train.optimizer.lr: [0.01]\n")
    command = ["study/sweep.py", "--space", str(space), "--seeds", "1", "--study", str(study_dir), "--heartbeat", "1", *RUN]
    setup = read_study_file(start(parse_args(command[1:])))["setup"]
    study, _ = load_study(study_dir, build_sampler(parse_space(setup["space"], "space"), setup["seeds"]))
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: heartbeats are meant for Study.optimize, as the workers use them
        orphan = study.ask()  # claimed (running, grid point 0 assigned), and its worker dies before any heartbeat

    resumed = run_python(command, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = trials(study_dir)
    assert final[orphan.number].state.name == "FAIL"
    assert [(t.state.name, t.params) for t in final[orphan.number + 1 :]] == [("COMPLETE", {"train.optimizer.lr": 0.01, "seed": 0})]


def test_of_two_trials_on_one_point_the_later_claim_steps_aside(tmp_path):
    """Seen in CI under load: a new trial started, a retry started, claimed and looked while the new trial's point
    was not yet in the storage, then the new trial drew the same point; by start order both went on and the point
    trained twice. By claim order the new trial steps aside. A claim a retry inherits from the trial it repeats
    counts for nothing until the retry claims itself. (Queued trials stand in for both: a queued trial's point
    reaches the storage when it suggests it, as a sampled one's does.)"""
    study = optuna.create_study(study_name="order", storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_s=60))
    storage = study._storage  # the study's cached view of it

    def start(x: int, inherited_claim: list | None = None) -> optuna.Trial:
        study.enqueue_trial({"x": x}, user_attrs={CLAIM: inherited_claim} if inherited_claim else None)
        waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        assert storage.set_trial_state_values(waiting[0]._trial_id, optuna.trial.TrialState.RUNNING)
        return optuna.Trial(study, waiting[0]._trial_id)

    newer = start(1)  # trial 0 starts; its point is not in the storage yet
    retry = start(1, inherited_claim=[7, 0.0])  # trial 1: the retry of a killed trial 7
    retry.suggest_categorical("x", [1, 2])
    assert duplicate_of(study, retry, claim(retry)) is None  # trial 0 has no point yet
    newer.suggest_categorical("x", [1, 2])
    assert duplicate_of(study, newer, claim(newer)) == retry.number

    inherited = start(2, inherited_claim=[8, 0.0])  # a retry that has not claimed yet
    inherited.suggest_categorical("x", [1, 2])
    other = start(2)
    other.suggest_categorical("x", [1, 2])
    assert duplicate_of(study, other, claim(other)) is None  # the claim inherited from trial 8 does not count
    assert duplicate_of(study, inherited, claim(inherited)) == other.number
    study.tell(inherited, state=optuna.trial.TrialState.PRUNED)  # it stepped aside
    study.tell(other, 0.5)
    after = start(2)
    after.suggest_categorical("x", [1, 2])
    assert duplicate_of(study, after, claim(after)) == other.number  # a finished trial covers its point


def claim_waiting_trials(url: str, start: multiprocessing.synchronize.Barrier, claimed: multiprocessing.Queue) -> None:
    """One worker's part of the race below: claim waiting trials as Optuna does when it pops one."""
    storage = open_storage(url, heartbeat_s=60)
    study_id = storage.get_study_id_from_name("race")
    start.wait()
    mine = []
    while waiting := storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        mine += [t.number for t in waiting if storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.RUNNING)]
    claimed.put(mine)


def test_each_waiting_trial_is_claimed_by_one_worker(tmp_path):
    """Four processes race for 40 queued trials on one SQLite file: each trial goes to exactly one of them
    (without BEGIN IMMEDIATE, SQLite let two workers claim, and run, the same trial)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="race", storage=open_storage(url, heartbeat_s=60))
    for i in range(40):
        study.enqueue_trial({"x": i})
    context = multiprocessing.get_context("spawn")
    start, claimed = context.Barrier(4), context.Queue()
    workers = [context.Process(target=claim_waiting_trials, args=(url, start, claimed)) for _ in range(4)]
    for worker in workers:
        worker.start()
    claims = sorted(n for _ in workers for n in claimed.get(timeout=120))
    for worker in workers:
        worker.join(timeout=60)
    assert claims == list(range(40))


def test_space_file_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="sampler 'bayes' is not one of"):
        parse_space({"sampler": "bayes", "params": {"train.optimizer.lr": [0.1]}}, "s.yaml")
    with pytest.raises(ConfigError, match="params.train.optimizer.lr: a grid needs a non-empty list"):
        parse_space({"params": {"train.optimizer.lr": 0.1}}, "s.yaml")
    with pytest.raises(ConfigError, match="'seed' is not a parameter"):
        parse_space({"params": {"seed": [0, 1]}}, "s.yaml")
    with pytest.raises(ConfigError, match="needs 'points'"):
        parse_space({"sampler": "tpe", "params": {"train.optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}}}, "s.yaml")
    with pytest.raises(ConfigError, match="low must be below high"):
        parse_space({"sampler": "random", "points": 2, "params": {"train.optimizer.lr": {"low": 1, "high": 0.1}}}, "s.yaml")
    with pytest.raises(ConfigError, match="unknown keys \\['seeds'\\]"):
        parse_space({"seeds": 3, "params": {"train.optimizer.lr": [0.1]}}, "s.yaml")
    (tmp_path / "typo.yaml").write_text("params:\n  train.optimizer.lrr: [0.1]\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.optimizer.lrr'"):
        check_against_config(load_space(tmp_path / "typo.yaml"), None, [])
    (tmp_path / "type.yaml").write_text("params:\n  train.iterations: [10, ten]\n")
    with pytest.raises(ConfigError, match="'train.iterations': expected int, got 'ten'"):
        check_against_config(load_space(tmp_path / "type.yaml"), None, [])
