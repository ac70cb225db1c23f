"""The package's layout holds: every module is in docs/DESIGN.md's module map (and the map
names no module that is gone), and no module imports a layer above its own.

Why a test: the layout was agreed in prose once and drifted (the pool imported the lab for
one string, the pool imported the checks for its deadline mechanism, the map named
functions that no longer existed). The rules are read from docs/DESIGN.md itself, so the
document and the code cannot disagree without this failing. Imports are read with `ast`,
never by importing the modules: a lazy import inside a function counts like any other,
unless the design's exceptions table names it (and then it must stay inside a function).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "llorch_harness"
DESIGN = REPO / "docs" / "DESIGN.md"
ROOT = "llorch_harness"
_ROW = re.compile(r"^\|(.+)\|\s*$")
_CODE = re.compile(r"`([^`]+)`")


# ------------------------------------------------------------------ the design, as written


def _section(text: str, heading: str) -> list[str]:
    """The lines of the `## heading` section (up to the next `## `)."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.strip() == f"## {heading}"]
    assert len(starts) == 1, f"docs/DESIGN.md needs exactly one '## {heading}' section"
    out = []
    for ln in lines[starts[0] + 1:]:
        if ln.startswith("## "):
            break
        out.append(ln)
    return out


def _cells(line: str) -> list[str] | None:
    """A table row's cells; None for anything else (text, header rule)."""
    m = _ROW.match(line.strip())
    if m is None or set(m.group(1).replace("|", "").strip()) <= set("-: "):
        return None
    return [c.strip() for c in m.group(1).split("|")]


def map_modules(text: str) -> list[str]:
    """Every module the module map names: the `.py` paths in its tables' first column."""
    names = []
    for line in _section(text, "Module map"):
        cells = _cells(line)
        if cells:
            names += [n for n in _CODE.findall(cells[0]) if n.endswith(".py")]
    return names


@dataclass(frozen=True)
class Layers:
    """The layer rule: which layer each top-level name belongs to, what each may import,
    and the named lazy exceptions (module path -> imported module prefixes)."""

    of_name: dict[str, str]  # "pool" -> "pool", "errors" -> "foundation"
    may_import: dict[str, set[str]]
    exceptions: dict[str, set[str]]


def read_layers(text: str) -> Layers:
    of_name: dict[str, str] = {}
    may: dict[str, set[str]] = {}
    exceptions: dict[str, set[str]] = {}
    for line in _section(text, "Layers"):
        cells = _cells(line)
        if not cells or cells[0] in ("layer", "module"):
            continue
        if len(cells) == 3 and cells[0].startswith("`"):  # the exceptions table
            path = _CODE.findall(cells[0])[0]
            exceptions.setdefault(path, set()).update(_CODE.findall(cells[1]))
        elif len(cells) == 3:
            layer = cells[0]
            for name in _CODE.findall(cells[1]):
                of_name[name.removesuffix("/").removesuffix(".py")] = layer
            may[layer] = {w.strip() for w in cells[2].split(",") if w.strip()}
    assert may, "docs/DESIGN.md's Layers section has no layer table"
    return Layers(of_name, may, exceptions)


# ------------------------------------------------------------------ the code, as written


def package_modules(package: Path = PACKAGE) -> list[str]:
    """Every module of the package as a path below it (`pool/catalog.py`), except the
    packages' `__init__.py` files (the map names packages by their folders)."""
    return sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py")
                  if p.name != "__init__.py" or p.parent == package)


