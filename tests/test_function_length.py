"""No function in guardcal/ or benchmarks/ grows past MAX_LINES lines (its docstring not counted): split it by
concern."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
CHECKED = ("guardcal", "benchmarks")
MAX_LINES = 60


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """(name, first line, length without the docstring) of every function and method in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if ast.get_docstring(node, clean=False) is not None:
                assert first.end_lineno is not None
                length -= first.end_lineno - first.lineno + 1
            found.append((node.name, node.lineno, length))
    return found


def test_no_function_in_guardcal_or_benchmarks_is_over_the_limit():
    long = [
        f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)"
        for folder in CHECKED
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name, line, length in function_lengths(path)
        if length > MAX_LINES
    ]
    assert not long, f"functions over {MAX_LINES} lines (docstring not counted); split them: {long}"


def test_the_count_leaves_out_the_docstring_only(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(3))
    src = tmp_path / "m.py"
    src.write_text(f'def f():\n    """One.\n\n    Two.\n    """\n{body}\n\n\ndef g():\n{body}\n')
    assert function_lengths(src) == [("f", 1, 4), ("g", 11, 4)]
