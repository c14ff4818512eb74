"""A study worker: takes trials from the shared study until none is left to start or running anywhere.

Several workers (processes on one machine, or machines sharing a PostgreSQL storage) run the same loop.
A trial is one (point, seed) pair: the grid sampler's search space includes the seed; with TPE or random
sampling each sampled point queues its other seeds as trials of their own, so every point is trained
with every seed and the report can give mean +- std per point.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from segdistill.study.space import SearchSpace, describe_params, override, parse_space
from segdistill.study.storage import load_study, read_study_file
from segdistill.study.trial import TrialError, run_training

SEED = "seed"
POLL_S = 5  # seconds between looks at a study whose remaining trials run elsewhere
CLAIM = "claimed"  # user attribute: [trial number, time] (see duplicate_of)


def build_sampler(space: SearchSpace, seeds: list[int]) -> optuna.samplers.BaseSampler:
    if space.sampler == "grid":
        # seed=0: every worker shuffles the grid the same way (Optuna's advice for distributed grids).
        return optuna.samplers.GridSampler({**space.grid(), SEED: seeds}, seed=0)
    if space.sampler == "tpe":
        return optuna.samplers.TPESampler()
    return optuna.samplers.RandomSampler()


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    params = {}
    for key, spec in space.params.items():
        if isinstance(spec, list):
            params[key] = trial.suggest_categorical(key, spec)
        elif "choices" in spec:
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not spec.get("log"):
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1))
        else:
            params[key] = trial.suggest_float(key, spec["low"], spec["high"], log=bool(spec.get("log")), step=spec.get("step"))
    return params


def _is_new_point(trial: FrozenTrial) -> bool:
    """A trial whose point was sampled (not a queued seed of another point, not a retry)."""
    return "seed_of" not in trial.user_attrs and trial.user_attrs.get("root", trial.number) == trial.number


def has_work(study: optuna.Study, space: SearchSpace, seeds: list[int]) -> bool:
    """A trial is waiting in the queue, or a point (grid point x seed, or sampled point) was never started."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if space.sampler == "grid":
        size = len(seeds)
        for values in space.grid().values():
            size *= len(values)
        return len({t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs}) < size
    return sum(_is_new_point(t) for t in trials) < space.points


def claim(trial: optuna.Trial) -> tuple[float, int]:
    """Mark the trial's point and seed as taken, once they are in the storage; the claim is written with the
    trial's own number, since a retry inherits the user attributes of the trial it repeats."""
    when = time.time()
    trial.set_user_attr(CLAIM, [trial.number, when])
    return when, trial.number


def claimed(trial: FrozenTrial) -> tuple[float, int] | None:
    """When ``trial`` claimed its point itself (not the claim a retry inherited), or None."""
    number, when = trial.user_attrs.get(CLAIM, (None, None))
    return (when, number) if number == trial.number else None


def duplicate_of(study: optuna.Study, trial: optuna.Trial, mine: tuple[float, int]) -> int | None:
    """The trial that already covers this trial's point and seed: finished, failed with an error of its own,
    or running with a claim older than this one's (``mine``, from :func:`claim`). Workers racing for the last
    grid points, or a new trial and the retry of a killed one, can take the same point: each claims, then
    looks, so of two the later claim sees the earlier and steps aside (Optuna's advice for duplicate
    parameters), and the earlier one, looking before the later claim was written, sees no claim at all. Start
    order would not do: a sampled trial's point reaches the storage some time after its start. A killed trial
    (failed without an error) covers nothing: its retry takes its place."""
    for other in study.get_trials(deepcopy=False):
        if other.number == trial.number or other.params != trial.params:
            continue
        if other.state == TrialState.COMPLETE or (other.state == TrialState.FAIL and "error" in other.user_attrs):
            return other.number
        theirs = claimed(other)
        if other.state == TrialState.RUNNING and theirs is not None and theirs < mine:
            return other.number
    return None


def make_objective(study: optuna.Study, study_dir: Path, setup: dict[str, Any], space: SearchSpace, env: dict[str, str]):
    seeds = setup["seeds"]

    def objective(trial: optuna.Trial) -> float:
        # Retries inherit the user attributes of the trial they repeat: same root, same run folder.
        root = trial.user_attrs.get("root", trial.number)
        trial.set_user_attr("root", root)
        params = suggest(trial, space)
        seed = trial.suggest_categorical(SEED, seeds)
        duplicate = duplicate_of(study, trial, claim(trial))
        if duplicate is not None:
            raise optuna.TrialPruned(f"point and seed already covered by trial {duplicate}")
        if space.sampler != "grid" and "seed_of" not in trial.user_attrs and root == trial.number:
            for other in seeds:
                if other != seed:
                    study.enqueue_trial({**params, SEED: other}, user_attrs={"seed_of": trial.number})
        run_dir = study_dir / "runs" / f"{root:04d}"
        overrides = [*setup["overrides"], *(override(k, v) for k, v in params.items()), f"seed={seed}"]
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", overrides)
        label = f"trial {trial.number} ({describe_params(params)}, seed={seed})"
        print(f"[worker {os.getpid()}] {label}: training in {run_dir}", flush=True)
        start = time.perf_counter()
        try:
            metrics = run_training(setup["config"], overrides, run_dir, env)
        except TrialError as err:
            trial.set_user_attr("error", str(err))
            print(f"[worker {os.getpid()}] {label}: FAILED: {err}", flush=True)
            raise
        trial.set_user_attr("metrics", {k: metrics.get(k) for k in ("miou", "best_miou", "pixel_accuracy", "parameters")})
        trial.set_user_attr("energy", metrics.get("energy"))
        trial.set_user_attr("wall_s", time.perf_counter() - start)
        value = metrics[space.metric]
        print(f"[worker {os.getpid()}] {label}: {space.metric} {100 * value:.2f} in {time.perf_counter() - start:.0f} s", flush=True)
        return value

    return objective


def run_worker(study_dir: Path, env: dict[str, str] | None = None) -> None:
    """Run trials until the study has nothing left to start and nothing running (killed trials included:
    once their heartbeat is stale they are failed and re-queued, and this worker takes them)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # fail_stale_trials
    setup = read_study_file(study_dir)["setup"]
    space = parse_space(setup["space"], str(study_dir))
    study, info = load_study(study_dir, build_sampler(space, setup["seeds"]))
    objective = make_objective(study, study_dir, setup, space, env or {})
    while True:
        optuna.storages.fail_stale_trials(study)
        if has_work(study, space, setup["seeds"]):
            study.optimize(objective, n_trials=1, catch=(TrialError,))
        elif any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
            # another worker's trial, or a killed one that is not stale yet; look again soon, so that a stage
            # ends within seconds of its last trial even with the default 60 s heartbeat
            time.sleep(min(info["heartbeat_s"], POLL_S))
        else:
            return
