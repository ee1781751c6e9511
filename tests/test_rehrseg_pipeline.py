"""End to end through the real console scripts: pseudo-HR dataset -> plan -> REHRSegTrainer -> predictions.

nnUNetv2_plan_and_preprocess -> rehrseg_plan -> nnUNetv2_train -tr REHRSegTrainer_debug -> nnUNetv2_predict
(LR grid) -> rehrseg_predict (HR grid), on the session's two-channel, three-label phantom whose direction
is rotated 20 degrees about y.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import PHANTOM_DIRECTION, PHANTOM_ORIGIN, assert_ok, assert_one_line_error, console_script, run_script

from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

pytestmark = pytest.mark.slow

TRAINER = "REHRSegTrainer_debug"
PREDICT_FLAGS = ["-d", "612", "-tr", TRAINER, "-p", "REHRSegPlans", "-c", "3d_fullres", "-f", "all", "-device", "cpu",
                 "-npp", "1", "-nps", "1"]



@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, trained_sr_model):
    root = tmp_path_factory.mktemp("pipeline")
    raw = root / "raw"
    shutil.copytree(os.path.join(trained_sr_model["raw"], "Dataset502_Phantom"), raw / "Dataset502_Phantom")
    env = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_def_n_proc": "1", "nnUNet_compile": "0"}
    assert_ok(run_script("rehrseg_make_pseudohr", ["-d", "502", "-o", "612", "-m", trained_sr_model["model"],
                                                   "-device", "cpu"], env))
    assert_ok(run_script("nnUNetv2_plan_and_preprocess", ["-d", "612", "-c", "3d_fullres", "-np", "1", "-npfp", "1",
                                                          "--verify_dataset_integrity"], env))
    plan = run_script("rehrseg_plan", ["-d", "612", "--patch_size", "16", "32", "32", "--base_features", "8",
                                       "--max_features", "32", "-np", "1"], env)
    assert_ok(plan)
    train_env = {**env, "nnUNet_n_proc_DA": "0", "nnUNet_extTrainer": EXT_TRAINER_FOLDER}
    train = run_script("nnUNetv2_train", ["612", "3d_fullres", "all", "-tr", TRAINER, "-p", "REHRSegPlans",
                                          "-device", "cpu"], train_env)
    assert_ok(train)
    lr_inputs = raw / "Dataset502_Phantom" / "imagesTr"
    stock = run_script("nnUNetv2_predict", ["-i", str(lr_inputs), "-o", str(root / "pred_lr"), *PREDICT_FLAGS],
                       {**env, "nnUNet_extTrainer": EXT_TRAINER_FOLDER})
    assert_ok(stock)
    hr = run_script("rehrseg_predict", ["-i", str(lr_inputs), "-o", str(root / "pred_hr"), *PREDICT_FLAGS], env)
    assert_ok(hr)
    return {"root": root, "raw": raw, "env": env, "train_env": train_env, "plan": plan, "train": train,
            "model": root / "results" / "Dataset612_PhantomPseudoHR" / f"{TRAINER}__REHRSegPlans__3d_fullres"}


def test_plans_describe_the_lr_topology_and_hr_patch(pipeline):
    plans = json.loads(
        (pipeline["root"] / "preprocessed" / "Dataset612_PhantomPseudoHR" / "REHRSegPlans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["architecture"]["network_class_name"] == "rehrseg_nnunet.network.REHRSegUNet"
    assert config["patch_size"] == [16, 32, 32] and config["rehrseg"]["lr_patch_size"] == [4, 32, 32]
    strides = np.asarray(config["architecture"]["arch_kwargs"]["strides"])
    assert config["patch_size"][0] % (4 * np.prod(strides[:, 0])) == 0
    assert config["resampling_fn_data_kwargs"]["force_separate_z"] is True
    assert config["resampling_fn_data_kwargs"]["order_z"] == 0
    assert plans["transpose_forward"][0] == 0  # slice axis z (numpy axis 0) first
    uncertainty = np.load(pipeline["root"] / "preprocessed" / "Dataset612_PhantomPseudoHR"
                          / f"{config['data_identifier']}_rehrseg_uncertainty" / "case000_uncertainty.npy")
    assert uncertainty.dtype == np.float16 and 0 <= uncertainty.min() and uncertainty.max() <= 1
    assert "train with nnUNetv2_train 612" in pipeline["plan"].stdout


def test_training_ran_with_distillation_and_wrote_a_checkpoint(pipeline):
    assert (pipeline["model"] / "fold_all" / "checkpoint_final.pth").is_file()
    assert "Mean Validation Dice" in pipeline["train"].stdout


def test_stock_predict_writes_on_the_lr_input_grid(pipeline):
    for case in ("case000", "case001"):
        lr = sitk.ReadImage(str(pipeline["raw"] / "Dataset502_Phantom" / "imagesTr" / f"{case}_0000.nii.gz"))
        seg = sitk.ReadImage(str(pipeline["root"] / "pred_lr" / f"{case}.nii.gz"))
        assert seg.GetSize() == lr.GetSize()
        assert np.allclose(seg.GetSpacing(), lr.GetSpacing()) and np.allclose(seg.GetOrigin(), lr.GetOrigin())
        assert np.allclose(seg.GetDirection(), lr.GetDirection())
        assert set(np.unique(sitk.GetArrayViewFromImage(seg))) <= {0, 1, 2}


def test_rehrseg_predict_writes_on_the_hr_grid_with_exact_geometry(pipeline):
    r = 4
    for case in ("case000", "case001"):
        lr = sitk.ReadImage(str(pipeline["raw"] / "Dataset502_Phantom" / "imagesTr" / f"{case}_0000.nii.gz"))
        seg = sitk.ReadImage(str(pipeline["root"] / "pred_hr" / f"{case}.nii.gz"))
        nx, ny, nz = lr.GetSize()
        s = lr.GetSpacing()[2]
        assert seg.GetSize() == (nx, ny, nz * r)
        assert np.allclose(seg.GetSpacing(), (lr.GetSpacing()[0], lr.GetSpacing()[1], s / r))
        # by hand: origin moves by -d_z * s * (r - 1) / (2 r), d_z = third direction column
        d_z = np.array([PHANTOM_DIRECTION[2], PHANTOM_DIRECTION[5], PHANTOM_DIRECTION[8]])
        assert np.allclose(seg.GetOrigin(), np.array(lr.GetOrigin()) - d_z * s * 3 / 8, atol=1e-4)
        assert np.allclose(seg.GetDirection(), PHANTOM_DIRECTION, atol=1e-6)
        # the phantom's LR origin itself is PHANTOM_ORIGIN shifted by +d_z * 1.5 mm (simulation convention)
        assert np.allclose(np.array(lr.GetOrigin()), np.array(PHANTOM_ORIGIN) + d_z * 1.5, atol=1e-4)
        assert set(np.unique(sitk.GetArrayViewFromImage(seg))) <= {0, 1, 2}


def _copy_preprocessed(pipeline, new_id: int, edit) -> None:
    base = pipeline["root"] / "preprocessed"
    target = base / f"Dataset{new_id}_PhantomPseudoHR"
    shutil.copytree(base / "Dataset612_PhantomPseudoHR", target, dirs_exist_ok=True)
    dataset_json = json.loads((target / "dataset.json").read_text())
    edit(dataset_json)
    (target / "dataset.json").write_text(json.dumps(dataset_json))
    plans = json.loads((target / "REHRSegPlans.json").read_text())
    plans["dataset_name"] = target.name
    (target / "REHRSegPlans.json").write_text(json.dumps(plans))


@pytest.mark.bad_input
def test_bad_input_gives_one_clear_line(pipeline):
    env = pipeline["train_env"]
    args = ["3d_fullres", "all", "-tr", TRAINER, "-device", "cpu"]
    # a dataset without the rehrseg block
    _copy_preprocessed(pipeline, 613, lambda d: d.pop("rehrseg"))
    assert_one_line_error(run_script("nnUNetv2_train", ["613", *args, "-p", "REHRSegPlans"], env),
                          "not a pseudo-HR dataset", "rehrseg_make_pseudohr")
    # plans without the REHRSeg network
    assert_one_line_error(run_script("nnUNetv2_train", ["612", *args], env), "rehrseg_plan", "-p REHRSegPlans")
    # a missing SR model folder
    _copy_preprocessed(pipeline, 614, lambda d: d["rehrseg"].update(sr_model_folder="/nonexistent/sr_model"))
    assert_one_line_error(run_script("nnUNetv2_train", ["614", *args, "-p", "REHRSegPlans"], env),
                          "/nonexistent/sr_model", "noDistill")
    # a dataset.json whose stage contract disagrees with the plans' copy (r edited after planning)
    _copy_preprocessed(pipeline, 615, lambda d: d["rehrseg"].update(scale_factor=2))
    assert_one_line_error(run_script("nnUNetv2_train", ["615", *args, "-p", "REHRSegPlans"], env),
                          "says r = 2, 4 mm slices along z but plans 'REHRSegPlans'", "says r = 4", "rehrseg_plan")
    # an SR model folder whose stage-1c checkpoint is not the one that made the dataset
    _copy_preprocessed(pipeline, 616, lambda d: d["rehrseg"].update(sr_checkpoint_sha256="0" * 64))
    assert_one_line_error(run_script("nnUNetv2_train", ["616", *args, "-p", "REHRSegPlans"], env),
                          "is not the SR network that made this dataset", "rehrseg_make_pseudohr")
    # rehrseg_predict on a model that was not trained with REHRSeg
    stock_like = pipeline["root"] / "results" / "Dataset612_PhantomPseudoHR" / "StockTrainer__REHRSegPlans__3d_fullres"
    shutil.copytree(pipeline["model"], stock_like)
    plans = json.loads((stock_like / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = \
        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    (stock_like / "plans.json").write_text(json.dumps(plans))
    flags = [f if f != TRAINER else "StockTrainer" for f in PREDICT_FLAGS]
    result = run_script("rehrseg_predict", ["-i", str(pipeline["raw"] / "Dataset502_Phantom" / "imagesTr"),
                                            "-o", str(pipeline["root"] / "never"), *flags], pipeline["env"])
    assert_one_line_error(result, "not trained with REHRSeg")
    assert not (pipeline["root"] / "never").exists() or not any((pipeline["root"] / "never").glob("*.nii.gz"))


@pytest.mark.bad_input
def test_inputs_the_model_was_not_trained_for_are_refused(pipeline, tmp_path):
    """A thick axis other than the model's, or slices that do not hold r HR slices: one line naming the file."""
    source = pipeline["raw"] / "Dataset502_Phantom" / "imagesTr"
    for name, change in (("foreign_axis", lambda im: sitk.PermuteAxes(im, [2, 1, 0])),  # 4 mm along x
                         ("six_mm", lambda im: _with_spacing(im, (1.0, 1.0, 6.0)))):
        folder = tmp_path / name
        folder.mkdir()
        for channel in range(2):
            image = change(sitk.ReadImage(str(source / f"case000_{channel:04d}.nii.gz")))
            sitk.WriteImage(image, str(folder / f"odd_{channel:04d}.nii.gz"))
        result = run_script("rehrseg_predict", ["-i", str(folder), "-o", str(tmp_path / f"out_{name}"), *PREDICT_FLAGS],
                            pipeline["env"])
        assert_one_line_error(result, "odd_0000.nii.gz", "slices along z")
        assert not (tmp_path / f"out_{name}").exists()
        # stock nnUNetv2_predict with the REHRSeg model checks the same (nnU-Net itself creates -o first)
        stock = run_script("nnUNetv2_predict", ["-i", str(folder), "-o", str(tmp_path / f"stock_{name}"),
                                                *PREDICT_FLAGS],
                           {**pipeline["env"], "nnUNet_extTrainer": EXT_TRAINER_FOLDER})
        assert_one_line_error(stock, "nnUNetv2_predict: error:", "odd_0000.nii.gz", "slices along z")
        stock_output = tmp_path / f"stock_{name}"
        assert not stock_output.exists() or not any(stock_output.iterdir())
    empty = tmp_path / "no_nifti"
    empty.mkdir()
    (empty / "case_0000.nrrd").write_bytes(b"")
    assert_one_line_error(run_script("rehrseg_predict", ["-i", str(empty), "-o", str(tmp_path / "o"), *PREDICT_FLAGS],
                                     pipeline["env"]), "holds no CASE_0000.nii.gz images")


