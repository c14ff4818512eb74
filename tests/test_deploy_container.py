"""The container recipes. Docker cannot build here, so: both Dockerfiles parse, run as a non-root user,
copy files that exist, enter through the entrypoint script, and install exactly what
docs/deployment.md tells a person to install; the entrypoint's own checks run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCKERFILES = ["Dockerfile", "Dockerfile.jetson"]
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG",
    "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip
DOCS = ROOT / "docs" / "deployment.md"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, f"{path.name} ends inside a continued line"
    parsed = []
    for line in logical:
        word, _, rest = line.partition(" ")
        assert word.upper() == word and word in INSTRUCTIONS, f"{path.name}: unknown instruction {word!r}"
        parsed.append((word, " ".join(rest.split())))
    return parsed


def install_commands(steps: list[tuple[str, str]]) -> list[str]:
    """The commands of RUN steps that install something (system packages, libraries, Python packages, pins)."""
    markers = ("apt-get install", "pip", "keep-base", "lock.txt", "cusparse", "ldconfig")
    return [c.strip() for w, args in steps if w == "RUN" for c in args.split(" && ") if any(m in c.lower() for m in markers)]


def docs_block(marker: str) -> list[str]:
    """The lines of the fenced block that follows ``<!-- marker -->`` in docs/deployment.md."""
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```\w*\n(.*?)```", DOCS.read_text(), re.S)
    assert match, f"docs/deployment.md has no block marked <!-- {marker} -->"
    return [" ".join(line.split()) for line in match.group(1).splitlines() if line.strip()]


def flat(text: str) -> str:
    """Shell text with line continuations joined and whitespace collapsed."""
    return " ".join(text.replace("\\\n", " ").split())


def header_commands(path: Path) -> list[str]:
    """The ``docker build`` / ``docker run`` lines of a Dockerfile's header comment, continuations joined."""
    comment = "\n".join(line[1:] for line in path.read_text().splitlines() if line.startswith("#"))
    return [" ".join(line.split()) for line in comment.replace("\\\n", " ").splitlines() if line.strip().startswith("docker ")]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_parses_and_runs_unprivileged(name: str) -> None:
    steps = instructions(ROOT / name)
    words = [w for w, _ in steps]
    assert set(words[: words.index("FROM")]) <= {"ARG"}
    base = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)["BASE_IMAGE"]
    assert base.startswith("nvcr.io/nvidia/")
    users = [a for w, a in steps if w == "USER"]
    assert users and users[-1] not in ("root", "0") and words.index("USER") < words.index("ENTRYPOINT")
    assert any("useradd" in a and users[-1] in a for w, a in steps if w == "RUN")
    for word, args in steps:
        if word == "COPY":
            *sources, _ = args.split()
            assert all((ROOT / s).exists() for s in sources), f"{name}: COPY {sources}"
    entry = json.loads(next(a for w, a in steps if w == "ENTRYPOINT"))
    script = ROOT / Path(entry[0]).relative_to("/opt/segdistill")
    assert script.is_file() and os.access(script, os.X_OK)
    assert ("VOLUME", '["/cache"]') in steps


@pytest.mark.parametrize("name", DOCKERFILES)
def test_install_steps_are_the_documented_ones(name: str) -> None:
    commands = install_commands(instructions(ROOT / name))
    assert commands and commands == docs_block(f"install: {name}")
    assert header_commands(ROOT / name) and all(cmd in flat(DOCS.read_text()) for cmd in header_commands(ROOT / name))


def test_entrypoint_parses_and_says_what_to_mount(tmp_path: Path) -> None:
    script = ROOT / "deploy" / "entrypoint.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "CHECKPOINT": str(tmp_path / "student")}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"no ONNX export at {tmp_path / 'student'}/export/model.onnx" in result.stderr and "mount" in result.stderr


def test_server_image_installs_the_locked_versions(tmp_path: Path) -> None:
    """Everything but the base image's own torch / torchvision at the versions of requirements/lock.txt."""
    commands = install_commands(instructions(ROOT / "Dockerfile"))
    filtering = next(c for c in commands if "requirements/lock.txt" in c)
    constraints = filtering.rsplit("> ", 1)[1]
    assert f"-c {constraints}" in next(c for c in commands if "pip install" in c)
    subprocess.run(["bash", "-c", filtering.replace(constraints, str(tmp_path / "lock.txt"))], cwd=ROOT, check=True)
    locked = (ROOT / "requirements" / "lock.txt").read_text().splitlines()
    kept = [line for line in locked if not line.startswith(("torch==", "torchvision=="))]
    assert (tmp_path / "lock.txt").read_text().splitlines() == kept and len(kept) == len(locked) - 2


def test_jetson_image_installs_cusparselt_before_torch() -> None:
    """NVIDIA's JetPack 6.1 torch wheel links libcusparseLt.so.0, which JetPack does not ship."""
    commands = install_commands(instructions(ROOT / "Dockerfile.jetson"))
    copied = [i for i, c in enumerate(commands) if "libcusparse_lt" in c and "/usr/local/cuda/lib64" in c]
    torch_wheel = next(i for i, c in enumerate(commands) if "TORCH_WHEEL" in c)
    assert copied and copied[0] < commands.index("ldconfig") < torch_wheel


def test_jetson_build_needs_no_nvidia_runtime_and_the_start_checks_tensorrt(tmp_path: Path) -> None:
    """docker build has the NVIDIA runtime only where it is the daemon's default: TensorRT is checked at start."""
    steps = instructions(ROOT / "Dockerfile.jetson")
    assert not any("tensorrt" in args for word, args in steps if word == "RUN")
    export = tmp_path / "student" / "export"
    export.mkdir(parents=True)
    (export / "model.onnx").write_bytes(b"")
    (export / "model.onnx.json").write_text("{}")
    env = {**os.environ, "CHECKPOINT": str(tmp_path / "student"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    check = [sys.executable, "-c", "import tensorrt, torch; torch.cuda.get_device_properties(0)"]
    if subprocess.run(check, capture_output=True).returncode == 0:
        pytest.skip("TensorRT and a GPU are usable here: the entrypoint goes on to build")
    result = subprocess.run(["bash", str(ROOT / "deploy" / "entrypoint.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "error: TensorRT or the GPU is not usable in this container" in result.stderr and "--runtime nvidia" in result.stderr
