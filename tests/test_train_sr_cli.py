"""rehrseg_train_sr through its console script: training, resume after a kill, and bad input."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import console_script, run_script, tree_digest
from phantoms import write_thick_slice_dataset


def test_training_writes_config_checkpoints_and_log(trained_sr_model):
    model = trained_sr_model["model"]
    with open(os.path.join(model, "config.json")) as handle:
        config = json.load(handle)
    assert config["scale_factor"] == 4 and config["slice_axis"] == 2
    assert config["label_values"] == [0, 1, 2] and len(config["channel_names"]) == 2
    assert config["lr_spacing"] == [1.0, 1.0, 4.0] and config["hr_spacing"] == [1.0, 1.0, 1.0]
    assert config["steps"] == {"1a": 4, "1b": 4, "1c": 4} and len(config["fingerprint"]) == 16
    for stage in ("1a", "1b", "1c"):
        assert os.path.isfile(os.path.join(model, f"stage_{stage}", "checkpoint_final.pth"))
    assert 0 < config["uncertainty_scale"] < 1  # sigma's 99th percentile on training pairs, written as 1
    log = open(os.path.join(model, "training_log.txt")).read()
    assert "stage 1c: finished 4 steps" in log and "SR model complete" in log and "uncertainty scale" in log
    assert "SR stage 1a" in trained_sr_model["stderr"]  # progress bar


@pytest.mark.bad_input
def test_attention_maps_option_sets_m_and_is_checked_on_continue(tmp_path):
    raw = tmp_path / "raw"
    write_thick_slice_dataset(str(raw), dataset_id=503, num_cases=1, shape=(32, 32, 32))
    model = str(tmp_path / "model")
    env = {"nnUNet_raw": str(raw)}
    result = run_script("rehrseg_train_sr", ["-d", "503", "-o", model, "--steps", "2", "--attention-maps", "3"], env)
    assert result.returncode == 0, result.stderr[-2000:]
    import torch
    checkpoint = torch.load(os.path.join(model, "stage_1c", "checkpoint_final.pth"), weights_only=False)
    assert checkpoint["network_kwargs"]["num_attention_maps"] == 3
    assert checkpoint["model"]["uncertainty.weight"].shape[1] == 3
    result = run_script("rehrseg_train_sr", ["-d", "503", "-o", model, "--steps", "2", "--continue"], env)
    assert result.returncode != 0 and "settings" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.bad_input
def test_same_seed_gives_identical_weights(tmp_path):
    """--seed fixes everything random (network initialisation, pairs, label dropout): two runs on the CPU agree
    to the last bit; another seed does not."""
    import torch

    raw = tmp_path / "raw"
    write_thick_slice_dataset(str(raw), dataset_id=504, num_cases=1, shape=(32, 32, 32))
    weights = []
    for run, seed in enumerate(("0", "0", "1")):
        model = str(tmp_path / f"model{run}")
        result = run_script("rehrseg_train_sr", ["-d", "504", "-o", model, "--steps", "3", "--seed", seed,
                                                 "-device", "cpu"], {"nnUNet_raw": str(raw)})
        assert result.returncode == 0, result.stderr[-2000:]
        weights.append({stage: torch.load(os.path.join(model, f"stage_{stage}", "checkpoint_final.pth"),
                                          weights_only=False)["model"] for stage in ("1a", "1b", "1c")})
    for stage in ("1a", "1b", "1c"):
        first, second, other = (w[stage] for w in weights)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), stage
        assert not all(torch.equal(first[k], other[k]) for k in first), stage


@pytest.mark.bad_input
def test_second_run_without_continue_is_refused(trained_sr_model):
    result = run_script("rehrseg_train_sr", ["-d", "502", "-o", trained_sr_model["model"], "--steps", "4"],
                        {"nnUNet_raw": trained_sr_model["raw"]})
    assert result.returncode != 0
    assert "--continue" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.bad_input
def test_killed_training_resumes_from_its_checkpoint(tmp_path):
    raw = tmp_path / "raw"
    write_thick_slice_dataset(str(raw), dataset_id=503, num_cases=2)
    model = tmp_path / "model"
    env = {**os.environ, "nnUNet_raw": str(raw)}
    args = ["-d", "503", "-o", str(model), "--steps", "6", "200", "6", "--save-every", "2", "-device", "cpu"]
    process = subprocess.Popen([console_script("rehrseg_train_sr"), *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = model / "stage_1b" / "checkpoint_latest.pth"
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert latest.exists(), "stage 1b never wrote a checkpoint"
    assert not (model / "stage_1b" / "checkpoint_final.pth").exists(), "the run finished before it was killed"
    # as if the kill had landed while a checkpoint was being written (it sometimes does)
    (model / "stage_1b" / f"checkpoint_latest.pth.{process.pid}.tmp").write_bytes(b"partial")
    result = run_script("rehrseg_train_sr", args + ["--continue"], {"nnUNet_raw": str(raw)})
    assert result.returncode == 0, result.stderr[-2000:]
    log = (model / "training_log.txt").read_text()
    resumed = [line for line in log.splitlines() if "stage 1b: resumed from step" in line]
    assert resumed, log
    step = int(resumed[0].split("step ")[1].split()[0])
    assert 2 <= step < 200
    assert log.count("stage 1a: finished") == 1  # stage 1a was not trained again
    assert "stage 1c: finished 6 steps" in log
    assert not list(model.rglob("*.tmp"))  # no partial file survives a finished run


def _bad(tmp_path, mutate, dataset_id=510, **dataset_kwargs):
    raw = tmp_path / "raw"
    folder = write_thick_slice_dataset(str(raw), dataset_id=dataset_id, num_cases=2, **dataset_kwargs)
    mutate(folder)
    before = tree_digest(folder)
    model = tmp_path / "model"
    result = run_script("rehrseg_train_sr", ["-d", str(dataset_id), "-o", str(model), "--steps", "2"],
                        {"nnUNet_raw": str(raw)})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert not model.exists(), "a failed run wrote its model folder"
    assert tree_digest(folder) == before
    return lines[0]


def _rewrite(path, change):
    image = sitk.ReadImage(path)
    sitk.WriteImage(change(image), path)


def _set_spacing(spacing):
    def change(image):
        image.SetSpacing(spacing)
        return image
    return change


@pytest.mark.parametrize("spacing, expected", [((1.0, 1.0, 1.0), ["isotropic"]),
                                               ((1.0, 4.0, 4.0), ["ambiguous", "--slice-axis"])])
@pytest.mark.bad_input
def test_isotropic_or_ambiguous_spacing_is_rejected(tmp_path, spacing, expected):
    def mutate(folder):
        for sub in ("imagesTr", "labelsTr"):
            for f in os.listdir(os.path.join(folder, sub)):
                _rewrite(os.path.join(folder, sub, f), _set_spacing(spacing))
    line = _bad(tmp_path, mutate)
    assert "case000_0000.nii.gz" in line and all(word in line for word in expected)


@pytest.mark.bad_input
def test_case_without_label_is_rejected(tmp_path):
    line = _bad(tmp_path, lambda folder: os.remove(os.path.join(folder, "labelsTr", "case001.nii.gz")))
    assert "case001.nii.gz is missing" in line and "no label" in line


@pytest.mark.bad_input
def test_label_geometry_mismatch_is_rejected(tmp_path):
    def mutate(folder):
        def shift(image):
            image.SetOrigin((3.0, 0.0, 0.0))
            return image
        _rewrite(os.path.join(folder, "labelsTr", "case001.nii.gz"), shift)
    line = _bad(tmp_path, mutate)
    assert "labelsTr/case001.nii.gz" in line and "resample the label" in line


@pytest.mark.bad_input
def test_nan_voxels_are_rejected(tmp_path):
    def mutate(folder):
        def poison(image):
            array = sitk.GetArrayFromImage(image)
            array[2, 3, 4] = np.nan
            out = sitk.GetImageFromArray(array)
            out.CopyInformation(image)
            return out
        _rewrite(os.path.join(folder, "imagesTr", "case001_0000.mha"), poison)
    # MetaImage keeps NaN (SimpleITK's NIfTI writer stores non-finite values as 0)
    line = _bad(tmp_path, mutate, file_ending=".mha")
    assert "case001_0000.mha" in line and "NaN or Inf" in line


@pytest.mark.bad_input
def test_2d_images_are_rejected(tmp_path):
    def mutate(folder):
        path = os.path.join(folder, "imagesTr", "case000_0000.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.float32)), path)
    line = _bad(tmp_path, mutate)
    assert "case000_0000.nii.gz" in line and "2D" in line


@pytest.mark.bad_input
@pytest.mark.parametrize("spacing, expected", [((1.0, 1.0, 3.0), "scale factor 3"), ((4.0, 1.0, 1.0), "slice axis")])
def test_cases_disagreeing_on_r_or_slice_axis_are_rejected(tmp_path, spacing, expected):
    def mutate(folder):
        for path in (os.path.join(folder, "imagesTr", "case001_0000.nii.gz"),
                     os.path.join(folder, "labelsTr", "case001.nii.gz")):
            _rewrite(path, _set_spacing(spacing))
    line = _bad(tmp_path, mutate)
    assert "case001_0000.nii.gz" in line and expected in line


@pytest.mark.bad_input
def test_unknown_dataset_id_is_rejected(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    result = run_script("rehrseg_train_sr", ["-d", "777", "-o", str(tmp_path / "model")], {"nnUNet_raw": str(raw)})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "777" in lines[0] and "does not exist" in lines[0]
    assert not (tmp_path / "model").exists()


@pytest.mark.bad_input
def test_a_scale_factor_other_than_the_acquisition_ratio_is_explained(tmp_path):
    """--scale-factor 2 on 4 mm / 1 mm data: the run goes on, and says in one line what grid and pairs that gives."""
    raw = tmp_path / "raw"
    write_thick_slice_dataset(str(raw), dataset_id=505, num_cases=1, shape=(32, 32, 32))
    model = tmp_path / "model"
    result = run_script("rehrseg_train_sr", ["-d", "505", "-o", str(model), "--steps", "1", "--scale-factor", "2",
                                             "-device", "cpu"], {"nnUNet_raw": str(raw)})
    assert result.returncode == 0, result.stderr[-2000:]
    notes = [line for line in (result.stdout + result.stderr).splitlines() if "is not the acquisition's ratio" in line]
    assert len(notes) == 1, result.stdout[-2000:]
    assert "r = 2" in notes[0] and "ratio 4.00" in notes[0] and "2 mm slices" in notes[0]
    assert json.loads((model / "config.json").read_text())["hr_spacing"] == [1.0, 1.0, 2.0]
