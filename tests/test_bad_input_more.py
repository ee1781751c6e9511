"""More bad input (issues 27 and 29): one line, non-zero exit, nothing written.

Geometry: a sheared direction matrix is refused by rehrseg_train_sr and rehrseg_make_pseudohr; the rule for r
with anisotropic in-plane spacing is stated in -h and in the log, and --scale-factor overrides it. Datasets:
fractional labels and empty channel_names are refused by rehrseg_train_sr; rehrseg_plan checks the uncertainty
maps before it writes its plans, and says when it rounds the requested patch.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import (
    assert_ok,
    assert_one_line_error,
    copy_pseudohr,
    phantom_workspace,
    run_script,
    tree_digest,
)
from phantoms import write_thick_slice_dataset

SHEAR = (1.0, 0.2, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def rewrite(path: str, change) -> None:
    image = sitk.ReadImage(path)
    sitk.WriteImage(change(image), path)


def with_direction(direction):
    def change(image: sitk.Image) -> sitk.Image:
        image.SetDirection(direction)
        return image
    return change


def with_spacing(spacing):
    def change(image: sitk.Image) -> sitk.Image:
        image.SetSpacing(spacing)
        return image
    return change


def refused_by_train_sr(tmp_path, folder: str, dataset_id: int) -> str:
    """rehrseg_train_sr on the dataset: one line, no model folder, the dataset untouched; returns the line."""
    before = tree_digest(folder)
    model = tmp_path / "model"
    result = run_script("rehrseg_train_sr", ["-d", str(dataset_id), "-o", str(model), "--steps", "1", "-device", "cpu"],
                        {"nnUNet_raw": str(tmp_path / "raw")})
    assert_one_line_error(result, "rehrseg_train_sr: error:")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not model.exists(), "a refused run wrote its model folder"
    assert tree_digest(folder) == before
    return result.stderr.strip()


@pytest.mark.bad_input
def test_train_sr_refuses_a_sheared_direction(tmp_path):
    folder = write_thick_slice_dataset(str(tmp_path / "raw"), dataset_id=641, num_cases=2, shape=(32, 32, 32),
                                       file_ending=".mha")  # MetaImage keeps a shear (NIfTI coerces it)
    rewrite(os.path.join(folder, "imagesTr", "case001_0000.mha"), with_direction(SHEAR))
    line = refused_by_train_sr(tmp_path, folder, 641)
    assert "case001_0000.mha" in line and "non-orthonormal direction" in line and "resample" in line


@pytest.mark.bad_input
def test_train_sr_refuses_fractional_labels(tmp_path):
    folder = write_thick_slice_dataset(str(tmp_path / "raw"), dataset_id=642, num_cases=2, shape=(32, 32, 32))
    path = os.path.join(folder, "labelsTr", "case001.nii.gz")
    label = sitk.ReadImage(path)
    array = sitk.GetArrayFromImage(label).astype(np.float32)
    array[0, 0, 0] = 0.5  # rounded, it would silently become background
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(label)
    sitk.WriteImage(changed, path)
    line = refused_by_train_sr(tmp_path, folder, 642)
    assert "labelsTr/case001.nii.gz" in line and "non-integer label values (e.g. 0.5)" in line


@pytest.mark.bad_input
def test_train_sr_refuses_empty_channel_names(tmp_path):
    folder = write_thick_slice_dataset(str(tmp_path / "raw"), dataset_id=643, num_cases=1, shape=(32, 32, 32))
    path = os.path.join(folder, "dataset.json")
    dataset_json = json.loads(open(path).read())
    dataset_json["channel_names"] = {}
    with open(path, "w") as handle:
        json.dump(dataset_json, handle)
    line = refused_by_train_sr(tmp_path, folder, 643)
    assert "dataset.json" in line and "'channel_names' is empty" in line


@pytest.mark.bad_input
def test_make_pseudohr_refuses_a_sheared_direction(trained_sr_model, tmp_path):
    """The session model's dataset rewritten as MetaImage, one channel file sheared: refused from its header."""
    raw = tmp_path / "raw"
    source = raw / "Dataset502_Phantom"
    shutil.copytree(os.path.join(trained_sr_model["raw"], "Dataset502_Phantom"), source)
    for path in [*source.glob("*/*.nii.gz")]:
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path)[: -len(".nii.gz")] + ".mha")
        path.unlink()
    dataset_json = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**dataset_json, "file_ending": ".mha"}))
    image = source / "imagesTr" / "case001_0001.mha"
    original = sitk.ReadImage(str(image)).GetDirection()
    sheared = (np.asarray(original).reshape(3, 3) @ np.asarray(SHEAR).reshape(3, 3)).ravel()
    rewrite(str(image), with_direction(tuple(float(v) for v in sheared)))
    before = tree_digest(raw)
    result = run_script("rehrseg_make_pseudohr", ["-d", "502", "-o", "644", "-m", trained_sr_model["model"],
                                                  "-device", "cpu"], {"nnUNet_raw": str(raw)})
    assert_one_line_error(result, "rehrseg_make_pseudohr: error:", "case001_0001.mha", "non-orthonormal direction")
    assert tree_digest(raw) == before and sorted(os.listdir(raw)) == ["Dataset502_Phantom"]


