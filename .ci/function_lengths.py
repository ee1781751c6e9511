"""Print the longest functions of a package (lines from ``def`` to the last line, docstring included).

Usage: python .ci/function_lengths.py [PACKAGE_FOLDER] [--top N] [--limit LINES]
Exits 1 when a function is longer than --limit (default 60).
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys


def function_lengths(folder: str) -> list[tuple[int, str]]:
    """(lines, "path:line name") of every function and method below ``folder``, longest first."""
    rows = []
    for path in sorted(pathlib.Path(folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}"))
    return sorted(rows, key=lambda row: (-row[0], row[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="rehrseg_nnunet")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--limit", type=int, default=60)
    args = parser.parse_args()
    rows = function_lengths(args.folder)
    for lines, name in rows[: args.top]:
        print(f"{lines:4d} {name}")
    too_long = [name for lines, name in rows if lines > args.limit]
    if too_long:
        print(f"{len(too_long)} function(s) longer than {args.limit} lines", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
