"""The hand-run benchmarks stay runnable: each script's ``-h`` works, and brats_4x finds every trainer it names.

The benchmarks themselves take hours and are not run here; these checks catch the breaks a refactor causes
(a moved import, a renamed trainer) before someone starts a long run.
"""

from __future__ import annotations

import importlib.util
import json
import os
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


def test_sr_nnunet_super_resolves_the_thick_slice_test_images_as_part_of_its_prediction(tmp_path, monkeypatch):
    """The prediction time of "SR + stock nnU-Net" includes super-resolving the test image, as the guided REHRSeg
    designs' does (issue 28's third bar compares them)."""
    import argparse
    brats_4x = load_brats_4x()
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    args = argparse.Namespace(lr_epochs=2, finetune_epochs=1)
    models = brats_4x.models_of_split(str(tmp_path / "raw"), "Dataset913_PseudoHR", str(tmp_path / "sr_model"), args)
    sr_nnunet, lr = models["sr_nnunet"], brats_4x.DATASETS["lr"]
    assert sr_nnunet.sr_model == str(tmp_path / "sr_model") and sr_nnunet.dataset == "Dataset913_PseudoHR"
    assert sr_nnunet.inputs == str(tmp_path / "raw" / f"Dataset{lr[0]}_{lr[1]}" / "imagesTs")
    assert all(model.sr_model is None for name, model in models.items() if name != "sr_nnunet")
    commands = []

    def fake_run(command: list[str], env: dict | None = None) -> int:  # each script creates its -o folder
        commands.append(command)
        os.makedirs(command[command.index("-o") + 1], exist_ok=True)
        return 1

    monkeypatch.setattr(brats_4x, "run", fake_run)
    output = tmp_path / "predictions" / "sr_nnunet"
    brats_4x.predict(sr_nnunet, str(output), argparse.Namespace(device="cpu"))
    assert [os.path.basename(c[0]) for c in commands] == ["rehrseg_super_resolve", "nnUNetv2_predict"]
    super_resolved = commands[0][commands[0].index("-o") + 1]
    assert commands[0][commands[0].index("-i") + 1] == sr_nnunet.inputs
    assert commands[1][commands[1].index("-i") + 1] == super_resolved != sr_nnunet.inputs
    marker = json.loads((output / "benchmark_predict_complete.json").read_text())
    assert marker["seconds"] >= marker["super_resolve_seconds"] >= 0


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
