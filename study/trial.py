"""One trial = one ordinary training run (``python -m segdistill.train``) in its own process and run folder.

A separate process means a crash, a ``NonFiniteLoss`` or an out-of-memory kill of the run ends that trial
only; its error is read back from its log. On Linux the run is killed with its worker (PR_SET_PDEATHSIG),
so killing a sweep leaves no orphaned training behind, and the retry resumes from the run's checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from segdistill.processes import die_with_parent
from segdistill.state_folders import state_dirs

LOG_NAME = "train.log"


class TrialError(RuntimeError):
    """The training run of a trial failed; the message is its error."""


def last_error(log: Path) -> str:
    """The trainer's ``error: ...`` line if it printed one, else the log's last line (a traceback's exception)."""
    text = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.is_file() else []
    errors = [line for line in text if line.startswith("error: ")]
    if errors:
        return errors[-1].removeprefix("error: ")
    return text[-1].strip() if text else "no output"


def run_training(config: str | None, overrides: list[str], run_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Train (resuming the run folder's checkpoints if a killed attempt left some); the run's metrics.json.

    Raises :class:`TrialError` with the run's error when the process fails."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "segdistill.train", *(["--config", config] if config else []), *overrides, f"output_dir={run_dir}"]
    if state_dirs(run_dir):  # a killed attempt's checkpoints (the trainer resumes the latest)
        command.append("--resume")
    log = run_dir / LOG_NAME
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    if done.returncode != 0:
        raise TrialError(f"exit status {done.returncode}: {last_error(log)} (log: {log})")
    return json.loads((run_dir / "metrics.json").read_text())
