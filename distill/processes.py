"""Child processes that do not outlive the process that started them (Linux; elsewhere a no-op)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (a ``preexec_fn`` of child processes)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def die_with_launcher() -> None:
    """Under torchrun / ``accelerate launch --multi_gpu`` (which set TORCHELASTIC_RUN_ID), end this worker
    when the launcher dies: the launcher starts each worker in a session of its own, so a launcher killed
    without its clean-up (SIGKILL, out of memory) left the workers training on, unattended. Not for other
    parents: a run started from a shell must survive that shell (nohup)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    die_with_parent()
    if os.getppid() == 1:  # the launcher died before the request: re-parented to init, no signal will come
        os._exit(1)