PREDICT_BAD_INPUT = {
    # scenario: (what the input folder holds, extra args / env changes, fragments of the one-line error)
    "one_channel_of_two": ("one_channel", {}, ["odd_0000.nii.gz", "1 channel file(s)", "takes 2"]),
    "zero_byte_file": ("zero_byte", {}, ["odd_0000.nii.gz"]),
    "isotropic_1mm": ((1.0, 1.0, 1.0), {}, ["odd_0000.nii.gz", "slices along z"]),
    "r2_slices_2mm": ((1.0, 1.0, 2.0), {}, ["odd_0000.nii.gz", "slices along z"]),
    "unknown_dataset_999": ((1.0, 1.0, 4.0), {"-d": "999"}, ["dataset 999 was not found"]),
    "nnUNet_results_unset": ((1.0, 1.0, 4.0), {"nnUNet_results": None}, ["nnUNet_results is not set"]),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("scenario", sorted(PREDICT_BAD_INPUT))
def test_rehrseg_predict_refuses_bad_input_with_one_line(pipeline, tmp_path, scenario):
    content, changes, fragments = PREDICT_BAD_INPUT[scenario]
    source = pipeline["raw"] / "Dataset502_Phantom" / "imagesTr"
    folder = tmp_path / "inputs"
    folder.mkdir()
    for channel in range(2):
        target = folder / f"odd_{channel:04d}.nii.gz"
        if content == "zero_byte":
            target.write_bytes(b"")
        elif content != "one_channel" or channel == 0:
            image = sitk.ReadImage(str(source / f"case000_{channel:04d}.nii.gz"))
            sitk.WriteImage(image if content == "one_channel" else _with_spacing(image, content), str(target))
    flags = list(PREDICT_FLAGS)
    if "-d" in changes:
        flags[flags.index("-d") + 1] = changes["-d"]
    env = {**os.environ, **pipeline["env"]}
    if "nnUNet_results" in changes:
        del env["nnUNet_results"]
    result = subprocess.run([console_script("rehrseg_predict"), "-i", str(folder), "-o", str(tmp_path / "out"), *flags],
                            env=env, capture_output=True, text=True, timeout=600)
    assert_one_line_error(result, "rehrseg_predict: error:", *fragments)
    assert not (tmp_path / "out").exists()


def _with_spacing(image, spacing):
    image = sitk.Image(image)
    image.SetSpacing(spacing)
    return image


@pytest.mark.bad_input
def test_every_voxel_is_covered_when_the_slices_are_not_a_multiple_of_the_window_step(pipeline, tmp_path):
    """4.3 mm slices (accepted: 4.3 / 1 mm rounds to r = 4) on a 1 mm model grid: 4.3 n HR slices (39, 43, 47),
    not a multiple of r; the last window must still reach the end (else its logits stay NaN and export as
    background)."""
    source = pipeline["raw"] / "Dataset502_Phantom" / "imagesTr"
    folder = tmp_path / "inputs"
    folder.mkdir()
    for slices in (9, 10, 11):
        for channel in range(2):
            image = sitk.ReadImage(str(source / f"case000_{channel:04d}.nii.gz"))[:, :, :slices]
            sitk.WriteImage(_with_spacing(image, (1.0, 1.0, 4.3)), str(folder / f"n{slices}_{channel:04d}.nii.gz"))
    output = tmp_path / "out"
    result = run_script("rehrseg_predict", ["-i", str(folder), "-o", str(output), *PREDICT_FLAGS,
                                            "--save_probabilities"], pipeline["env"])
    assert_ok(result)
    for slices in (9, 10, 11):
        probabilities = np.load(output / f"n{slices}.npz")["probabilities"]
        assert probabilities.shape[1] == 4 * slices  # HR grid: r slices per thick slice
        assert np.isfinite(probabilities).all()
        np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-3)
