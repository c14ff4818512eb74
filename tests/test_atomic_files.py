"""The one atomic-write helper: files get the umask's mode (not mkstemp's 0600), a failed write leaves the old
file and no temporary behind, and every module writes its files through it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from segdistill.atomic_files import UnwritableOutput, atomic_write, atomic_write_text, current_umask
from tests.test_layers import module_files


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "model.json", "old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(UnwritableOutput, match=f"cannot write '{path}': No space left on device"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_current_umask_does_not_change_it() -> None:
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and current_umask() == 0o027
    finally:
        os.umask(before)


# Calls that write a file (appending to a log, mode "a", is not replacing one). Their destination must be the
# ``tmp`` that atomic_files renames into place, or a scratch file that never becomes an output.
WRITES = re.compile(r"\.write_text\(|\.write_bytes\(|savefig\(|json\.dump\(|np\.save|torch\.save\(|\.save(_model|_file)?\(|save_file\(|open\([^)]*[\"'][wx]")
SCRATCH = {("segdistill.export.to_int8", "onnx.save_model(graph, str(prepared))")}  # the quantizer's input, in a TemporaryDirectory


def test_every_module_writes_its_files_through_atomic_files() -> None:
    direct = [
        f"{name}:{number}: {line.strip()}"
        for name, path in module_files().items() if name != "segdistill.atomic_files"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if WRITES.search(line) and not re.search(r"\btmp\b", line) and (name, line.strip()) not in SCRATCH
    ]  # fmt: skip
    assert direct == []
