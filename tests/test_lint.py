"""The tree is clean under the project's linter configuration, and no function in the package is long."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    result = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_function_in_the_package_is_longer_than_60_lines():
    result = subprocess.run([sys.executable, os.path.join(".ci", "function_lengths.py"), "rehrseg_nnunet",
                             "--top", "5", "--limit", "60"], cwd=ROOT, capture_output=True, text=True)
    print(result.stdout)
    lines = result.stdout.splitlines()
    assert len(lines) == 5 and all(int(line.split()[0]) <= 60 for line in lines), result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
