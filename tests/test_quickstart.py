"""The README's main job (examples/quickstart.py) end to end, with a tiny SR and trainer schedule.

Same script, same commands and same embedded data as `bash examples/quickstart.sh`; the SR steps (5 per
stage) and the trainers' schedules are shortened (the `*_cpuSmoke` variants of the same trainers: 2 + 2
epochs of 4 iterations against 4), so this checks that every stage runs and that its outputs are where and
what they should be, not quality.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("nilearn", reason="nilearn (the example data's package) is not installed")
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs_end_to_end(tmp_path):
    work = tmp_path / "demo"
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        env.pop(variable, None)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py"), "--work", str(work),
                             "--sr-steps", "5", "5", "5", "-tr", "REHRSegTrainer_cpuSmoke",
                             "--lr-trainers", "nnUNetTrainer_cpuSmoke", "nnUNetTrainer_cpuSmoke4epochs"],
                            env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    for index in range(1, 10):
        assert f"[{index}/9]" in result.stdout
    for row in ("ensemble: REHRSeg + SR nnU-Net", "REHRSeg (REHRSegTrainer_cpuSmoke, fine-tuned)",
                "SR + nnU-Net (nnUNetTrainer_cpuSmoke4epochs)",
                "nnU-Net 4 mm (nnUNetTrainer_cpuSmoke4epochs) + shape-based",
                "thick-slice labels upsampled (reference)"):
        assert row in result.stdout

    # REHRSeg was fine-tuned from the thick-slice nnU-Net, at the fine-tuning rate
    results = work / "nnUNet_results"
    log = "".join(p.read_text() for p in (results / "Dataset991_MNIThickPseudoHR" /
                                          "REHRSegTrainer_cpuSmoke__REHRSegPlans__3d_fullres" /
                                          "fold_all").glob("training_log_*.txt"))
    lr_checkpoint = results / "Dataset990_MNIThick" / "nnUNetTrainer_cpuSmoke__nnUNetPlansCPU__3d_fullres" / \
        "fold_all" / "checkpoint_final.pth"
    assert f"fine-tuning from {lr_checkpoint}: initial lr 0.001" in log
    assert re.search(r"Current learning rate: 0\.001\s*$", log, re.MULTILINE)
    baseline = results / "Dataset990_MNIThick" / "nnUNetTrainer_cpuSmoke4epochs__nnUNetPlansCPU__3d_fullres" / \
        "fold_all"
    assert (baseline / "checkpoint_final.pth").is_file()
    # SR + stock nnU-Net: trained on the pseudo-HR dataset with the HR CPU plans (patch 32 x 64 x 64, 8 -> 64
    # features)
    sr_nnunet = results / "Dataset991_MNIThickPseudoHR" / "nnUNetTrainer_cpuSmoke4epochs__nnUNetPlansCPU__3d_fullres"
    assert (sr_nnunet / "fold_all" / "checkpoint_final.pth").is_file()
    plans = json.loads((sr_nnunet / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 64, 64]
    features = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"]
    assert features[0] == 8 and max(features) == 64

    # the HR segmentation of the held-out 4 mm input: 4x the slices at 1 mm, origin 1.5 mm below the LR one; the
    # comparison's shape-based upsampling lands on the same grid
    lr = sitk.ReadImage(str(work / "test" / "images" / "mnitest_0000.nii.gz"))
    for folder in ("predictions_ensemble", "predictions_hr", "predictions_sr_nnunet",
                   "predictions_lr_nnunet_shape_based_1mm"):
        hr = sitk.ReadImage(str(work / folder / "mnitest.nii.gz"))
        assert hr.GetSize() == (lr.GetSize()[0], lr.GetSize()[1], 4 * lr.GetSize()[2])
        np.testing.assert_allclose(hr.GetSpacing(), (1.0, 1.0, 1.0), atol=1e-6)
        np.testing.assert_allclose(hr.GetOrigin(), np.asarray(lr.GetOrigin()) - (0.0, 0.0, 1.5), atol=1e-4)
        assert set(np.unique(sitk.GetArrayFromImage(hr))) <= {0, 1, 2}
        summary = json.loads((work / folder / "summary_rehrseg.json").read_text())
        assert summary["grid"]["spacing"] == pytest.approx([1.0, 1.0, 1.0])
        assert 0.0 <= summary["mean"]["foreground"]["dice"] <= 1.0
    # the ensemble is the argmax of the two members' averaged HR probabilities
    members = [np.load(work / folder / "mnitest.npz")["probabilities"]
               for folder in ("predictions_hr", "predictions_sr_nnunet")]
    assert members[0].shape == members[1].shape and members[0].shape[1:] == hr.GetSize()[::-1]
    ensemble = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "predictions_ensemble" / "mnitest.nii.gz")))
    np.testing.assert_array_equal(ensemble, np.argmax((members[0] + members[1]) / 2, axis=0))
    thick = sitk.ReadImage(str(work / "predictions_lr_nnunet" / "mnitest.nii.gz"))
    assert thick.GetSize() == lr.GetSize() and thick.GetSpacing() == pytest.approx(lr.GetSpacing())
    qc = work / "nnUNet_raw" / "Dataset991_MNIThickPseudoHR" / "qc"
    assert sorted(p.name for p in qc.iterdir()) == ["mni000.png", "mni001.png"]