def test_the_rule_for_r_is_in_the_help():
    from rehrseg_nnunet.cli.train_sr import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "r = round(slice spacing / mean in-plane spacing)" in text
    assert "0.5 x 1.0 mm pixels give r = round(4 / 0.75) = 5" in text and "overrides" in text


def test_anisotropic_in_plane_spacing_gives_r_from_the_mean_and_scale_factor_overrides(tmp_path, monkeypatch):
    """4 mm slices of 0.5 x 1.0 mm pixels: r = round(4 / 0.75) = 5, said in the log; --scale-factor 4 wins."""
    from rehrseg_nnunet.sr.train import SRTrainingOptions, prepare_run

    folder = write_thick_slice_dataset(str(tmp_path / "raw"), dataset_id=645, num_cases=1, shape=(32, 32, 32))
    for path in [*(tmp_path / "raw").glob("*/*/*.nii.gz")]:
        rewrite(str(path), with_spacing((0.5, 1.0, 4.0)))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert os.path.isdir(folder)
    inferred = prepare_run("645", SRTrainingOptions(output=str(tmp_path / "auto"), device="cpu"))
    assert inferred.config.scale_factor == 5 and inferred.config.hr_spacing == [0.5, 1.0, 0.8]
    log = (tmp_path / "auto" / "training_log.txt").read_text()
    assert "r = 5 = round(4 / 0.75, mean in-plane spacing); --scale-factor overrides" in log, log
    overridden = prepare_run("645", SRTrainingOptions(output=str(tmp_path / "forced"), device="cpu", scale_factor=4))
    assert overridden.config.scale_factor == 4 and overridden.config.hr_spacing == [0.5, 1.0, 1.0]
    log = (tmp_path / "forced" / "training_log.txt").read_text()
    assert "r = 4 from --scale-factor (the spacing gives r = 5 = round(4 / 0.75" in log, log


# --- rehrseg_plan -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pseudohr_planned(tmp_path_factory, trained_sr_model, pseudohr_template):
    """The session model's pseudo-HR dataset (r = 4), planned and preprocessed by stock nnU-Net."""
    root = tmp_path_factory.mktemp("plan_checks")
    workspace = phantom_workspace(root, trained_sr_model)
    raw, env = workspace["raw"], workspace["env"]
    copy_pseudohr(pseudohr_template, workspace, "646", rehrseg_planned=False)
    return {"env": env, "raw": raw / "Dataset646_PhantomPseudoHR",
            "preprocessed": root / "preprocessed" / "Dataset646_PhantomPseudoHR"}


PLAN_ARGS = ["-d", "646", "--base_features", "8", "--max_features", "32", "-np", "1"]


