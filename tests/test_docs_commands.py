"""Every command line of README.md and docs/*.md that starts one of this repository's commands, as a user pastes
it: bash expands it (variables, quotes, braces), the command's own ``parse_args`` accepts it, and the config,
search space or presets it names exist and load with its overrides. ``scripts/compare.sh`` and
``scripts/protocol.sh`` lines run as dry runs (``PY=echo``) and each command they would start is checked the same
way. The lines that run end to end, verbatim, on tiny data are tested in test_readme_commands.py and
test_deploy_container.py; the long ones (CamVid trainings) cannot run in the suite, so this is what holds them to
the code."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from types import ModuleType

import pytest

from segdistill.config import load_config
from segdistill.errors import ConfigError
from segdistill.pretrain import load_pretrain_config
from segdistill.study.space import check_against_config, load_space
from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The variables that the docs' prose defines ("`R` = its run folder") rather than a line of the block.
PROSE_VARIABLES = {"D": "camvid:../shared/data/camvid", "C": "student.yaml", "R": "runs/R", "O": "runs/O", "S": "runs/S/final", "FCN": "runs/fcn", "LRASPP": "runs/lraspp", "SEGFORMER": "runs/segformer"}
PYTHONS = ("python", "python3", ".venv/bin/python")
PACKAGE_OF_FOLDER = {"distill": "segdistill", "export": "segdistill.export", "deploy": "segdistill.deploy", "study": "segdistill.study"}
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"  # the presets' model.pretrained files (../shared/weights)
CONFIG_LOADERS = {"segdistill.train": load_config, "segdistill.study.sweep": load_config, "segdistill.pretrain": load_pretrain_config}
DRY_RUN_SCRIPTS = ("scripts/compare.sh", "scripts/protocol.sh")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass
class DocLine:
    doc: str
    line: str
    assignments: list[str]  # the block's variable assignments above the line

    def __str__(self) -> str:
        return f"{self.doc}: {self.line}"


def doc_lines() -> list[DocLine]:
    """The lines of every bash block that start one of this repository's commands (continued lines joined)."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.DOTALL):
            assignments = []
            for raw in block.replace("\\\n", " ").splitlines():
                line = " ".join(raw.split())
                words = shlex.split(line, comments=True) if line else []
                if len(words) == 1 and ASSIGNMENT.match(words[0]):
                    assignments.append(line)
                    continue
                command = words
                while command and ASSIGNMENT.match(command[0]):
                    command = command[1:]
                if not command or "..." in command or any(w.startswith("[") for w in command):
                    continue  # not a command, or a synopsis ("[--workers N]", "--config ...")
                starts_ours = command[0] in PYTHONS and command[1] in ("-m", "-c") and command[2].startswith("segdistill")
                starts_ours |= command[0] in PYTHONS and command[1].endswith(".py")
                starts_ours |= command[:2] == ["accelerate", "launch"] or command[0] in DRY_RUN_SCRIPTS
                if starts_ours:
                    found.append(DocLine(doc.relative_to(ROOT).as_posix(), line, list(assignments)))
    return found


def expand(entry: DocLine) -> list[str]:
    """The words bash gives the line: variables of the block and of the prose, quotes, braces; an unset variable
    fails. Nothing runs but ``printf``: the line is the argument list of a function that prints its arguments."""
    prose = [f"{name}={shlex.quote(value)}" for name, value in PROSE_VARIABLES.items()]
    script = "\n".join(["set -u", *prose, *entry.assignments, "words() { printf '%s\\0' \"$@\"; }", f"words {entry.line}"])
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{entry}: bash cannot expand it: {done.stderr.strip()}"
    words = done.stdout.split("\0")[:-1]
    while ASSIGNMENT.match(words[0]):  # the environment of the command (OMP_NUM_THREADS=1 python ...)
        words.pop(0)
    return words


def script_module(path: str) -> ModuleType:
    folder, _, name = path.removesuffix(".py").partition("/")
    if folder in PACKAGE_OF_FOLDER:
        return importlib.import_module(f"{PACKAGE_OF_FOLDER[folder]}.{name}")
    spec = importlib.util.spec_from_file_location(f"docs_command_{folder}_{name}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def check_python_command(where: str, module: ModuleType, argv: list[str]) -> None:
    """``argv`` parses with the module's own parser; its config, search space and preset files exist and load."""
    assert hasattr(module, "parse_args"), f"{where}: {module.__name__} has no parse_args to check the line with"
    try:
        args = module.parse_args(argv)
    except SystemExit as stop:
        pytest.fail(f"{where}: {module.__name__} refuses the arguments {argv} (exit {stop.code})")
    loader = CONFIG_LOADERS.get(module.__name__)
    try:
        if loader and args.config:
            assert (ROOT / args.config).is_file(), f"{where}: --config {args.config} does not exist"
            loader(ROOT / args.config, args.overrides)
        if getattr(args, "space", None):
            assert (ROOT / args.space).is_file(), f"{where}: --space {args.space} does not exist"
            check_against_config(load_space(ROOT / args.space), str(ROOT / args.config), args.overrides)
        for preset in getattr(args, "configs", None) or []:  # benchmarks/loss_scales.py
            load_config(ROOT / preset, args.overrides)
    except ConfigError as err:
        if not SHARED_WEIGHTS.is_dir() and str(SHARED_WEIGHTS.relative_to(ROOT.parent)) in str(err):
            pytest.skip(f"no local ImageNet weights folder at {SHARED_WEIGHTS}, which {where} reads")
        pytest.fail(f"{where}: {err}")


def check_line(entry: DocLine, words: list[str]) -> int:
    """Check one expanded line; the number of commands checked (a dry-run script: those it would start)."""
    if words[0] in DRY_RUN_SCRIPTS:
        done = subprocess.run(["bash", *words], cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PY": "echo"}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{entry}: the dry run stops: {done.stderr.strip()}"
        started = [shlex.split(line) for line in done.stdout.splitlines() if line.startswith(("-m segdistill", "study/"))]
        assert started, f"{entry}: the dry run starts nothing"
        return sum(check_line(entry, ["python", *command]) for command in started)
    if words[0] == "accelerate":
        words = words[[i for i, w in enumerate(words) if w.endswith(".py")][0] - 1 :]
    if words[1] == "-m":
        module, argv = importlib.import_module(words[2]), words[3:]
    else:
        assert (ROOT / words[1]).is_file(), f"{entry}: {words[1]} does not exist"
        module, argv = script_module(words[1]), words[2:]
    check_python_command(str(entry), module, argv)
    return 1


LINES = doc_lines()


def test_the_docs_have_the_commands_this_test_checks() -> None:
    """A change of the block format must not leave this file checking nothing."""
    assert len(LINES) > 50
    assert {entry.doc for entry in LINES} >= {"README.md", "docs/deployment.md", "docs/results.md", "docs/comparable_kd.md"}


@pytest.mark.parametrize("entry", LINES, ids=[f"{e.doc}:{i}" for i, e in enumerate(LINES)])
def test_a_documented_command_parses_and_its_files_load(entry: DocLine) -> None:
    assert check_line(entry, expand(entry)) >= 1
