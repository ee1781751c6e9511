"""Prediction and export that nothing can corrupt (issue 36): NaN/Inf inputs refused before anything is written,
one rehrseg_predict per output folder, the partial zips of killed exports removed by a re-run.

The runs that need a trained REHRSeg model (both predictors on a NaN input, two predictions into one -o at once,
a killed export then a re-run with the model) are in test_guided.py, beside its trained model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_one_line_error, run_script, tree_digest

from rehrseg_nnunet.errors import RehrsegInputError


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def with_a_nan_voxel(source: str, target: str, value: float = np.nan) -> str:
    """Copy an input folder with one voxel of its first image set to ``value``. Returns that image's path."""
    shutil.copytree(source, target)
    path = os.path.join(target, sorted(n for n in os.listdir(target) if n.endswith("_0000.nii.gz"))[0])
    image = sitk.ReadImage(path, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[tuple(s // 2 for s in array.shape)] = value
    damaged = sitk.GetImageFromArray(array)
    damaged.CopyInformation(image)
    sitk.WriteImage(damaged, path)
    return path


@pytest.mark.bad_input
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_super_resolve_refuses_a_nan_or_inf_input_before_writing(trained_sr_model, tmp_path, value):
    inputs = str(tmp_path / "inputs")
    damaged = with_a_nan_voxel(os.path.join(trained_sr_model["raw"], "Dataset502_Phantom", "imagesTr"), inputs, value)
    before = tree_digest(trained_sr_model["model"])
    result = run_script("rehrseg_super_resolve", ["-i", inputs, "-o", str(tmp_path / "out"), "-m",
                                                  trained_sr_model["model"], "-device", "cpu"], {})
    assert_one_line_error(result, "rehrseg_super_resolve: error:", damaged, "contains NaN or Inf voxels",
                          "before super-resolving it")
    assert not (tmp_path / "out").exists()
    assert tree_digest(trained_sr_model["model"]) == before


def test_the_prediction_input_check_refuses_nan_naming_the_file(tmp_path):
    from rehrseg_nnunet.dataset_io import check_finite_voxels

    image = sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))
    clean = str(tmp_path / "clean_0000.nii.gz")
    sitk.WriteImage(image, clean)
    check_finite_voxels(clean)  # no error
    damaged = with_a_nan_voxel(str(tmp_path), str(tmp_path / "copy"))
    with pytest.raises(RehrsegInputError, match=f"^{damaged} contains NaN or Inf voxels; replace them .* before "
                                                "predicting.$"):
        check_finite_voxels(damaged)


# --- one rehrseg_predict per output folder --------------------------------------------------------------------
def test_a_second_prediction_into_one_folder_is_refused_and_a_dead_run_does_not_block(tmp_path):
    from rehrseg_nnunet.cli.predict import OUTPUT_LOCK, claim_output_folder

    output = str(tmp_path / "out")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        os.makedirs(output)
        with open(os.path.join(output, OUTPUT_LOCK), "w") as handle:
            handle.write(str(owner.pid))
        with pytest.raises(RehrsegInputError) as refused:
            claim_output_folder(output)
        assert str(refused.value) == (f"{output} is being predicted into by process {owner.pid} (lock "
                                      f"{os.path.join(output, OUTPUT_LOCK)}); wait for it to finish, or predict into "
                                      "another -o folder.")
        assert open(os.path.join(output, OUTPUT_LOCK)).read() == str(owner.pid)
    finally:
        owner.kill()
        owner.wait()
    lock = claim_output_folder(output)  # the owner is gone: its lock no longer blocks
    assert open(lock).read() == str(os.getpid())
    os.remove(lock)


def test_stale_super_resolved_work_folders_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    from rehrseg_nnunet.predict import SUPER_RESOLVED_FOLDER, remove_stale_work_folders

    dead, live = tmp_path / f"{SUPER_RESOLVED_FOLDER}.{dead_pid()}", tmp_path / f"{SUPER_RESOLVED_FOLDER}.{os.getpid()}"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "case000_0000.nii.gz").write_bytes(b"x")
    remove_stale_work_folders(str(tmp_path))
    assert not dead.exists() and (live / "case000_0000.nii.gz").is_file()


# --- killed exports -------------------------------------------------------------------------------------------
@pytest.mark.bad_input
def test_a_re_run_of_an_export_removes_the_partial_zips_of_killed_ones_only(tmp_path):
    """Even a re-run that is refused (here: no such model) removes the partial zips whose writer is dead."""
    zip_file = tmp_path / "model.zip"
    dead = tmp_path / f"model.zip.{dead_pid()}.partial"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    live = tmp_path / f"model.zip.{owner.pid}.partial"
    other = tmp_path / f"other.zip.{dead_pid()}.partial"
    try:
        for path in (dead, live, other):
            path.write_bytes(b"PK" + b"\0" * 1000)
        results = tmp_path / "results"
        results.mkdir()
        result = run_script("rehrseg_export_model", ["-d", "999", "-o", str(zip_file)],
                            {"nnUNet_results": str(results), "nnUNet_raw": str(results),
                             "nnUNet_preprocessed": str(results)})
        assert_one_line_error(result, "rehrseg_export_model: error:", "dataset 999 was not found")
        assert result.stdout.strip() == f"removed 1 partial zip(s) that an interrupted export to {zip_file} left"
        assert not dead.exists() and live.exists() and other.exists() and not zip_file.exists()
    finally:
        owner.kill()
        owner.wait()


def test_parts_of_one_prediction_share_a_folder_but_not_with_a_whole_run(tmp_path):
    """-num_parts/-part_id runs predict into one -o side by side (a lock each); a whole run and a part do not."""
    from rehrseg_nnunet.cli.predict import OUTPUT_LOCK, claim_output_folder, other_runs

    output = str(tmp_path / "out")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        os.makedirs(output)
        part0 = os.path.join(output, ".rehrseg_predict.part0of2.lock")
        with open(part0, "w") as handle:
            handle.write(str(owner.pid))
        part1 = claim_output_folder(output, 1, 2)  # the other part of the same prediction: allowed
        assert os.path.basename(part1) == ".rehrseg_predict.part1of2.lock" and other_runs(output, part1) == [part0]
        with pytest.raises(RehrsegInputError, match=f"^{output} is being predicted into by process {owner.pid}"):
            claim_output_folder(output, 0, 2)  # the same part twice
        os.remove(part1)
        with pytest.raises(RehrsegInputError, match=f"is being predicted into by another process \\(lock {part0}\\)"):
            claim_output_folder(output)  # a whole run beside a part
        assert not os.path.exists(os.path.join(output, OUTPUT_LOCK)), "the refused run's lock was left behind"
    finally:
        owner.kill()
        owner.wait()
