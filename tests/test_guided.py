"""SR-guided REHRSeg as a user runs it: train (REHRSegTrainer_hrStem_cpuSmoke, the HR stem), export with the
export line of docs/nnunet_workflow.md, install into an empty nnUNet_results with the SR model folder gone, --val,
predict with both predictors; the carried SR model checked; the paper's network under its own name;
rehrseg_super_resolve; crash safety of outputs and checkpoints.
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import (
    PHANTOM_DIRECTION,
    assert_ok,
    assert_one_line_error,
    console_script,
    copy_pseudohr,
    phantom_workspace,
    run_script,
    tree_digest,
)
from test_checkpoint_hashes import flip_a_tensor_byte, truncate
from test_predict_safety import dead_pid, with_a_nan_voxel

from rehrseg_nnunet.file_writing import file_sha256, recorded_hash, write_hash

pytestmark = pytest.mark.slow

GUIDED, PAPER = "REHRSegTrainer_hrStem_cpuSmoke", "REHRSegTrainer_paper_debug"
R = 4


def predict_flags(trainer: str) -> list[str]:
    return ["-d", "617", "-tr", trainer, "-p", "REHRSegPlans", "-c", "3d_fullres", "-f", "all", "-npp", "1",
            "-nps", "1"]


@pytest.fixture(scope="module")
def guided(tmp_path_factory, trained_sr_model, pseudohr_template):
    root = tmp_path_factory.mktemp("guided")
    workspace = phantom_workspace(root, trained_sr_model)
    raw, sr_model, env, train_env = (workspace[k] for k in ("raw", "sr_model", "env", "train_env"))
    copy_pseudohr(pseudohr_template, workspace, "617")  # made, planned and rehrseg_plan-ned as a user does
    out = {"root": root, "raw": raw, "env": env, "train_env": train_env, "sr_model": sr_model}
    for trainer in (GUIDED, PAPER):
        out[trainer] = run_script("nnUNetv2_train", ["617", "3d_fullres", "all", "-tr", trainer, "-p", "REHRSegPlans",
                                                     "-device", "cpu"], train_env)
        assert_ok(out[trainer])
    # the export line of docs/nnunet_workflow.md, then an install into an empty nnUNet_results; no SR model folder
    out["zip"] = root / "rehrseg_617.zip"
    out["export"] = run_script("rehrseg_export_model", ["-d", "617", "-o", str(out["zip"]), "-tr", GUIDED], env)
    assert_ok(out["export"])
    installed = {**env, "nnUNet_results": str(root / "installed"), "nnUNet_raw": str(root / "empty_raw")}
    (root / "installed").mkdir()
    (root / "empty_raw").mkdir()
    assert_ok(run_script("nnUNetv2_install_pretrained_model_from_zip", [str(out["zip"])], installed))
    shutil.move(str(sr_model), str(root / "sr_model_moved_away"))
    out["installed_env"] = installed
    out["installed_model"] = root / "installed" / "Dataset617_PhantomPseudoHR" / f"{GUIDED}__REHRSegPlans__3d_fullres"
    out["val"] = run_script("nnUNetv2_train", ["617", "3d_fullres", "all", "-tr", GUIDED, "-p", "REHRSegPlans",
                                               "--val", "-device", "cpu"], {**installed, "nnUNet_n_proc_DA": "0"})
    lr_inputs = raw / "Dataset502_Phantom" / "imagesTr"
    out["lr_inputs"] = lr_inputs
    hidden_gpu = {**installed, "CUDA_VISIBLE_DEVICES": ""}  # no -device: the CPU is picked, as rehrseg_train_sr does
    out["hr_run"] = run_script("rehrseg_predict", ["-i", str(lr_inputs), "-o", str(root / "pred_hr"),
                                                   *predict_flags(GUIDED)], hidden_gpu)
    out["lr_run"] = run_script("nnUNetv2_predict", ["-i", str(lr_inputs), "-o", str(root / "pred_lr"),
                                                    *predict_flags(GUIDED), "-device", "cpu"], installed)
    return out


def hr_geometry_matches(lr: sitk.Image, hr: sitk.Image) -> None:
    """The HR grid by hand: n*r slices of s/r along z, origin moved by -d_z * s * (r - 1) / (2r)."""
    nx, ny, nz = lr.GetSize()
    s = lr.GetSpacing()[2]
    assert hr.GetSize() == (nx, ny, nz * R)
    assert np.allclose(hr.GetSpacing(), (lr.GetSpacing()[0], lr.GetSpacing()[1], s / R))
    d_z = np.array([PHANTOM_DIRECTION[2], PHANTOM_DIRECTION[5], PHANTOM_DIRECTION[8]])
    assert np.allclose(hr.GetOrigin(), np.array(lr.GetOrigin()) - d_z * s * 3 / 8, atol=1e-4)
    assert np.allclose(hr.GetDirection(), PHANTOM_DIRECTION, atol=1e-6)


def test_guided_model_trains_carrying_its_sr_model(guided):
    log = "".join(p.read_text() for p in (guided["root"] / "results" / "Dataset617_PhantomPseudoHR"
                                          / f"{GUIDED}__REHRSegPlans__3d_fullres" / "fold_all").glob("training_log*"))
    assert "carrying the SR model of" in log
    weights = torch.load(guided["installed_model"] / "fold_all" / "checkpoint_final.pth", map_location="cpu",
                         weights_only=False)["network_weights"]
    assert weights["carried_sr.bundle"].numel() > 1000
    assert any(k.startswith("rehrseg.seg_layers.hr_encoder.") for k in weights)


def test_installed_model_validates_and_predicts_with_both_predictors_on_exact_grids(guided):
    assert_ok(guided["val"])
    summary = json.loads((guided["installed_model"] / "fold_all" / "validation" / "summary.json").read_text())
    assert summary["foreground_mean"]["Dice"] >= 0  # a real validation, not the skipped stub
    assert_ok(guided["hr_run"])
    assert guided["hr_run"].stdout.splitlines()[0] == (
        "rehrseg_predict: predicting on cpu (the first available of cuda, mps, cpu; -device picks one)")
    assert_ok(guided["lr_run"])
    for case in ("case000", "case001"):
        lr = sitk.ReadImage(str(guided["lr_inputs"] / f"{case}_0000.nii.gz"))
        hr_seg = sitk.ReadImage(str(guided["root"] / "pred_hr" / f"{case}.nii.gz"))
        hr_geometry_matches(lr, hr_seg)
        lr_seg = sitk.ReadImage(str(guided["root"] / "pred_lr" / f"{case}.nii.gz"))
        assert lr_seg.GetSize() == lr.GetSize()
        assert np.allclose(lr_seg.GetOrigin(), lr.GetOrigin(), atol=1e-4)
        assert np.allclose(lr_seg.GetSpacing(), lr.GetSpacing())
        assert set(np.unique(sitk.GetArrayViewFromImage(hr_seg))) <= {0, 1, 2}
    # nothing of the super-resolution step (nor the output lock) is left in the output folders
    for folder in ("pred_hr", "pred_lr"):
        assert not list((guided["root"] / folder).glob(".rehrseg_*"))


def test_the_carried_sr_model_is_the_one_that_made_the_training_data(guided):
    """Its networks reproduce, voxel for voxel, what the dataset's SR model folder computes."""
    from rehrseg_nnunet.sr.carried import decode_bundle
    from rehrseg_nnunet.sr.infer import SuperResolver

    weights = torch.load(guided["installed_model"] / "fold_all" / "checkpoint_final.pth", map_location="cpu",
                         weights_only=False)["network_weights"]
    payload = decode_bundle(weights["carried_sr.bundle"], "test")
    dataset_json = json.loads((guided["installed_model"] / "dataset.json").read_text())
    assert payload["sha256"][payload["stage"]] == dataset_json["rehrseg"]["sr_checkpoint_sha256"]
    images = [sitk.ReadImage(str(guided["lr_inputs"] / f"case000_000{c}.nii.gz")) for c in (0, 1)]
    carried = SuperResolver.from_payload(payload, "cpu")(images)
    original = SuperResolver(str(guided["root"] / "sr_model_moved_away"), "cpu")(images)
    assert np.array_equal(sitk.GetArrayFromImage(carried.images[0]), sitk.GetArrayFromImage(original.images[0]))


