"""Module and function sizes of the package, against issue 13's limits (a figure, not a test).

Lists every module over 400 lines and every function over 60 lines, and per subpackage
the module count and the longest module; prints markdown. `--package DIR` measures
another tree (e.g. an earlier commit: `git archive COMMIT llorch_harness | tar -x -C /tmp/x`
then `--package /tmp/x/llorch_harness`); `--json PATH` also keeps the figures.
Run: `.venv/bin/python benchmarks/code_size.py`.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llorch_harness"
MODULE_LIMIT = 400
FUNCTION_LIMIT = 60


@dataclass
class Group:
    modules: int = 0
    longest: str = ""
    longest_lines: int = 0


@dataclass
class Figures:
    modules: int = 0
    groups: dict[str, Group] = field(default_factory=dict)
    long_modules: dict[str, int] = field(default_factory=dict)
    long_functions: dict[str, int] = field(default_factory=dict)
    longest_function: str = ""
    longest_function_lines: int = 0


def functions(tree: ast.AST) -> list[tuple[str, int]]:
    """(qualified name, line count) of every function and method, nested ones included."""
    found: list[tuple[str, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                found.append((name, (child.end_lineno or child.lineno) - child.lineno + 1))
                walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return found


def measure(package: Path = PACKAGE) -> Figures:
    """Every module's line count and long functions, grouped by subpackage."""
    fig = Figures()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        fig.modules += 1
        group = fig.groups.setdefault(rel.split("/")[0] if "/" in rel else "(foundation)",
                                      Group())
        group.modules += 1
        if lines > group.longest_lines:
            group.longest, group.longest_lines = rel, lines
        if lines > MODULE_LIMIT:
            fig.long_modules[rel] = lines
        for name, n in functions(ast.parse(text)):
            if n > FUNCTION_LIMIT:
                fig.long_functions[f"{rel}:{name}"] = n
            if n > fig.longest_function_lines:
                fig.longest_function, fig.longest_function_lines = f"{rel}:{name}", n
    return fig


def render(fig: Figures) -> str:
    """The figures as markdown."""
    out = [f"modules: {fig.modules}", "", "| package | modules | longest module |",
           "| --- | --- | --- |"]
    out += [f"| {name} | {g.modules} | `{g.longest}` ({g.longest_lines}) |"
            for name, g in sorted(fig.groups.items())]
    out += ["", f"longest function: `{fig.longest_function}` ({fig.longest_function_lines} "
                "lines)", "", f"modules over {MODULE_LIMIT} lines:"]
    out += [f"- `{m}` {n}" for m, n in sorted(fig.long_modules.items())] or ["- none"]
    out += ["", f"functions over {FUNCTION_LIMIT} lines:"]
    out += [f"- `{f}` {n}" for f, n in sorted(fig.long_functions.items())] or ["- none"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, default=PACKAGE, help="the package to measure")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    fig = measure(args.package)
    print(render(fig))
    if args.json:
        args.json.write_text(json.dumps(asdict(fig), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
