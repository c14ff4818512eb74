"""What ``pip install .`` installs: one import package, ``segdistill``, holding every module of the layer folders,
and a console script per command."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

from tests.helpers import ROOT

PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def test_wheel_holds_one_package_with_every_module_and_the_commands(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", *PACKAGE_DIRS.values()):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("segdistill-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"segdistill"}
    for package, folder in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            inside = "/".join([*package.split("."), *path.relative_to(ROOT / folder).parts])
            assert inside in names, f"{path.relative_to(ROOT)} is not installed (as {inside})"
    entry_points = configparser.ConfigParser()
    entry_points.read_string(zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode())
    scripts = dict(entry_points["console_scripts"])
    assert scripts["segdistill-train"] == "segdistill.train:cli"
    assert scripts == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_console_script_reports_a_users_mistake_in_one_line(tmp_path):
    script = Path(sys.executable).parent / "segdistill-export-onnx"  # installed by run.sh setup (pip install -e .)
    result = subprocess.run([str(script), "--checkpoint", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: checkpoint {str(tmp_path / 'missing')!r} does not exist (a model checkpoint is a folder with model.safetensors and model.json)"]