def installed_copy(guided, tmp_path):
    """A copy of the installed model's nnUNet_results, and the path of its checkpoint_final.pth there."""
    results = tmp_path / "results"
    shutil.copytree(guided["root"] / "installed", results)
    return results, (results / "Dataset617_PhantomPseudoHR" / f"{GUIDED}__REHRSegPlans__3d_fullres" / "fold_all"
                     / "checkpoint_final.pth")


@pytest.mark.bad_input
@pytest.mark.parametrize("damage", ["removed", "altered"])
def test_a_removed_or_altered_carried_sr_model_is_one_line_and_writes_nothing(guided, tmp_path, damage):
    results, checkpoint = installed_copy(guided, tmp_path)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if damage == "removed":
        del state["network_weights"]["carried_sr.bundle"]
    else:
        state["network_weights"]["carried_sr.bundle"][-100] ^= 0xFF
    torch.save(state, checkpoint)
    write_hash(str(checkpoint), file_sha256(str(checkpoint)))  # a consistent checkpoint: the carried model is wrong
    env = {**guided["installed_env"], "nnUNet_results": str(results)}
    before = tree_digest(results)
    fragment = "carries no SR model" if damage == "removed" else "is damaged"
    result = run_script("rehrseg_predict", ["-i", str(guided["lr_inputs"]), "-o", str(tmp_path / "out"),
                                            *predict_flags(GUIDED), "-device", "cpu"], env)
    assert_one_line_error(result, fragment, "retrain")
    stock = run_script("nnUNetv2_predict", ["-i", str(guided["lr_inputs"]), "-o", str(tmp_path / "out_stock"),
                                            *predict_flags(GUIDED), "-device", "cpu"], env)
    assert_one_line_error(stock, fragment)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out_stock").exists()
    assert tree_digest(results) == before


