"""Work split over several processes (or GPUs, or machines) with ``-num_parts N -part_id K``: two parts run side by
side into one folder give what one run gives, byte for byte.

``rehrseg_make_pseudohr``: a single run and two parts build the same pseudo-HR dataset (target id 619) below two
nnUNet_raw roots holding the same source. ``rehrseg_predict``: a single run and two parts into one output folder,
with an SR-guided model of the phantom pseudo-HR dataset (random weights, the SR model carried as training does:
what is tested is the split, not the model).
"""

import json
import os
import shutil
import subprocess
import time

import pytest
import torch
from conftest import assert_ok, console_script, copy_pseudohr, phantom_workspace, run_script, tree_digest

pytestmark = pytest.mark.slow

TARGET = "619"
PART_TIMEOUT = 600  # seconds per side-by-side pair: a hang fails the test instead of blocking CI


def run_parts(script: str, args: list[str], env: dict, num_parts: int = 2,
              check: bool = True) -> list[subprocess.CompletedProcess]:
    """``script args -num_parts N -part_id K`` for every K at once; each must finish within PART_TIMEOUT (and, with
    ``check``, exit 0)."""
    processes = [subprocess.Popen([console_script(script), *args, "-num_parts", str(num_parts), "-part_id", str(k)],
                                  env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for k in range(num_parts)]
    deadline, results = time.monotonic() + PART_TIMEOUT, []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"{script} parts did not finish within {PART_TIMEOUT} s")
    for result in results:
        if check:
            assert_ok(result)
    return results


def write_guided_model(env: dict, sr_model) -> str:
    """A REHRSegTrainer_hrStem model folder of the pseudo-HR dataset's REHRSegPlans: random weights, SR model
    carried (so that each part super-resolves its inputs too)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from rehrseg_nnunet.sr.carried import sr_model_payload
    from rehrseg_nnunet.training.variants import REHRSegTrainer_hrStem

    preprocessed = os.path.join(env["nnUNet_preprocessed"], "Dataset619_PhantomPseudoHR")
    folder = os.path.join(env["nnUNet_results"], "Dataset619_PhantomPseudoHR",
                          "REHRSegTrainer_hrStem__REHRSegPlans__3d_fullres")
    os.makedirs(os.path.join(folder, "fold_all"))
    shutil.copy(os.path.join(preprocessed, "REHRSegPlans.json"), os.path.join(folder, "plans.json"))
    shutil.copy(os.path.join(preprocessed, "dataset.json"), os.path.join(folder, "dataset.json"))
    with open(os.path.join(folder, "dataset.json")) as handle:
        contract = json.load(handle)["rehrseg"]
    manager = PlansManager(os.path.join(folder, "plans.json"))
    torch.manual_seed(0)
    network = REHRSegTrainer_hrStem.build_network_architecture(manager, manager.get_configuration("3d_fullres"), 2, 3,
                                                               True)
    with torch.no_grad():  # every weight random (some layers start at zero), so the labels vary over the image
        for parameter in network.parameters():
            parameter.normal_(0, 0.2)
    network.carried_sr.carry(sr_model_payload(str(sr_model), contract.get("sr_stage") or "1c",
                                              contract["sr_checkpoint_sha256"]))
    torch.save({"network_weights": network.state_dict(), "trainer_name": "REHRSegTrainer_hrStem",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": None},
               os.path.join(folder, "fold_all", "checkpoint_final.pth"))
    return folder


@pytest.fixture(scope="module")
def parts(tmp_path_factory, trained_sr_model, pseudohr_template):
    root = tmp_path_factory.mktemp("parts")
    workspace = phantom_workspace(root, trained_sr_model)
    env = workspace["env"]
    # the same source under a second nnUNet_raw, for the parts (the SR model is found in the same nnUNet_results)
    raw_parts = root / "raw_parts"
    shutil.copytree(workspace["raw"] / "Dataset502_Phantom", raw_parts / "Dataset502_Phantom")
    parts_env = {**env, "nnUNet_raw": str(raw_parts)}
    out = {"root": root, "env": env, "raw": workspace["raw"], "raw_parts": raw_parts}
    out["pseudohr_single"] = run_script("rehrseg_make_pseudohr", ["-d", "502", "-o", TARGET, "-device", "cpu"], env)
    assert_ok(out["pseudohr_single"])
    out["pseudohr_parts"] = run_parts("rehrseg_make_pseudohr", ["-d", "502", "-o", TARGET, "-device", "cpu"],
                                      parts_env)
    # a model to predict with: plans of the pseudo-HR dataset (the suite's, planned as a user plans it), random
    # weights
    copy_pseudohr(pseudohr_template, workspace, TARGET, raw=False)
    write_guided_model(env, workspace["sr_model"])
    inputs = workspace["raw"] / "Dataset502_Phantom" / "imagesTr"
    common = ["-i", str(inputs), "-d", TARGET, "-tr", "REHRSegTrainer_hrStem", "-f", "all", "-device", "cpu",
              "-npp", "1", "-nps", "1"]
    out["predict_single"] = run_script("rehrseg_predict", [*common, "-o", str(root / "single")], env)
    assert_ok(out["predict_single"])
    out["predict_parts"] = run_parts("rehrseg_predict", [*common, "-o", str(root / "parts")], env, check=False)
    return out


def test_pseudohr_parts_build_the_dataset_one_run_builds(parts):
    single = tree_digest(parts["raw"] / "Dataset619_PhantomPseudoHR")
    split = tree_digest(parts["raw_parts"] / "Dataset619_PhantomPseudoHR")
    assert any(name.startswith("imagesTr") for name in single) and any(name.startswith("qc") for name in single)
    assert sorted(split) == sorted(single)  # no file missing, no temporary left
    assert split == single, [name for name in single if split.get(name) != single[name]]
    # each part wrote one of the two cases
    written = sorted(result.stdout.split("rehrseg_make_pseudohr: ")[-1].split(" case(s)")[0]
                     for result in parts["pseudohr_parts"])
    assert written == ["1", "1"], [r.stdout[-500:] for r in parts["pseudohr_parts"]]


def test_prediction_parts_write_what_one_run_writes(parts):
    import SimpleITK as sitk

    for result in parts["predict_parts"]:
        assert_ok(result)
    single, split = tree_digest(parts["root"] / "single"), tree_digest(parts["root"] / "parts")
    segmentations = sorted(name for name in single if name.endswith(".nii.gz"))
    assert segmentations == ["case000.nii.gz", "case001.nii.gz"]
    assert sorted(split) == sorted(single)
    # the segmentations byte for byte (arrays and headers); the run's records too, except the arguments it records
    differing = sorted(name for name in single if split[name] != single[name])
    assert set(differing) <= {"predict_from_raw_data_args.json"}, differing
    for name in segmentations:  # not a trivial output: several labels on the HR grid
        image = sitk.ReadImage(str(parts["root"] / "parts" / name))
        assert len(set(sitk.GetArrayViewFromImage(image).ravel().tolist())) > 1
        lr = sitk.ReadImage(str(parts["raw"] / "Dataset502_Phantom" / "imagesTr" / name.replace(".nii.gz",
                                                                                             "_0000.nii.gz")))
        assert image.GetSize()[2] == 4 * lr.GetSize()[2]
    # each part predicted one of the two cases
    for result in parts["predict_parts"]:
        text = result.stdout + result.stderr
        assert "There are 1 cases that I would like to predict" in text, text[-2000:]
