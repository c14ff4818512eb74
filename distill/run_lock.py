"""One training at a time per run folder: the main process holds an exclusive lock (``flock``) on
``OUTPUT/run.lock`` for the whole run; the kernel releases it when the process ends, however it ends,
so a killed run's folder can be resumed at once. A second run on the folder stops before it writes."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segdistill.atomic_files import writing
from segdistill.errors import ConfigError

LOCK_NAME = "run.lock"


class RunFolderBusy(ConfigError):
    """Another process trains in this run folder."""


@contextmanager
def run_folder_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder's lock within the block, or raise :class:`RunFolderBusy` naming its holder."""
    path = Path(run_dir) / LOCK_NAME
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 500).decode(errors="replace").strip() or "another process"
            raise RunFolderBusy(
                f"run folder {str(run_dir)!r} is in use by {holder} (it holds {str(path)!r}); wait until it "
                "ends, or choose another output_dir"
            ) from None
        # The holder is written into the locked file itself: an atomic replace would swap the very file
        # that others lock. A torn write here only garbles the name shown to a second run.
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on host {socket.gethostname()} (since {started})\n".encode())
        yield
    finally:
        os.close(fd)
