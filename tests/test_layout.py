"""The package tree reads like the pipeline: each folder imports only from its own floor or below, no
module imports form a cycle, and no module grows past ~500 lines without saying why.

Floors, bottom to top (docs/architecture.md)::

    0  errors, utils
    1  data, models
    2  cam, pseudo, evaluation, tracking
    3  modules            (LightningModules)
    4  stages             (one task per stage + pipeline)
    5  studies, inference (many runs; a finished run on your own images, export)
    6  __main__, predict, export   (command-line entry points)
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vwl_lightning"
FLOORS = {
    "__init__": 0, "errors": 0, "utils": 0,
    "data": 1, "models": 1,
    "cam": 2, "pseudo": 2, "evaluation": 2, "tracking": 2,
    "modules": 3, "stages": 4, "studies": 5, "inference": 5, "__main__": 6, "predict": 6, "export": 6,
}
LONG_FILE_LINES = 520
LONG_FILE_REASON = "longer than ~500 lines because"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every ``vwl_lightning.*`` module imported anywhere in the file (function-level imports included)."""
    found: set[str] = set()
    known = modules()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vwl_lightning"):
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vwl_lightning"))
    return found


def floor_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in FLOORS, f"{module}: folder '{top}' has no floor in tests/test_layout.py (and docs/architecture.md)"
    return top, FLOORS[top]


def test_every_top_level_entry_has_a_floor() -> None:
    entries = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
               if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").is_file()))}
    assert entries <= set(FLOORS), sorted(entries - set(FLOORS))
    top_files = {p.stem for p in PACKAGE.glob("*.py")}
    assert top_files <= {"__init__", "__main__", "errors", "predict", "export"}, \
        "the top level keeps only the entry points (__main__, predict, export), errors, __init__"


def test_no_module_imports_from_a_higher_floor() -> None:
    offences = []
    for name, path in modules().items():
        folder, floor = floor_of(name)
        for target in imports_of(path):
            target_folder, target_floor = floor_of(target)
            if target_floor > floor:
                offences.append(f"{name} ({folder}, floor {floor}) imports {target} ({target_folder}, "
                                f"floor {target_floor})")
    assert not offences, "\n".join(offences)


def test_no_import_cycles() -> None:
    graph = {name: {t for t in imports_of(path) if t != name} for name, path in modules().items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # a package's __init__ re-exporting its own submodules is not a cycle between modules
    real = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in pairwise(c))]
    assert not real, "\n".join(" -> ".join(c) for c in real)


def test_long_modules_say_why() -> None:
    long_ones = []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > LONG_FILE_LINES and LONG_FILE_REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            long_ones.append(f"{name}: {text.count(chr(10))} lines")
    assert not long_ones, long_ones


def test_layout_checks_can_fail(tmp_path: Path) -> None:
    """The import reader sees module-level and function-level imports (so the floor check has teeth)."""
    probe = tmp_path / "probe.py"
    probe.write_text("from vwl_lightning.stages.pipeline import run\n\ndef f():\n"
                     "    import vwl_lightning.studies.ablation\n    from vwl_lightning.data import synthetic\n")
    assert imports_of(probe) == {"vwl_lightning.stages.pipeline", "vwl_lightning.studies.ablation",
                                 "vwl_lightning.data.synthetic"}
    assert floor_of("vwl_lightning.stages.pipeline") == ("stages", 4)
    assert floor_of("vwl_lightning.models.codebook") == ("models", 1)
