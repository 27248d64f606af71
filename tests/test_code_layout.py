"""The package's shape (developers' guide): files under about 500 lines and functions under about 60, unless a
comment says why (import circles: tests/test_imports.py).

A long function carries ``# long-function: <reason>`` on its ``def`` line (or a line of its signature); a long file
carries ``# long-file: <reason>`` in its first 30 lines.  Functions are measured without their docstring (the
formulas and units the guide asks for are not code).  ``ALLOWED`` lists what other work in progress is still
splitting: each entry names its reason and is removed when that work lands.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "wwmonitor"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
FILE_MARK = re.compile(r"#\s*long-file:\s*\S")
FUNCTION_MARK = re.compile(r"#\s*long-function:\s*\S")

#: relative path -> why it is still too long (files), or "path::function" -> why (functions)
ALLOWED: dict[str, str] = {}
#: directories whose functions are exempt (none: a long function carries a ``# long-function: why`` comment)
ALLOWED_FUNCTION_DIRS: dict[str, str] = {}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _docstring_lines(node: ast.AST) -> int:
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        if isinstance(body[0].value.value, str):
            return int(body[0].end_lineno or body[0].lineno) - body[0].lineno + 1
    return 0


def function_lengths(path: Path) -> list[tuple[str, int, bool]]:
    """``(qualified name, lines without docstring, marked long)`` of every function in ``path``."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    n = int(child.end_lineno or child.lineno) - child.lineno + 1 - _docstring_lines(child)
                    first_body = child.body[0].lineno
                    signature = lines[child.lineno - 1 : first_body - 1] or [lines[child.lineno - 1]]
                    out.append((name, n, any(FUNCTION_MARK.search(s) for s in signature)))
                visit(child, name + ".")

    visit(ast.parse(text), "")
    return out


def oversized_files() -> list[str]:
    bad = []
    for p in _sources():
        rel = _rel(p)
        lines = p.read_text(encoding="utf-8").splitlines()
        if len(lines) <= MAX_FILE_LINES or rel in ALLOWED:
            continue
        if any(FILE_MARK.search(s) for s in lines[:30]):
            continue
        bad.append(f"{rel}: {len(lines)} lines")
    return bad


def oversized_functions() -> list[str]:
    bad = []
    for p in _sources():
        rel = _rel(p)
        if any(rel == d or (d.endswith("/") and rel.startswith(d)) for d in ALLOWED_FUNCTION_DIRS):
            continue
        for name, n, marked in function_lengths(p):
            if n > MAX_FUNCTION_LINES and not marked and f"{rel}::{name}" not in ALLOWED:
                bad.append(f"{rel}::{name}: {n} lines")
    return bad


def test_files_are_small():
    assert oversized_files() == []


def test_functions_are_short():
    assert oversized_functions() == []


def test_allowlist_has_no_stale_entries():
    """An entry for a file that is gone or now short must be removed (the allowlist only shrinks)."""
    stale = []
    for key in ALLOWED:
        rel = key.split("::")[0]
        p = ROOT / rel
        if not p.exists():
            stale.append(key)
        elif "::" not in key and len(p.read_text(encoding="utf-8").splitlines()) <= MAX_FILE_LINES:
            stale.append(key)
        elif "::" in key:
            lengths = {name: n for name, n, _ in function_lengths(p)}
            if lengths.get(key.split("::")[1], 0) <= MAX_FUNCTION_LINES:
                stale.append(key)
    assert stale == []


def test_the_checks_can_fail(tmp_path):
    """The measurement itself: a long function and a marked one."""
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    src = tmp_path / "m.py"
    src.write_text(
        f'def long():\n    """doc\n\n    more doc."""\n{body}\n\n\ndef ok():  # long-function: a table\n{body}\n'
        f"\n\ndef short():\n    return 1\n"
    )
    got = {name: (n, marked) for name, n, marked in function_lengths(src)}
    assert got == {"long": (71, False), "ok": (71, True), "short": (2, False)}
