"""Size limits that keep the code changeable in an afternoon (issue #14).

Every function and method in `adamshap_core`, `curation` and `flows` is at most MAX_LINES long
(from its `def` line to its last line, decorators not counted) and takes at most MAX_PARAMS
parameters (`self`/`cls` not counted; `*args` and `**kwargs` count one each). A function that
needs more settings takes a small frozen options dataclass (e.g. `ScorerOptions`,
`SelectionOptions`). Dataclass-generated and settings-model constructors are not written by
hand, so they are not functions here; ALLOWED is the explicit list of any other exception.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adamshap_core", "curation", "flows")
MAX_LINES = 60
MAX_PARAMS = 8
# "path::qualified.name" of functions allowed past the limits, with the reason. Empty: a
# dataclass's generated __init__ (its fields) never appears in the source, so it needs no entry.
ALLOWED: dict[str, str] = {}


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return [n for n in names if n not in ("self", "cls")]


def functions(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, lines, parameters) of every function defined in `path`."""
    out: list[tuple[str, int, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = child.end_lineno - child.lineno + 1
                out.append((prefix + child.name, lines, len(_params(child))))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(ast.parse(path.read_text(encoding="utf-8")), "")
    return out


def _all_functions() -> list[tuple[str, int, int]]:
    rows = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            rows += [(f"{rel}::{name}", n, p) for name, n, p in functions(path)]
    return rows


def test_the_packages_are_found():
    assert len(_all_functions()) > 300


@pytest.mark.parametrize("limit", ["lines", "params"])
def test_function_limits(limit):
    idx, most = (1, MAX_LINES) if limit == "lines" else (2, MAX_PARAMS)
    over = [
        f"{row[0]}: {row[idx]} {limit}"
        for row in _all_functions()
        if row[idx] > most and row[0] not in ALLOWED
    ]
    assert not over, f"over {most} {limit} (split it or take an options dataclass):\n" + "\n".join(
        over
    )


def test_allow_list_is_live():
    names = {row[0] for row in _all_functions()}
    assert not set(ALLOWED) - names, "ALLOWED names a function that no longer exists"


def test_the_checker_sees_a_violation(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    src = f"def long(a, b, c, d, e, f, g, h, i):\n{body}\n\nclass C:\n    def m(self, a):\n        pass\n"
    (tmp_path / "m.py").write_text(src)
    got = {name: (n, p) for name, n, p in functions(tmp_path / "m.py")}
    assert got["long"] == (MAX_LINES + 1, 9)
    assert got["C.m"] == (2, 1)
