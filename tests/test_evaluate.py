"""Dice / HD95 on hand-made masks with values computed by hand, and the rehrseg_evaluate console script."""

import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_script
from rehrseg_nnunet.evaluation import dice, evaluate_folders, hd95, segmentation_scores


def test_hd95_of_two_voxels_is_their_distance_in_mm():
    a, b = np.zeros((6, 3, 3), bool), np.zeros((6, 3, 3), bool)
    a[1, 1, 1] = b[4, 1, 1] = True
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)  # 3 voxels along z at 2 mm
    assert hd95(a, a, (2.0, 1.0, 1.0)) == 0.0


def test_hd95_of_parallel_plates_uses_the_anisotropic_spacing():
    # two one-voxel-thick plates perpendicular to x, 4 voxels apart: every surface voxel of either
    # plate lies 4 x 0.5 mm from the other plate, so all pooled distances (and their 95th percentile) are 2 mm
    a, b = np.zeros((4, 4, 8), bool), np.zeros((4, 4, 8), bool)
    a[:, :, 1] = True
    b[:, :, 5] = True
    assert hd95(a, b, (1.0, 1.0, 0.5)) == pytest.approx(2.0)


def test_dice_of_hand_made_masks():
    a, b = np.zeros(8, bool), np.zeros(8, bool)
    a[0:4] = True
    b[2:6] = True
    assert dice(a, b) == pytest.approx(0.5)  # 2 * 2 / (4 + 4)


def test_empty_masks():
    empty, full = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    full[1, 1, 1] = True
    spacing = (2.0, 1.0, 0.5)  # extent 8 x 5 x 3 mm: diagonal sqrt(64 + 25 + 9) = sqrt(98)
    assert (dice(empty, empty), hd95(empty, empty, spacing)) == (1.0, 0.0)
    assert dice(empty, full) == 0.0
    assert hd95(empty, full, spacing) == pytest.approx(math.sqrt(98))
    assert hd95(full, empty, spacing) == pytest.approx(math.sqrt(98))


def test_segmentation_scores_per_label_and_foreground():
    reference = np.array([1, 1, 2, 2, 0, 0, 0, 0], np.int64).reshape(1, 1, 8)
    prediction = np.array([1, 2, 2, 2, 0, 0, 0, 0], np.int64).reshape(1, 1, 8)
    scores = segmentation_scores(reference, prediction, (1.0, 1.0, 1.0), {"background": 0, "a": 1, "b": 2, "c": 3})
    assert scores["foreground"] == {"dice": 1.0, "hd95": 0.0}  # voxels 0-3 in both
    # label 1: reference {0, 1}, prediction {0}: Dice 2/3; distances ref->pred 0, 1 and pred->ref 0:
    # sorted [0, 0, 1], 95th percentile at position 1.9 -> 0.9
    assert scores["a"]["dice"] == pytest.approx(2 / 3)
    assert scores["a"]["hd95"] == pytest.approx(0.9)
    # label 2: reference {2, 3}, prediction {1, 2, 3}: Dice 4/5; distances [0, 0] + [1, 0, 0] -> position 3.8 -> 0.8
    assert scores["b"]["dice"] == pytest.approx(0.8)
    assert scores["b"]["hd95"] == pytest.approx(0.8)
    assert scores["c"] == {"dice": 1.0, "hd95": 0.0, "present": False}
    assert "background" not in scores


SPACING = (0.5, 0.8, 2.0)  # x, y, z


def write_label(path, array, spacing=SPACING, origin=(10.0, -5.0, 3.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def folders(tmp_path):
    """Two cases: 'a' predicted exactly; 'b' with label 2 missed (prediction has label 1 only)."""
    reference, prediction = tmp_path / "ref", tmp_path / "pred"
    reference.mkdir()
    prediction.mkdir()
    label = np.zeros((5, 6, 7))
    label[1:3, 1:4, 1:5] = 1
    label[3:4, 2:4, 2:4] = 2
    write_label(reference / "a.nii.gz", label)
    write_label(prediction / "a.nii.gz", label)
    write_label(reference / "b.nii.gz", label)
    write_label(prediction / "b.nii.gz", np.where(label == 2, 0, label))
    return reference, prediction, label


def test_evaluate_folders_hand_values(folders):
    reference, prediction, label = folders
    summary = evaluate_folders(str(reference), str(prediction), {"background": 0, "core": 1, "rim": 2})
    diagonal = math.sqrt((7 * 0.5) ** 2 + (6 * 0.8) ** 2 + (5 * 2.0) ** 2)
    by_case = {row["case"]: row for row in summary["per_case"]}
    assert by_case["a"]["rim"] == {"dice": 1.0, "hd95": 0.0, "present": True}
    assert by_case["b"]["rim"]["dice"] == 0.0
    assert by_case["b"]["rim"]["hd95"] == pytest.approx(diagonal)
    assert by_case["b"]["core"]["dice"] == 1.0
    n1, n2 = int((label == 1).sum()), int((label == 2).sum())
    assert by_case["b"]["foreground"]["dice"] == pytest.approx(2 * n1 / (2 * n1 + n2))
    assert summary["mean"]["rim"]["dice"] == pytest.approx(0.5)
    assert summary["std"]["rim"]["dice"] == pytest.approx(0.5)
    assert summary["mean"]["rim"]["hd95"] == pytest.approx(diagonal / 2)
    assert summary["grid"]["size"] == [7, 6, 5]
    assert summary["grid"]["spacing"] == pytest.approx(SPACING)  # NIfTI stores float32


def test_cli_writes_json_and_table(folders, tmp_path):
    reference, prediction, _ = folders
    result = run_script("rehrseg_evaluate", ["-ref", str(reference), "-pred", str(prediction), "-l", "1", "2"], {})
    assert result.returncode == 0, result.stderr
    summary = json.loads((prediction / "summary_rehrseg.json").read_text())
    assert set(summary) == {"per_case", "mean", "std", "grid", "labels"}
    assert summary["labels"] == {"label_1": 1, "label_2": 2}
    assert summary["mean"]["label_2"]["dice"] == pytest.approx(0.5)
    assert "mean ± std" in result.stdout.replace("Dice mean ± std", "mean ± std")
    assert "label_2" in result.stdout


def test_cli_refuses_another_grid_then_resamples(folders, tmp_path):
    reference, prediction, label = folders
    # one extra slice along z on the same origin and spacing: same voxels where the grids overlap
    write_label(prediction / "a.nii.gz", np.concatenate([label, np.zeros((1, 6, 7))]))
    output = tmp_path / "summary.json"
    refused = run_script("rehrseg_evaluate", ["-ref", str(reference), "-pred", str(prediction), "-o", str(output)], {})
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "a.nii.gz" in line and "--resample-to-reference" in line
    assert not output.exists()
    accepted = run_script("rehrseg_evaluate", ["-ref", str(reference), "-pred", str(prediction), "-o", str(output),
                                               "--resample-to-reference"], {})
    assert accepted.returncode == 0, accepted.stderr
    rows = {row["case"]: row for row in json.loads(output.read_text())["per_case"]}
    assert rows["a"]["foreground"] == {"dice": 1.0, "hd95": 0.0}


def test_cli_names_a_missing_prediction(folders):
    reference, prediction, _ = folders
    os.remove(prediction / "b.nii.gz")
    result = run_script("rehrseg_evaluate", ["-ref", str(reference), "-pred", str(prediction)], {})
    assert result.returncode == 2
    assert "b.nii.gz" in result.stderr.strip().splitlines()[-1]
    assert not (prediction / "summary_rehrseg.json").exists()
