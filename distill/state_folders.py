"""Where a run keeps its training states (docs/architecture.md §4.5): the names of the folders only.

``OUTPUT/checkpoints/step_NNNNNNN`` is complete once it holds ``progress.json``; it is written as
``.tmp_step_NNNNNNN`` first, and states abandoned by resuming an earlier one go to
``abandoned_<time>_from_step_NNNNNNN``. No torch here: the study layer reads a run's states without it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

PROGRESS_NAME = "progress.json"
STATE_PATTERN = re.compile(r"^step_(\d+)$")
PENDING_PREFIX = ".tmp_"


def state_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete training-state folders of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STATE_PATTERN.match(child.name)
        if match and (child / PROGRESS_NAME).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def pending_state_dir(run_dir: str | Path, step: int) -> Path:
    """Where the state of ``step`` is written before it is given its final name (:func:`final_state_dir`)."""
    return Path(run_dir) / "checkpoints" / f"{PENDING_PREFIX}step_{step:07d}"


def final_state_dir(pending: Path) -> Path:
    return pending.parent / pending.name.removeprefix(PENDING_PREFIX)


def abandoned_dir(run_dir: str | Path, step: int) -> Path:
    """A new folder name for the states after ``step`` that resuming ``step`` abandons."""
    return Path(run_dir) / "checkpoints" / f"abandoned_{time.strftime('%Y%m%dT%H%M%S')}_from_step_{step:07d}"
