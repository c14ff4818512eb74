"""The import structure of the package, read from the source with ``ast``: no import cycle between modules,
and the layers depend on each other only the way docs/architecture.md §2 says."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

from tests.helpers import ROOT, run_python

PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def module_files() -> dict[str, Path]:
    """Every module of the installed package, by its import name, from pyproject's package-dir mapping."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project's modules ``path`` imports, at run time: module level and inside functions, but not under
    ``if TYPE_CHECKING:`` (annotations only). ``from package import name`` counts ``package.name`` when that is
    a module, else ``package``."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found & known


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_init_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` importing its own submodules is how Python packages work, not a cycle of design:
    drop the edges from a submodule back to its own package (``segdistill.losses.cwd -> segdistill.losses``)."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_the_graph_sees_the_known_imports():
    graph = import_graph()
    assert "segdistill.errors" in graph["segdistill.config"]
    assert "segdistill.kernels" in graph["segdistill.losses.cwd"]
    assert "segdistill.deploy.wrapper" in graph["segdistill.export.to_onnx"]


def test_no_import_cycle_between_modules():
    assert cycles(package_init_edges(import_graph())) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_bottom_modules_import_nothing_of_ours_but_errors():
    graph = import_graph()
    assert graph["segdistill.errors"] == set()
    assert graph["segdistill.parsing"] == {"segdistill.errors"}


def test_layers_depend_one_way():
    """kernels <- training <- study, training <- deploy <- export (docs/architecture.md §2)."""
    graph = import_graph()

    def layer(module: str) -> str:
        part = (module.split(".") + [""])[1]
        return part if part in ("kernels", "export", "deploy", "study") else "training"

    allowed = {
        "kernels": {"kernels"},
        "training": {"kernels", "training"},
        "deploy": {"training", "deploy"},
        "export": {"training", "deploy", "export"},
        "study": {"training", "study"},
    }
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) not in allowed[layer(m)])
    assert wrong == []
    trainer_side = {"segdistill.train", "segdistill.losses", "segdistill.pretrain"}
    deploy_uses = {d for m, deps in graph.items() if layer(m) == "deploy" for d in deps}
    assert not any(d == t or d.startswith(t + ".") for d in deploy_uses for t in trainer_side)


def test_every_command_is_declared_and_only_commands_run_as_main():
    """The modules with ``cli = command(main...)`` are exactly the ``[project.scripts]`` targets, each runnable as a file; no
    library module runs as ``__main__`` (kernels/compile_check.py: a developer's check, not an installed command)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    declared = {target.split(":")[0] for target in scripts.values()}
    assert all(target.endswith(":cli") for target in scripts.values())
    with_cli, with_main = set(), set()
    for name, path in module_files().items():
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "cli" and ast.unparse(node.value).startswith("command(main") for node in tree.body):
            with_cli.add(name)
        if any(isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'" for node in tree.body):
            with_main.add(name)
    assert with_cli == declared
    assert with_main == declared | {"segdistill.kernels.compile_check"}


def test_the_study_layer_imports_no_torch():
    """A study worker decides a trial's state (its run folder's checkpoints) without torch; training runs in
    its own process."""
    study = sorted(m for m in module_files() if m.startswith("segdistill.study."))
    done = run_python(["-c", f"import sys; import {', '.join(study)}; print('torch' in sys.modules)"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