def _dotted(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([ROOT, *parts])


@dataclass(frozen=True)
class Import:
    module: str  # the importing module's path below the package
    target: str  # dotted, inside the package
    line: int
    lazy: bool  # inside a function


def _resolve(node: ast.ImportFrom, here: str, package: Path) -> list[str]:
    """The package modules an ImportFrom names (`from llorch_harness import fsutil` names
    the module fsutil; `from llorch_harness import __version__` the root package)."""
    if node.level:
        base = _dotted(here).split(".")
        base = base[: len(base) - node.level + (1 if here.endswith("__init__.py") else 0)]
        module = ".".join([*base, node.module] if node.module else base)
    else:
        module = node.module or ""
    if module != ROOT and not module.startswith(ROOT + "."):
        return []
    out = []
    for alias in node.names:
        sub = Path(package, *module.split(".")[1:], alias.name)
        is_module = sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file()
        out.append(f"{module}.{alias.name}" if is_module else module)
    return out


def imports_of(rel: str, package: Path = PACKAGE) -> list[Import]:
    """Every import of a package module in `rel`, lazy ones (inside a function) marked."""
    tree = ast.parse((package / rel).read_text(encoding="utf-8"))
    found: list[Import] = []

    def walk(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend(Import(rel, a.name, child.lineno, lazy) for a in child.names
                             if a.name == ROOT or a.name.startswith(ROOT + "."))
            elif isinstance(child, ast.ImportFrom):
                found.extend(Import(rel, t, child.lineno, lazy)
                             for t in _resolve(child, rel, package))
            walk(child, inner)

    walk(tree, False)
    return found


def layer_of(dotted: str, layers: Layers) -> str | None:
    parts = dotted.split(".")
    if len(parts) == 1:
        return layers.of_name.get("__init__")
    return layers.of_name.get(parts[1])


def violations(layers: Layers, package: Path = PACKAGE) -> list[str]:
    """Each import that crosses the layer rule, in words: where, what, and which rule."""
    out = []
    for rel in package_modules(package) + sorted(
            p.relative_to(package).as_posix() for p in package.rglob("__init__.py")
            if p.parent != package):
        here = layer_of(_dotted(rel), layers)
        if here is None:
            out.append(f"{rel}: in no layer (add its subpackage or module to DESIGN.md's "
                       "Layers table)")
            continue
        for imp in imports_of(rel, package):
            there = layer_of(imp.target, layers)
            if there in layers.may_import.get(here, set()):
                continue
            allowed = layers.exceptions.get(rel, set())
            excused = any(imp.target == a or imp.target.startswith(a + ".")
                          for a in (f"{ROOT}.{x}" for x in allowed))
            if excused and imp.lazy:
                continue
            why = ("a named exception, but imported at module level: keep it inside the "
                   "function that needs it" if excused else
                   f"{here} may import {', '.join(sorted(layers.may_import.get(here, ())))}")
            out.append(f"{rel}:{imp.line} imports {imp.target} ({there or 'no layer'}): {why}")
    return out


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def design() -> str:
    return DESIGN.read_text(encoding="utf-8")


def test_every_module_is_in_the_module_map(design: str) -> None:
    named = map_modules(design)
    actual = set(package_modules())
    missing = sorted(actual - set(named))
    gone = sorted(set(named) - actual)
    twice = sorted(n for n, c in Counter(named).items() if c > 1)
    assert not missing, f"modules missing from docs/DESIGN.md's module map: {missing}"
    assert not gone, f"docs/DESIGN.md's module map names modules that do not exist: {gone}"
    assert not twice, f"docs/DESIGN.md's module map lists these more than once: {twice}"


def test_imports_follow_the_layers(design: str) -> None:
    found = violations(read_layers(design))
    assert not found, "imports against docs/DESIGN.md's Layers rule:\n" + "\n".join(found)


def test_every_top_level_name_has_a_layer(design: str) -> None:
    layers = read_layers(design)
    tops = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
            if (p.suffix == ".py") or (p / "__init__.py").is_file()}
    assert sorted(tops - set(layers.of_name)) == []
    every = set(layers.may_import)
    for layer, allowed in layers.may_import.items():
        assert layer in allowed, f"layer {layer} must be allowed to import itself"
        assert allowed <= every, f"layer {layer} names unknown layers {allowed - every}"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / ROOT
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


RULE = """## Layers
| layer | modules | may import |
| --- | --- | --- |
| foundation | `__init__.py`, `errors.py` | foundation |
| pool | `pool/` | foundation, pool |
| lab | `lab/` | foundation, pool, lab |

| module | may also import, lazily | why |
| --- | --- | --- |
| `pool/late.py` | `lab.model` | a test of the rule |
| `pool/early.py` | `lab` | a test of the rule |
"""


def test_the_checker_finds_what_it_must(tmp_path: Path) -> None:
    """The rule is not vacuous: an upward import is found (module level or lazy, `import`
    or `from`), a named exception passes only inside a function, a module outside every
    layer is named, and imports downward or within a layer pass."""
    pkg = _tree(tmp_path, {
        "errors.py": "",
        "pool/__init__.py": "",
        "pool/catalog.py": "from llorch_harness.lab.model import X\n",
        "pool/lazy.py": "def f():\n    import llorch_harness.lab.model\n",
        "pool/late.py": "def f():\n    from llorch_harness.lab import model\n",
        "pool/early.py": "from llorch_harness.lab import model\n",
        "pool/fine.py": "from llorch_harness import errors\nfrom . import catalog\n",
        "lab/__init__.py": "",
        "lab/model.py": "from llorch_harness.pool import catalog\nX = 1\n",
        "stray/__init__.py": "",
        "stray/thing.py": "",
    })
    found = violations(read_layers(RULE), pkg)
    text = "\n".join(found)
    assert "pool/catalog.py:1 imports llorch_harness.lab.model (lab)" in text
    assert "pool/lazy.py:2 imports llorch_harness.lab.model (lab)" in text
    assert "pool/early.py:1 imports llorch_harness.lab.model (lab): a named exception, " \
           "but imported at module level" in text
    assert "stray/thing.py: in no layer" in text
    assert not any(f.startswith(("pool/late.py", "pool/fine.py", "lab/model.py"))
                   for f in found), text


def test_the_map_reader_sees_every_row() -> None:
    text = ("## Module map\n| module | job |\n| --- | --- |\n| `a.py` | x |\n"
            "| `pool/b.py`, `pool/c.py` | y `not_a_module` |\n## Next\n| `d.py` | z |\n")
    assert map_modules(text) == ["a.py", "pool/b.py", "pool/c.py"]