@pytest.mark.bad_input
@pytest.mark.parametrize("missing", ["folder", "one_map"])
def test_plan_checks_the_uncertainty_maps_before_writing(pseudohr_planned, missing):
    uncertainty = pseudohr_planned["raw"] / "uncertaintyTr"
    moved = uncertainty.parent / "moved_away"
    target = uncertainty if missing == "folder" else uncertainty / "case001.nii.gz"
    before = tree_digest(pseudohr_planned["preprocessed"])
    os.replace(target, moved)
    try:
        result = run_script("rehrseg_plan", [*PLAN_ARGS, "--patch_size", "16", "32", "32"], pseudohr_planned["env"])
    finally:
        os.replace(moved, target)
    fragment = "uncertaintyTr is missing" if missing == "folder" else "uncertaintyTr/case001.nii.gz is missing"
    assert_one_line_error(result, "rehrseg_plan: error:", fragment,
                          "rehrseg_make_pseudohr -d Dataset502_Phantom -o 646")
    assert tree_digest(pseudohr_planned["preprocessed"]) == before
    assert not (pseudohr_planned["preprocessed"] / "REHRSegPlans.json").exists()


def test_plan_says_when_it_rounds_the_requested_patch(pseudohr_planned):
    """Each axis to the nearest valid size, said per axis: 30 -> 32 along the slice axis (not down to 28), 60 -> 64."""
    result = run_script("rehrseg_plan", [*PLAN_ARGS, "--patch_size", "30", "60", "60"], pseudohr_planned["env"])
    assert_ok(result)
    plans = json.loads((pseudohr_planned["preprocessed"] / "REHRSegPlans.json").read_text())
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    assert patch == [32, 64, 64], patch
    notes = [line for line in result.stdout.splitlines() if "rounded the requested patch" in line]
    assert len(notes) == 1, result.stdout[-2000:]
    assert f"[30, 60, 60] to {patch}" in notes[0] and "multiple of r x 2^poolings = 4 x 2^" in notes[0]
    assert "slice axis 30 -> 32" in notes[0] and "in-plane axis 1 60 -> 64" in notes[0], notes[0]
    assert "in-plane axis 2 60 -> 64" in notes[0]
    again = run_script("rehrseg_plan", [*PLAN_ARGS, "--patch_size", *map(str, patch)], pseudohr_planned["env"])
    assert_ok(again)
    assert "rounded the requested patch" not in again.stdout


def test_plan_needs_the_sr_model_only_the_first_time(pseudohr_planned):
    """Re-planning (a new patch) keeps the distillation width the plans recorded; the first plan says why it needs
    the SR model, in one line, and writes nothing."""
    sr_model = os.path.join(pseudohr_planned["env"]["nnUNet_results"], "Dataset502_Phantom", "rehrseg_sr")
    plans_file = pseudohr_planned["preprocessed"] / "REHRSegPlans.json"
    assert_ok(run_script("rehrseg_plan", [*PLAN_ARGS, "--patch_size", "16", "32", "32"], pseudohr_planned["env"]))
    width = json.loads(plans_file.read_text())["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][
        "distillation_channels"]
    assert width > 0
    os.replace(sr_model, sr_model + "_moved")
    try:
        replanned = run_script("rehrseg_plan", [*PLAN_ARGS, "--patch_size", "16", "64", "64"], pseudohr_planned["env"])
        assert_ok(replanned)
        config = json.loads(plans_file.read_text())["configurations"]["3d_fullres"]
        assert config["patch_size"] == [16, 64, 64]
        assert config["architecture"]["arch_kwargs"]["distillation_channels"] == width
        assert f"kept the distillation width {width}" in replanned.stdout, replanned.stdout[-2000:]
        os.replace(plans_file, str(plans_file) + ".moved")
        before = tree_digest(pseudohr_planned["preprocessed"])
        first = run_script("rehrseg_plan", [*PLAN_ARGS, "--patch_size", "16", "32", "32"], pseudohr_planned["env"])
        assert_one_line_error(first, "rehrseg_plan: error:", "rehrseg_sr", "distillation projection",
                              "rehrseg_make_pseudohr with -m")
        assert tree_digest(pseudohr_planned["preprocessed"]) == before
    finally:
        os.replace(sr_model + "_moved", sr_model)
        if os.path.isfile(str(plans_file) + ".moved"):
            os.replace(str(plans_file) + ".moved", plans_file)
