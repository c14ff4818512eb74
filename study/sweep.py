"""Sweep config keys (learning rate, weight decay, tau, loss weights, ...) over several seeds per point.

    python study/sweep.py --config BASE.yaml --space SPACE.yaml --seeds 3 [--workers N] \
        [--study runs/studies/NAME] [--storage postgresql://USER@HOST/DB] [--base-from PREVIOUS_STUDY] [key=value ...]

Each trial is one ordinary run of distill/train.py (in its own process and run folder, STUDY/runs/NNNN)
with the point's values and one seed as overrides. The study's bookkeeping is Optuna's: a SQLite file in
the study folder by default, or any storage URL Optuna accepts (PostgreSQL for workers on several
machines: run the same command on each). A trial that crashes is recorded as failed with its error and
the study goes on; running the command again resumes the study: finished trials are kept, trials whose
worker was killed are run again (resuming their checkpoints). ``--base-from STUDY`` starts from the best
point (mean over seeds) of an earlier study, e.g. stage 2 of the protocol on top of stage 1.
Then: ``python study/report.py STUDY``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from segdistill.errors import ConfigError, command
from segdistill.processes import die_with_parent
from segdistill.study.space import check_against_config, load_space
from segdistill.study.storage import create_study, default_storage
from segdistill.study.worker import run_worker


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="base YAML experiment file of every trial")
    parser.add_argument("--space", help="YAML search space (see study/space.py)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per point: 0 .. N-1 (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--study", help="study folder (default runs/studies/<space file name>)")
    parser.add_argument("--name", help="study name in the storage (default: the study folder's name)")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///STUDY/study.db)")
    parser.add_argument("--base-from", action="append", default=[], metavar="STUDY", help="start from the best point of this study")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a running trial's heartbeats (default 60)")
    parser.add_argument("--worker", metavar="STUDY", help=argparse.SUPPRESS)  # internal: one worker of a started study
    parser.add_argument("overrides", nargs="*", help="key=value overrides of every trial")
    return parser.parse_args(argv)


def worker_env(workers: int) -> dict[str, str]:
    """Split the CPU threads between the workers' runs, unless the user chose a thread count."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}


def base_overrides(base_from: list[str]) -> tuple[list[str], list[dict]]:
    """The overrides that reproduce the best point of each earlier study, and a note of where they came from."""
    from segdistill.study.results import read_study

    overrides, sources = [], []
    for folder in base_from:
        result = read_study(folder)
        best = result.best()
        if best is None:
            raise ConfigError(f"--base-from {folder!r}: study {result.name!r} has no completed trial to start from")
        overrides += result.best_overrides()
        sources.append({"study": str(folder), "params": best.params, "mean": best.mean, "std": best.std, "seeds": best.seeds})
    return overrides, sources


def start(args: argparse.Namespace) -> Path:
    """Create (or reopen) the study described by the command line; its folder."""
    if args.space is None:
        raise ConfigError("--space is required (the YAML search space of the study)")
    if args.seeds < 1 or args.workers < 1 or args.heartbeat < 1:
        raise ConfigError("--seeds, --workers and --heartbeat must be at least 1")
    space = load_space(args.space)
    study_dir = Path(args.study or Path("runs/studies") / Path(args.space).stem)
    inherited, sources = base_overrides(args.base_from)
    overrides = [*inherited, *space.fixed_overrides(), *args.overrides]
    check_against_config(space, args.config, overrides)
    setup = {"config": args.config, "space": space.as_dict(), "seeds": list(range(args.seeds)), "overrides": overrides, "base_from": sources}
    create_study(study_dir, args.name or study_dir.name, args.storage or default_storage(study_dir), setup, args.heartbeat)
    return study_dir


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.worker:
        run_worker(Path(args.worker), worker_env(int(os.environ.get("SEGDISTILL_SWEEP_WORKERS", "1"))))
        return Path(args.worker)
    study_dir = start(args)
    began = time.perf_counter()
    print(f"study {study_dir} ({args.workers} worker(s) here); report: python study/report.py {study_dir}", flush=True)
    if args.workers == 1:
        run_worker(study_dir, worker_env(1))
    else:
        env = {**os.environ, "SEGDISTILL_SWEEP_WORKERS": str(args.workers)}
        command = [sys.executable, "-m", "segdistill.study.sweep", "--worker", str(study_dir)]
        preexec = die_with_parent if sys.platform == "linux" else None
        workers = [subprocess.Popen(command, env=env, preexec_fn=preexec) for _ in range(args.workers)]
        codes = [w.wait() for w in workers]
        if any(codes):
            raise SystemExit(f"error: worker exit statuses {codes}")
    print(f"study {study_dir} done in {(time.perf_counter() - began) / 60:.1f} min", flush=True)
    return study_dir


cli = command(main)


if __name__ == "__main__":
    sys.exit(cli())
