"""The map in docs/architecture.md stays true: a module imports only modules on its own floor or
below, the library never imports the data layer or the entry points, and no import cycle exists.

Imports are read from the source (every `import` statement, lazy ones inside functions
included), so a new upward import fails here before it becomes a cycle someone breaks with a
lazy import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lightning_fa", "data_modules")

# Longest matching prefix wins. Keep in step with the floor table of docs/architecture.md.
FLOORS = {
    "lightning_fa.errors": 0,
    "lightning_fa.outputs": 0,
    "lightning_fa.checks": 0,
    "lightning_fa.geometry": 1,
    "lightning_fa.heatmaps": 1,
    "lightning_fa.metrics.functional": 1,
    "lightning_fa.temporal.filters": 1,
    "data_modules.landmarks": 1,
    "data_modules.formats": 1,
    "lightning_fa.metrics": 2,
    "lightning_fa.losses": 2,
    "lightning_fa.backbones": 2,
    "lightning_fa.temporal": 2,
    "lightning_fa.systems": 3,
    "lightning_fa.inference": 3,
    "lightning_fa.labelling": 3,
    "lightning_fa.callbacks": 3,
    "data_modules": 3,
    "lightning_fa.tracking": 4,
    "lightning_fa.api": 4,
    "lightning_fa": 4,  # the package itself: exposes Tracker (lazily)
    "lightning_fa.commands": 5,
    "lightning_fa.__main__": 5,
}

# Same-floor neighbours that still must not meet: the library below the entry points never
# reads data files' Datasets, and the data layer never runs models or trackers.
FORBIDDEN = (
    ("lightning_fa.", "data_modules"),
    ("data_modules", "lightning_fa.systems"),
    ("data_modules", "lightning_fa.inference"),
    ("data_modules", "lightning_fa.labelling"),
    ("data_modules", "lightning_fa.callbacks"),
    ("data_modules", "lightning_fa.backbones"),
    ("data_modules", "lightning_fa.temporal"),
)
ENTRY_POINTS = ("lightning_fa.commands", "lightning_fa.__main__")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The known modules `path` (module `name`) imports; `from pkg import sub` counts `pkg.sub`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            submodules = [f"{origin}.{alias.name}" for alias in node.names]
            targets = [m for m in submodules if m in known] or [origin]
        else:
            continue
        for target in targets:
            # `import a.b.c` of an unknown leaf still depends on the closest known parent.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    files = {
        module_name(path, root): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    }
    known = set(files)
    return {name: imported_modules(path, name, known) for name, path in files.items()}


def floor_of(module: str) -> int:
    matches = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    if not matches:
        raise KeyError(f"{module} is on no floor: add it to FLOORS and docs/architecture.md")
    return FLOORS[max(matches, key=len)]


def _is_under(module: str, prefix: str) -> bool:
    if prefix.endswith("."):  # "lightning_fa." : any library module, not the package root
        return module.startswith(prefix)
    return module == prefix or module.startswith(prefix + ".")


def floor_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if floor_of(target) > floor_of(module):
                problems.append(
                    f"{module} (floor {floor_of(module)}) imports {target} "
                    f"(floor {floor_of(target)})"
                )
            elif any(_is_under(target, e) for e in ENTRY_POINTS) and not any(
                _is_under(module, e) for e in ENTRY_POINTS
            ):
                problems.append(f"{module} imports the entry point {target}")
            for low, high in FORBIDDEN:
                entry = any(_is_under(module, e) for e in ENTRY_POINTS)
                if not entry and _is_under(module, low) and _is_under(target, high):
                    problems.append(f"{module} imports {target} ({low}* must not use {high})")
    return problems


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt) and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_every_module_has_a_floor(graph):
    unplaced = []
    for module in graph:
        try:
            floor_of(module)
        except KeyError as error:
            unplaced.append(str(error))
    assert not unplaced, "\n".join(unplaced)


def test_no_module_imports_a_higher_floor(graph):
    problems = floor_violations(graph)
    assert not problems, "\n".join(problems)


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_map_names_every_folder():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    folders = sorted(
        module_name(path.parent / "__init__.py", ROOT)
        for package in PACKAGES
        for path in (ROOT / package).rglob("__init__.py")
    )
    missing = [f for f in folders if f.replace(".", "/") not in text]
    assert not missing, f"docs/architecture.md does not name {missing}"


# --------------------------------------------------------------- the checker catches what it should


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")


def test_checker_flags_an_upward_import_and_a_lazy_cycle(tmp_path):
    _write(
        tmp_path,
        {
            "lightning_fa/__init__.py": "",
            "lightning_fa/heatmaps.py": "def f():\n    from lightning_fa.commands import run\n",
            "lightning_fa/commands/__init__.py": "from lightning_fa import heatmaps\nrun = 1\n",
            "lightning_fa/losses.py": "from . import heatmaps\n",
            "data_modules/__init__.py": "",
            "data_modules/image.py": "import lightning_fa.systems.finetune\n",
            "lightning_fa/systems/__init__.py": "",
            "lightning_fa/systems/finetune.py": "from data_modules import image\n",
        },
    )
    graph = import_graph(tmp_path)
    assert graph["lightning_fa.losses"] == {"lightning_fa.heatmaps"}
    problems = "\n".join(floor_violations(graph))
    assert "lightning_fa.heatmaps (floor 1) imports lightning_fa.commands (floor 5)" in problems
    assert "data_modules.image imports lightning_fa.systems.finetune" in problems
    assert "lightning_fa.systems.finetune imports data_modules.image" in problems
    assert "lightning_fa.losses" not in problems
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 3


def test_checker_passes_a_clean_tree(tmp_path):
    _write(
        tmp_path,
        {
            "lightning_fa/__init__.py": "",
            "lightning_fa/heatmaps.py": "import math\n",
            "lightning_fa/losses.py": "from lightning_fa.heatmaps import pdc\n",
            "lightning_fa/commands/__init__.py": "from lightning_fa import losses\n",
            "data_modules/__init__.py": "from lightning_fa.heatmaps import pdc\n",
        },
    )
    graph = import_graph(tmp_path)
    assert floor_violations(graph) == []
    assert find_cycle(graph) is None
