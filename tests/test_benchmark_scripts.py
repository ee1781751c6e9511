"""The hand-run benchmarks stay runnable: each script's ``-h`` works, and brats_4x finds every trainer it names.

The benchmarks themselves take hours and are not run here; these checks catch the breaks a refactor causes
(a moved import, a renamed trainer) before someone starts a long run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_there_are_benchmark_scripts():
    assert "brats_4x.py" in {script.name for script in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_benchmark_help_works(script: Path):
    result = subprocess.run([sys.executable, str(script), "-h"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def load_brats_4x():
    spec = importlib.util.spec_from_file_location("brats_4x_benchmark", BENCHMARKS / "brats_4x.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_brats_4x_finds_every_trainer_it_trains():
    brats_4x = load_brats_4x()
    names = {"nnUNetTrainer", *brats_4x.REHRSEG_METHODS.values()}
    for name in names:
        assert brats_4x.trainer_class_named(name).__name__ == name


def test_brats_4x_trains_only_what_the_asked_result_keys_need():
    brats_4x = load_brats_4x()
    assert set(brats_4x.REHRSEG_METHODS) <= set(brats_4x.SCORED)
    assert brats_4x.methods_needed(["rehrseg_lrCentre"]) == {"rehrseg_lrCentre", "nnunet_lr_init"}
    assert brats_4x.methods_needed(["nnunet_lr_upsampled_sdf", "oracle_hr"]) == {"nnunet_lr", "oracle_hr"}
