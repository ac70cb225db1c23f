"""One error hierarchy (issue 13): every exception class of the package is in errors.py's tree.

Read from the source (ast), not by importing every module: a class that derives from
HarnessError must be listed in the tree, and any other exception class must be listed as
an internal signal or one of the reference worker's own; private classes (`_Name`) are
control flow inside their module.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import llorch_harness
from llorch_harness import errors

PACKAGE = Path(llorch_harness.__file__).parent
TREE, _, OTHERS = (errors.__doc__ or "").partition("Internal signals")


def exception_classes() -> dict[str, tuple[bool, str]]:
    """Every exception class of the package: name -> (derives from HarnessError, where)."""
    bases: dict[str, list[str]] = {}
    where: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names = [b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                         if isinstance(b, ast.Name | ast.Attribute)]
                bases.setdefault(node.name, []).extend(names)
                where[node.name] = str(path.relative_to(PACKAGE))

    def kind(name: str, seen: frozenset[str] = frozenset()) -> str | None:
        if name == "HarnessError":
            return "harness"
        builtin = getattr(builtins, name, None)
        if isinstance(builtin, type) and issubclass(builtin, BaseException):
            return "other"
        if name in seen or name not in bases:
            return None
        kinds = {kind(b, seen | {name}) for b in bases[name]}
        return "harness" if "harness" in kinds else "other" if "other" in kinds else None

    out = {}
    for name in bases:
        k = kind(name)
        if k is not None and name != "HarnessError" and not name.startswith("_"):
            out[name] = (k == "harness", where[name])
    return out


def words(text: str) -> set[str]:
    return {w.strip(",.:;()") for w in text.split()}


def test_every_harness_error_is_in_the_tree() -> None:
    found = exception_classes()
    harness = {n for n, (h, _) in found.items() if h}
    missing = sorted(f"{n} ({found[n][1]})" for n in harness - words(TREE))
    assert not missing, f"add these to the tree in llorch_harness/errors.py: {missing}"


def test_every_other_exception_is_named_as_internal() -> None:
    found = exception_classes()
    others = {n for n, (h, _) in found.items() if not h}
    missing = sorted(f"{n} ({found[n][1]})" for n in others - words(OTHERS))
    assert not missing, ("derive these from HarnessError, or name them in errors.py as "
                         f"internal signals: {missing}")
    listed_in_tree = sorted(n for n in others if n in words(TREE))
    assert not listed_in_tree, f"in the HarnessError tree but not HarnessErrors: {listed_in_tree}"


def test_one_class_models_an_unreachable_pool() -> None:
    names = [n for n in exception_classes() if "nreachable" in n or "Connection" in n]
    assert names == ["PoolUnreachable"]
    assert issubclass(errors.PoolUnreachable, errors.HarnessError)
    err = errors.PoolUnreachable("mac (mac.lan)", "mac.lan", "Connection refused", "check")
    assert err.exit_code == 255
    assert err.one_line() == "cannot reach pool mac (mac.lan) over ssh: Connection refused (check)"
