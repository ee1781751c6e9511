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
SCRIPTS = sorted(path for path in BENCHMARKS.glob("*.py") if "__main__" in path.read_text())  # not the modules


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
    for name in {method.trainer for method in brats_4x.METHODS.values()}:
        assert brats_4x.trainer_class_named(name).__name__ == name


def test_brats_4x_trains_only_what_the_asked_result_keys_need():
    load_brats_4x()  # puts benchmarks/ on sys.path
    from brats_methods import METHODS, REHRSEG_TRAINERS, SCORED_KEYS, models_needed
    assert set(REHRSEG_TRAINERS) <= set(SCORED_KEYS) and "nnunet_lr_init" not in SCORED_KEYS
    assert models_needed(["rehrseg_lrCentre"]) == ["nnunet_lr_init", "rehrseg_lrCentre"]
    assert models_needed(["oracle_hr", "nnunet_lr_upsampled_sdf"]) == ["nnunet_lr", "oracle_hr"]
    assert {METHODS[k].model_name(k) for k in ("nnunet_lr_upsampled_nearest", "nnunet_lr_upsampled_sdf")} == {
        "nnunet_lr"}


def test_recommended_key_is_the_design_that_rehrsegtrainer_trains():
    brats_4x = load_brats_4x()
    from brats_methods import METHODS, recommended_key

    from rehrseg_nnunet.training.trainer import REHRSegTrainer
    key = recommended_key()
    assert key != "rehrseg" and METHODS[key].schedule == "fine_tune"
    assert brats_4x.trainer_class_named(METHODS[key].trainer).hr_guidance == REHRSegTrainer.hr_guidance


def test_leave_one_out_folds_and_the_reuse_of_the_fixed_split(tmp_path):
    import argparse
    brats_4x = load_brats_4x()
    args = argparse.Namespace(train_cases=["pat0001", "pat0002", "pat0003"], test_cases=["pat0004"], folds=0,
                              leave_one_out=["pat0004", "pat0003", "pat0002"])
    folds = brats_4x.splits(args)
    assert [(name, test) for name, _, test in folds] == [
        ("test_pat0004", ["pat0004"]), ("test_pat0003", ["pat0003"]), ("test_pat0002", ["pat0002"])]
    assert folds[1][1] == ["pat0001", "pat0002", "pat0004"]
    (tmp_path / "fixed").mkdir()  # a folder from before split records: the default split
    assert brats_4x.split_work_folder(str(tmp_path), *folds[0]) == str(tmp_path / "fixed")
    assert brats_4x.split_work_folder(str(tmp_path), *folds[1]) == str(tmp_path / "test_pat0003")
    # the record written there finds the folder again under any name
    assert brats_4x.split_work_folder(str(tmp_path), "fold9", ["pat0004", "pat0002", "pat0001"], ["pat0003"]) == str(
        tmp_path / "test_pat0003")
    assert not (tmp_path / "fold9").exists()


def test_run_reports_the_peak_memory_of_the_command_and_fails_with_it():
    brats_4x = load_brats_4x()
    touch = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(range(0, len(b), 4096))"
    assert brats_4x.run([sys.executable, "-c", touch]) >= 300 * 2**20
    assert brats_4x.run([sys.executable, "-c", "pass"]) < 200 * 2**20
    with pytest.raises(subprocess.CalledProcessError):
        brats_4x.run([sys.executable, "-c", "raise SystemExit(3)"])
