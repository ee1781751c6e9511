"""Re-running nnUNetv2_plan_and_preprocess after rehrseg_plan keeps REHRSeg's uncertainty maps (issue 35).

nnU-Net's preprocessing deletes its data folder (``nnUNetPlans_3d_fullres``) before it writes it again; rehrseg_plan
keeps the maps beside it (``nnUNetPlans_3d_fullres_rehrseg_uncertainty``), so REHRSeg training still trains.
"""

import os
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import PHANTOM_PLAN_FLAGS, assert_ok, copy_pseudohr, phantom_workspace, run_script, tree_digest

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.planning import is_up_to_date
from rehrseg_nnunet.training.dataloader import load_uncertainty, uncertainty_file

STOCK_PREPROCESS = ["-d", "647", "-c", "3d_fullres", "-np", "1", "-npfp", "1"]


@pytest.mark.slow
def test_stock_preprocessing_again_keeps_the_maps_and_training_trains(tmp_path, trained_sr_model, pseudohr_template):
    workspace = phantom_workspace(tmp_path, trained_sr_model)
    env = workspace["env"]
    copy_pseudohr(pseudohr_template, workspace, "647")  # made, planned (STOCK_PREPROCESS) and rehrseg_plan-ned
    preprocessed = tmp_path / "preprocessed" / "Dataset647_PhantomPseudoHR"
    data, maps = preprocessed / "nnUNetPlans_3d_fullres", preprocessed / "nnUNetPlans_3d_fullres_rehrseg_uncertainty"
    assert sorted(os.listdir(maps)) == ["case000_uncertainty.npy", "case001_uncertainty.npy"]
    assert not list(data.glob("*_uncertainty.npy"))  # REHRSegPlans share the stock data folder, maps are not in it
    before = tree_digest(maps)
    marker = data / "deleted_by_nnunet"
    marker.write_text("nnU-Net's preprocessing removes its data folder first")

    assert_ok(run_script("nnUNetv2_plan_and_preprocess", STOCK_PREPROCESS, env))
    assert not marker.exists(), "the stock data folder was not written again: the test proves nothing"
    assert tree_digest(maps) == before

    fold = workspace["results"] / "Dataset647_PhantomPseudoHR" / "REHRSegTrainer_cpuSmoke__REHRSegPlans__3d_fullres"
    train = run_script("nnUNetv2_train", ["647", "3d_fullres", "all", "-tr", "REHRSegTrainer_cpuSmoke", "-p",
                                          "REHRSegPlans", "-device", "cpu"], workspace["train_env"])
    assert_ok(train)
    assert (fold / "fold_all" / "checkpoint_final.pth").is_file()

    # rehrseg_plan again redoes the maps, which are older than their re-preprocessed cases
    stamps = {p.name: p.stat().st_mtime_ns for p in maps.iterdir()}
    assert_ok(run_script("rehrseg_plan", ["-d", "647", *PHANTOM_PLAN_FLAGS], env))
    assert all(p.stat().st_mtime_ns > stamps[p.name] for p in maps.iterdir())


def test_a_map_is_redone_only_when_older_than_its_inputs(tmp_path):
    target, source = tmp_path / "map.npy", tmp_path / "case.pkl"
    source.write_text("x")
    assert not is_up_to_date(str(target), str(source))
    target.write_text("y")
    os.utime(source, ns=(1_000_000_000, 1_000_000_000))
    assert is_up_to_date(str(target), str(source))
    os.utime(source, ns=(4_000_000_000_000_000_000, 4_000_000_000_000_000_000))
    assert not is_up_to_date(str(target), str(source))


def test_the_dataloader_reads_the_new_place_then_the_old_one_else_says_what_to_run(tmp_path):
    data = tmp_path / "Dataset647_X" / "nnUNetPlans_3d_fullres"
    maps = tmp_path / "Dataset647_X" / "nnUNetPlans_3d_fullres_rehrseg_uncertainty"
    data.mkdir(parents=True)
    dataset = SimpleNamespace(source_folder=str(data))
    with pytest.raises(RehrsegInputError) as missing:
        uncertainty_file(dataset, "case000")
    message = str(missing.value)
    assert str(maps / "case000_uncertainty.npy") in message and "run rehrseg_plan -d Dataset647_X" in message
    assert "\n" not in message
    np.save(data / "case000_uncertainty.npy", np.zeros((1, 2, 3, 4), np.float16))  # where 0.2.0 wrote it
    assert uncertainty_file(dataset, "case000") == str(data / "case000_uncertainty.npy")
    maps.mkdir()
    np.save(maps / "case000_uncertainty.npy", np.zeros((1, 2, 3, 4), np.float16))
    assert uncertainty_file(dataset, "case000") == str(maps / "case000_uncertainty.npy")
    assert load_uncertainty(dataset, "case000", (2, 2, 3, 4)).shape == (1, 2, 3, 4)
    with pytest.raises(RehrsegInputError, match=r"has shape \[2, 3, 4\] but its preprocessed image \[2, 3, 5\]; "
                                                 r"run rehrseg_plan -d Dataset647_X --overwrite"):
        load_uncertainty(dataset, "case000", (2, 2, 3, 5))