def test_paper_network_trains_and_predicts_under_its_own_name(guided, tmp_path):
    model = guided["root"] / "results" / "Dataset617_PhantomPseudoHR" / f"{PAPER}__REHRSegPlans__3d_fullres"
    weights = torch.load(model / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert not any("hr_encoder" in k or k.startswith("carried_sr") for k in weights["network_weights"])
    result = run_script("rehrseg_predict", ["-i", str(guided["lr_inputs"]), "-o", str(tmp_path / "paper"),
                                            *predict_flags(PAPER), "-device", "cpu"], guided["env"])
    assert_ok(result)
    lr = sitk.ReadImage(str(guided["lr_inputs"] / "case001_0000.nii.gz"))
    hr_geometry_matches(lr, sitk.ReadImage(str(tmp_path / "paper" / "case001.nii.gz")))


@pytest.mark.bad_input
def test_a_killed_export_is_predicted_again_and_matches_a_clean_run(guided, tmp_path):
    """A truncated segmentation and a dead writer's partial file in -o: --continue_prediction redoes the case,
    and the result is byte-identical to the clean run."""
    out = tmp_path / "pred"
    shutil.copytree(guided["root"] / "pred_hr", out)
    clean = (guided["root"] / "pred_hr" / "case000.nii.gz").read_bytes()
    (out / "case000.nii.gz").write_bytes(clean[: len(clean) // 2])
    (out / "case001.nii.gz").write_bytes(b"")
    (out / ".partial").mkdir()
    (out / ".partial" / "99999999_case000.nii.gz").write_bytes(clean[:100])
    result = run_script("rehrseg_predict", ["-i", str(guided["lr_inputs"]), "-o", str(out), *predict_flags(GUIDED),
                                            "-device", "cpu", "--continue_prediction"], guided["installed_env"])
    assert_ok(result)
    assert "incomplete or unreadable" in result.stdout
    for case in ("case000", "case001"):
        assert (out / f"{case}.nii.gz").read_bytes() == (guided["root"] / "pred_hr" / f"{case}.nii.gz").read_bytes()
    assert not (out / ".partial").exists()


def test_export_of_a_model_without_its_final_checkpoint_leaves_no_zip(guided, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(guided["root"] / "installed", results)
    (results / "Dataset617_PhantomPseudoHR" / f"{GUIDED}__REHRSegPlans__3d_fullres" / "fold_all"
     / "checkpoint_final.pth").unlink()
    zip_file = tmp_path / "model.zip"
    result = run_script("rehrseg_export_model", ["-d", "617", "-o", str(zip_file), "-tr", GUIDED],
                        {**guided["installed_env"], "nnUNet_results": str(results)})
    assert_one_line_error(result, "checkpoint_final.pth is missing")
    assert not zip_file.exists() and not list(tmp_path.glob("model.zip*"))


def copied_results_with_sr_model(guided, tmp_path):
    """The training results folder, with the SR model back in place (the paper network distils from it)."""
    results = tmp_path / "results"
    shutil.copytree(guided["root"] / "results", results)
    shutil.copytree(guided["root"] / "sr_model_moved_away", results / "Dataset502_Phantom" / "rehrseg_sr")
    return results


@pytest.mark.bad_input
def test_truncated_latest_checkpoint_resumes_from_the_previous_one_or_says_what_to_do(guided, tmp_path):
    results = copied_results_with_sr_model(guided, tmp_path)
    fold = results / "Dataset617_PhantomPseudoHR" / f"{PAPER}__REHRSegPlans__3d_fullres" / "fold_all"
    final = (fold / "checkpoint_final.pth").read_bytes()
    (fold / "checkpoint_previous.pth").write_bytes(final)
    (fold / "checkpoint_latest.pth").write_bytes(final[: len(final) // 3])
    (fold / "checkpoint_final.pth").unlink()
    env = {**guided["train_env"], "nnUNet_results": str(results)}
    args = ["617", "3d_fullres", "all", "-tr", PAPER, "-p", "REHRSegPlans", "-device", "cpu", "--c"]
    resumed = run_script("nnUNetv2_train", args, env)
    assert_ok(resumed)
    assert "resuming from" in resumed.stdout and (fold / "checkpoint_final.pth").is_file()
    # no previous and no best checkpoint: one line that says what to do
    (fold / "checkpoint_latest.pth").write_bytes(final[: len(final) // 3])
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_previous.pth"):
        (fold / name).unlink(missing_ok=True)
    before = tree_digest(fold)
    refused = run_script("nnUNetv2_train", args, env)
    assert_one_line_error(refused, "checkpoint_latest.pth is unreadable", "train the fold again")
    assert {k: v for k, v in tree_digest(fold).items() if not k.startswith("training_log")} == \
        {k: v for k, v in before.items() if not k.startswith("training_log")}


@pytest.mark.bad_input
def test_a_second_training_of_a_fold_is_refused_and_a_dead_lock_does_not_block(guided, tmp_path):
    results = copied_results_with_sr_model(guided, tmp_path)
    fold = results / "Dataset617_PhantomPseudoHR" / f"{PAPER}__REHRSegPlans__3d_fullres" / "fold_all"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        (fold / name).unlink()
    env = {**guided["train_env"], "nnUNet_results": str(results)}
    args = ["617", "3d_fullres", "all", "-tr", PAPER, "-p", "REHRSegPlans", "-device", "cpu"]
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (fold / ".rehrseg_training.lock").write_text(str(owner.pid))
        before = tree_digest(fold)
        refused = run_script("nnUNetv2_train", args, env)
        assert_one_line_error(refused, f"is being trained by process {owner.pid}")
        assert tree_digest(fold) == before
    finally:
        owner.kill()
        owner.wait()
    trained = run_script("nnUNetv2_train", args, env)  # the owner is gone: its lock no longer blocks
    assert_ok(trained)
    assert (fold / "checkpoint_final.pth").is_file() and not (fold / ".rehrseg_training.lock").exists()


def test_rehrseg_predict_names_its_device_first(tmp_path, capsys):
    from rehrseg_nnunet.cli.predict import main

    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit):
        main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "no_model"),
              "-device", "cpu"])
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "rehrseg_predict: predicting on cpu"
    assert "rehrseg_predict: error:" in captured.err


# --- rehrseg_super_resolve ------------------------------------------------------------------------------------
def test_super_resolve_writes_the_hr_grid_and_skips_finished_cases(guided, tmp_path):
    model = str(guided["root"] / "sr_model_moved_away")
    out = tmp_path / "sr"
    first = run_script("rehrseg_super_resolve", ["-i", str(guided["lr_inputs"]), "-o", str(out), "-m", model,
                                                 "--save_uncertainty", "-device", "cpu"], guided["env"])
    assert_ok(first)
    for case in ("case000", "case001"):
        lr = sitk.ReadImage(str(guided["lr_inputs"] / f"{case}_0001.nii.gz"))
        hr_geometry_matches(lr, sitk.ReadImage(str(out / f"{case}_0001.nii.gz")))
        uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty" / f"{case}.nii.gz")))
        assert uncertainty.min() >= 0 and uncertainty.max() <= 1
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    again = run_script("rehrseg_super_resolve", ["-i", str(guided["lr_inputs"]), "-o", str(out), "-m", model,
                                                 "--save_uncertainty", "-device", "cpu"], guided["env"])
    assert_ok(again)
    assert "2 case(s) super-resolved into" in first.stdout and "already" not in first.stdout
    notes = [line for line in again.stdout.splitlines() if "super-resolved" in line]
    assert len(notes) == 1 and "0 case(s) super-resolved into" in notes[0], again.stdout  # one truthful message
    assert "2 of 2 case(s) were already super-resolved" in notes[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == stamps


@pytest.mark.bad_input
@pytest.mark.parametrize("foreign", ["slice_axis", "spacing"])
def test_super_resolve_refuses_foreign_geometry_with_one_line(guided, tmp_path, foreign):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for channel in (0, 1):
        image = sitk.ReadImage(str(guided["lr_inputs"] / f"case000_000{channel}.nii.gz"))
        if foreign == "slice_axis":  # thick axis x instead of z
            image = sitk.PermuteAxes(image, [2, 1, 0])
        else:  # 3 mm slices for a model of 4 mm slices
            spacing = list(image.GetSpacing())
            image.SetSpacing((spacing[0], spacing[1], 3.0))
        sitk.WriteImage(image, str(inputs / f"odd_000{channel}.nii.gz"))
    out = tmp_path / "sr"
    result = run_script("rehrseg_super_resolve", ["-i", str(inputs), "-o", str(out), "-m",
                                                  str(guided["root"] / "sr_model_moved_away"), "-device", "cpu"],
                        guided["env"])
    assert_one_line_error(result, "odd_0000.nii.gz")
    assert not out.exists()


# --- checkpoint hashes and prediction safety with the trained model (issue 36) --------------------------------
@pytest.mark.bad_input
@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_final_checkpoint_is_neither_predicted_from_nor_exported(guided, tmp_path, damage):
    results, final = installed_copy(guided, tmp_path)
    assert recorded_hash(str(final)) == file_sha256(str(final)), "the export carries the checkpoint's SHA-256"
    (flip_a_tensor_byte if damage == "flipped" else truncate)(str(final))
    env = {**guided["installed_env"], "nnUNet_results": str(results)}
    before = tree_digest(results)
    predicted = run_script("rehrseg_predict", ["-i", str(guided["lr_inputs"]), "-o", str(tmp_path / "out"),
                                               *predict_flags(GUIDED), "-device", "cpu"], env)
    assert_one_line_error(predicted, "rehrseg_predict: error:", str(final), "is damaged", "SHA-256")
    exported = run_script("rehrseg_export_model", ["-d", "617", "-o", str(tmp_path / "model.zip"), "-tr", GUIDED],
                          env)
    assert_one_line_error(exported, "rehrseg_export_model: error:", str(final), "is damaged", "not exported")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("model.zip*"))
    assert tree_digest(results) == before


@pytest.mark.bad_input
def test_continue_with_a_flipped_latest_checkpoint_resumes_from_the_verified_previous_one_or_stops(guided, tmp_path):
    results = copied_results_with_sr_model(guided, tmp_path)
    fold = results / "Dataset617_PhantomPseudoHR" / f"{PAPER}__REHRSegPlans__3d_fullres" / "fold_all"
    final = fold / "checkpoint_final.pth"
    good = final.read_bytes()
    for name in ("checkpoint_latest.pth", "checkpoint_previous.pth"):  # the last epoch's, with its record
        (fold / name).write_bytes(good)
        write_hash(str(fold / name), file_sha256(str(final)))
    for path in (final, fold / "checkpoint_final.pth.sha256"):
        path.unlink()
    flip_a_tensor_byte(str(fold / "checkpoint_latest.pth"))
    env = {**guided["train_env"], "nnUNet_results": str(results)}
    args = ["617", "3d_fullres", "all", "-tr", PAPER, "-p", "REHRSegPlans", "-device", "cpu", "--c"]
    resumed = run_script("nnUNetv2_train", args, env)
    assert_ok(resumed)
    assert "checkpoint_latest.pth is damaged (its SHA-256" in resumed.stdout
    assert f"resuming from {fold / 'checkpoint_previous.pth'} instead (verified)" in resumed.stdout
    # checkpoint_final.pth is written from the verified weights, not from the flipped ones
    written = torch.load(final, map_location="cpu", weights_only=False)["network_weights"]
    kept = torch.load(io.BytesIO(good), map_location="cpu", weights_only=False)["network_weights"]
    assert all(torch.equal(written[k], kept[k]) for k in kept)
    assert recorded_hash(str(final)) == file_sha256(str(final))
    # a flipped latest checkpoint and no verified earlier one: one line, nothing written
    (fold / "checkpoint_latest.pth").write_bytes(good)
    write_hash(str(fold / "checkpoint_latest.pth"), hashlib.sha256(good).hexdigest())
    flip_a_tensor_byte(str(fold / "checkpoint_latest.pth"))
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_previous.pth"):
        for path in (fold / name, fold / f"{name}.sha256"):
            path.unlink(missing_ok=True)
    before = {k: v for k, v in tree_digest(fold).items() if not k.startswith("training_log")}
    refused = run_script("nnUNetv2_train", args, env)
    assert_one_line_error(refused, "REHRSegTrainer: error:", "checkpoint_latest.pth is damaged", "SHA-256",
                          "train the fold again")
    assert {k: v for k, v in tree_digest(fold).items() if not k.startswith("training_log")} == before


@pytest.mark.bad_input
@pytest.mark.parametrize("program", ["rehrseg_predict", "nnUNetv2_predict"])
def test_a_nan_in_a_prediction_input_is_refused_naming_the_file(guided, tmp_path, program):
    inputs = tmp_path / "inputs"
    damaged = with_a_nan_voxel(str(guided["lr_inputs"]), str(inputs))
    result = run_script(program, ["-i", str(inputs), "-o", str(tmp_path / "out"), *predict_flags(GUIDED),
                                  "-device", "cpu"], guided["installed_env"])
    assert_one_line_error(result, f"{program}: error:", damaged, "contains NaN or Inf voxels")
    assert not (tmp_path / "out").exists()


@pytest.mark.bad_input
def test_two_predictions_into_one_folder_at_once_never_corrupt_it(guided, tmp_path):
    """Both finish, or the second is refused in one line; the folder ends complete either way."""
    out = tmp_path / "out"
    command = [console_script("rehrseg_predict"), "-i", str(guided["lr_inputs"]), "-o", str(out),
               *predict_flags(GUIDED), "-device", "cpu"]
    env = {**os.environ, **guided["installed_env"]}
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [subprocess.CompletedProcess(run.args, run.wait(600), *run.communicate()) for run in runs]
    assert any(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    for result in results:
        if result.returncode != 0:
            assert_one_line_error(result, "rehrseg_predict: error:", f"{out} is being predicted into by process")
    for case in ("case000", "case001"):
        assert (out / f"{case}.nii.gz").read_bytes() == (guided["root"] / "pred_hr" / f"{case}.nii.gz").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["case000.nii.gz", "case001.nii.gz", "dataset.json",
                                                     "plans.json", "predict_from_raw_data_args.json"]


@pytest.mark.bad_input
def test_a_killed_export_leaves_nothing_once_it_is_run_again(guided, tmp_path):
    zip_file = tmp_path / "rehrseg_617.zip"
    killed = tmp_path / f"rehrseg_617.zip.{dead_pid()}.partial"
    killed.write_bytes(guided["zip"].read_bytes()[:4000])
    result = run_script("rehrseg_export_model", ["-d", "617", "-o", str(zip_file), "-tr", GUIDED], guided["env"])
    assert_ok(result)
    assert f"removed 1 partial zip(s) that an interrupted export to {zip_file} left" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rehrseg_617.zip"]
    with zipfile.ZipFile(zip_file) as archive:
        records = [n for n in archive.namelist() if n.endswith(".sha256")]
        assert records == [f"Dataset617_PhantomPseudoHR/{GUIDED}__REHRSegPlans__3d_fullres/fold_all/"
                           "checkpoint_final.pth.sha256"]
        checkpoint = hashlib.sha256(archive.read(records[0][: -len(".sha256")])).hexdigest()
        assert archive.read(records[0]).decode().split()[0] == checkpoint
