"""The package's layers only point down, and no module imports itself round a cycle.

Parsed from the source (``ast``), so every import counts: at module level, inside functions, and
under ``if TYPE_CHECKING``. The layers, lowest first (a package may import from its own layer only
where the layer says so, and never round a cycle):
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "LatentSRLib"

#: lowest first; packages of one layer may import each other (acyclically) only in the core layer
LAYERS: list[tuple[str, ...]] = [
    ("LatentSRLib", "errors"),  # the package root (version) and the error types
    ("io", "transforms", "autoencoders", "diffusion", "metrics"),  # core
    ("model",),
    ("data",),
    ("inference", "training", "evaluation"),  # workflows: independent of each other
    ("demo",),
    ("cli",),
]
SIDEWAYS_ALLOWED = {1}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports (``from pkg import submodule`` counts the submodule)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in modules]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # an attribute import resolves to its module
                target = target.rpartition(".")[0]
            if target.startswith("LatentSRLib") and target != name:
                found.add(target)
    return found


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer_of(package: str) -> int:
    for index, members in enumerate(LAYERS):
        if package in members:
            return index
    raise AssertionError(f"package {package!r} is in no layer: add it to LAYERS in {__file__}")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_import_points_down(graph):
    wrong = []
    for module, targets in graph.items():
        own = _package_of(module)
        for target in sorted(targets):
            theirs = _package_of(target)
            if own == theirs or target == "LatentSRLib":
                continue
            mine, their_layer = _layer_of(own), _layer_of(theirs)
            if their_layer > mine or (their_layer == mine and mine not in SIDEWAYS_ALLOWED):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
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


def _without_package_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # a package's __init__ re-exporting its own modules is not a dependency of those modules on it
    return {m: {t for t in ts if not (m.startswith(t + ".") and (PACKAGE.parent / Path(*t.split("."))).is_dir())}
            for m, ts in graph.items()}


def test_no_import_cycles_between_modules(graph):
    cycles = _cycles(_without_package_reexports(graph))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycles_between_packages(graph):
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        own = _package_of(module)
        packages.setdefault(own, set()).update(_package_of(t) for t in targets if _package_of(t) != own)
    packages = {k: {t for t in v if t != "LatentSRLib"} for k, v in packages.items()}
    cycles = _cycles(packages)
    assert not cycles, "package cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_loose_modules_at_the_top():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "errors.py"))
    assert not loose, f"modules at the package top belong in a layer's package: {loose}"


def test_the_library_never_imports_slicer_or_qt(graph):
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("slicer", "qt", "ctk", "vtk")]
    assert not offenders, offenders
