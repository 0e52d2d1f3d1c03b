"""The pipelines (dvc.yaml and pipelines/*/dvc.yaml) name every module a stage runs: a change to any of them reruns the stage.

A stage that misses one of its modules in ``deps`` is not rerun when that module changes, and
its outputs (and every number in the reports) silently come from the old code. The test reads
the imports of each stage module with ``ast`` (no import, so nothing runs), follows them
transitively within ``src/ipguard`` (imports inside functions included: being complete is
cheaper than being wrong), and checks each file against the stage's ``deps``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "ipguard"
# Every stage runs through the launcher (``python -m ipguard.stages NAME``), which imports
# ipguard.stages.__main__ (and through it ipguard.tracking) before the stage module.
LAUNCHER = "ipguard.stages.__main__"
CMD = re.compile(r"python -m ipguard\.stages (\w+)")


def module_file(name: str) -> Path | None:
    """The source file of the ipguard module ``name`` (a package's ``__init__.py``), or None."""
    path = SRC.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_names(path: Path) -> set[str]:
    """Dotted names of the ipguard modules (or module attributes) ``path`` imports, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the importing module's package
                package = path.relative_to(SRC).with_suffix("").parts[: -node.level]
                base = ".".join([*package, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            names.add(base)
            # ``from ipguard.stages import match`` imports the module ipguard.stages.match.
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def import_closure(*modules: str) -> set[Path]:
    """Every ipguard source file that importing ``modules`` can run: parent packages included."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        parts = todo.pop().split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            path = module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_names(path))
    return seen


def pipeline_files() -> list[Path]:
    """The root dvc.yaml and the per-model and per-set pipelines beside it (see its header)."""
    return [ROOT / "dvc.yaml", *sorted((ROOT / "pipelines").glob("*/dvc.yaml"))]


def stages() -> dict[str, dict[str, Any]]:
    """Every pipeline's stages; a ``foreach`` stage by its ``do`` template (its deps are the same per key)."""
    found: dict[str, dict[str, Any]] = {}
    for path in pipeline_files():
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            assert name not in found, f"stage '{name}' is defined twice ({path.relative_to(ROOT)})"
            found[name] = stage.get("do", stage)
    return found


@pytest.mark.parametrize("path", pipeline_files()[1:], ids=lambda p: p.parent.name)
def test_sub_pipelines_run_from_the_root(path: Path) -> None:
    """A stage of pipelines/NAME/dvc.yaml names its paths and params as the root's: it runs there,
    and its templating reads the root params.yaml (which `dvc exp run -S` composes)."""
    spec = yaml.safe_load(path.read_text())
    assert [(path.parent / v).resolve() for v in spec.get("vars", [])] == [ROOT / "params.yaml"]
    for name, stage in spec["stages"].items():
        wdir = stage.get("do", stage).get("wdir", ".")
        assert (path.parent / wdir).resolve() == ROOT, f"{path.relative_to(ROOT)}: stage '{name}' runs in {wdir}"


def dep_paths(stage: dict[str, Any]) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else str(d) for d in stage.get("deps", [])]


def covered(path: Path, deps: list[str]) -> bool:
    """True when ``path`` is one of ``deps`` or lies under a dep folder (DVC hashes a folder whole)."""
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


def stage_module(name: str, stage: dict[str, Any]) -> str:
    found = CMD.search(str(stage.get("cmd", "")))
    assert found, f"dvc.yaml stage '{name}': cmd does not run 'python -m ipguard.stages NAME'"
    assert module_file(f"{PACKAGE}.stages.{found.group(1)}") is not None, (
        f"dvc.yaml stage '{name}': no module src/ipguard/stages/{found.group(1)}.py"
    )
    return f"{PACKAGE}.stages.{found.group(1)}"


def test_closure_follows_imports_inside_functions() -> None:
    """The closure is what the test relies on: models.py imports io (the int8 storage) lazily."""
    files = {p.relative_to(ROOT).as_posix() for p in import_closure("ipguard.models")}
    assert {"src/ipguard/models.py", "src/ipguard/cifar_resnet.py", "src/ipguard/io.py",
            "src/ipguard/registry.py", "src/ipguard/__init__.py"} <= files
    assert "src/ipguard/cli.py" not in files
    assert "src/ipguard/postprocess.py" not in files  # loading a model needs no training code


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_name_every_module_it_imports(name: str) -> None:
    stage = stages()[name]
    deps = dep_paths(stage)
    missing = sorted(
        p.relative_to(ROOT).as_posix()
        for p in import_closure(LAUNCHER, stage_module(name, stage))
        if not covered(p, deps)
    )
    assert not missing, f"dvc.yaml stage '{name}': deps miss modules it imports: {', '.join(missing)}"


def test_every_dep_exists_or_is_made() -> None:
    """A listed module file that was renamed away would make `dvc repro` fail: catch it here."""
    all_stages = stages()
    outs = {next(iter(o)) if isinstance(o, dict) else str(o) for s in all_stages.values() for o in s.get("outs", [])}
    for name, stage in all_stages.items():
        for dep in dep_paths(stage):
            if dep.startswith("src/"):
                assert (ROOT / dep).exists(), f"dvc.yaml stage '{name}': dep {dep} does not exist"
            else:
                assert "${" in dep or dep in outs or any(o.startswith(dep + "/") for o in outs), (
                    f"dvc.yaml stage '{name}': dep {dep} is neither source nor another stage's output"
                )


def test_imported_weights_rerun_their_stage() -> None:
    """Weights imported from a file or package (zoo ``source: file|package``) are tracked by params.

    DVC cannot list ``${item.path}`` as a dep of the ``train`` foreach: entries that are trained
    have no ``path`` and the whole file fails to parse. So the stage depends on the entry's params
    (``path``, ``package``, ``key_map``, ``arch``): another file reruns it. See dvc.yaml.
    """
    all_stages = stages()
    assert "zoo.models.${key}" in all_stages["train"].get("params", [])
    assert "model" in all_stages["train_owner"].get("params", [])


def import_graph() -> dict[Path, set[Path]]:
    """Which ipguard source file imports which (imports inside functions included)."""
    files = sorted((SRC / PACKAGE).rglob("*.py"))
    return {path: {f for f in map(module_file, imported_names(path)) if f is not None and f != path} for path in files}


def test_the_library_has_no_import_cycle() -> None:
    """A cycle (models.py and postprocess.py importing each other, as once for the int8 storage)
    makes every stage that needs one depend on both, and breaks as soon as one import moves to the
    top of its module."""
    graph = import_graph()
    done: set[Path] = set()

    def visit(path: Path, stack: list[Path]) -> None:
        if path in stack:
            cycle = [p.relative_to(SRC).as_posix() for p in stack[stack.index(path):]] + [path.relative_to(SRC).as_posix()]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if path in done:
            return
        for target in sorted(graph.get(path, ())):
            visit(target, [*stack, path])
        done.add(path)

    for path in graph:
        visit(path, [])
