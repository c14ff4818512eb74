"""Atomic file writes: the one place every artifact, checkpoint and report of the project is written.

A file is written beside its final name and renamed when complete, so a run killed (or a disk that
fills) at any moment leaves the old file or the new one, never a broken one and no temporary behind.
The file gets the mode an ordinary ``open(path, "w")`` would give it (0666 less the umask): a mounted
``final/`` must stay readable by a container's user, and ``tempfile.mkstemp`` alone would give 0600.
A write that fails for want of room or permission (full disk, read-only or forbidden folder, file-size
limit) raises :class:`UnwritableOutput`, one line naming the file.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from segdistill.errors import ConfigError

# Why a write fails when the output folder is the problem, not the program.
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


class UnwritableOutput(ConfigError):
    """An output file that cannot be written: the message names it and the reason."""


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_failure(err: Exception) -> str | None:
    """Why ``err`` is a failed write (None if it is not one). safetensors gives the errno only in its text,
    and ``torch.save`` (Accelerate's states) none at all: its writer's RuntimeError says where it stopped."""
    if isinstance(err, OSError):
        return os.strerror(err.errno) if err.errno in NO_ROOM else None
    if isinstance(err, SafetensorError):
        found = re.search(r"os error (\d+)", str(err))
        return os.strerror(int(found.group(1))) if found and int(found.group(1)) in NO_ROOM else None
    if isinstance(err, RuntimeError) and "inline_container" in str(err):
        return "the file could not be written completely (is the disk full, or a file-size limit reached?)"
    return None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Within the block, a failed write (see :func:`write_failure`) becomes :class:`UnwritableOutput` naming ``path``."""
    try:
        yield
    except (OSError, SafetensorError, RuntimeError) as err:
        reason = write_failure(err)
        if reason is None:
            raise
        raise UnwritableOutput(f"cannot write {str(path)!r}: {reason}") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it becomes ``path``.

    On any error (including a full disk or Ctrl-C) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # the final suffix kept: writers such as onnx.save_model and torch.export.save choose the format by it
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~current_umask())
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` fills a temporary file that then replaces ``path``; returns ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
