"""Dice / HD95 on hand-made masks with values computed by hand, and the rehrseg_evaluate console script."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.evaluation import (
    dice,
    evaluate_folders,
    format_table,
    hd95,
    segmentation_scores,
    surface,
)


def rehrseg_evaluate(*args: str) -> subprocess.CompletedProcess:
    """The installed console script (next to this interpreter)."""
    script = os.path.join(os.path.dirname(sys.executable), "rehrseg_evaluate")
    return subprocess.run([script, *map(str, args)], check=False, capture_output=True, text=True, timeout=300)


# --- hd95 / dice on hand-made masks ------------------------------------------------------------------------
def test_surface_is_6_connected_and_the_image_border_is_outside():
    # a 3D cross (centre + its 6 face neighbours): the centre has all 6 face neighbours inside, so only the
    # 6 arms are surface (with 26-connectivity the centre would be surface too, its diagonals being outside)
    cross = np.zeros((3, 3, 3), bool)
    cross[1, 1, :] = cross[1, :, 1] = cross[:, 1, 1] = True
    expected = cross.copy()
    expected[1, 1, 1] = False
    assert np.array_equal(surface(cross), expected)
    # a mask filling the whole 3x3x3 image: all but the centre touch the border, which counts as outside
    full = np.ones((3, 3, 3), bool)
    assert surface(full).sum() == 26 and not surface(full)[1, 1, 1]


def test_hd95_of_two_voxels_is_their_distance_in_mm():
    a, b = np.zeros((6, 3, 3), bool), np.zeros((6, 3, 3), bool)
    a[1, 1, 1] = b[4, 1, 1] = True
    # each voxel is its own surface; the only distances (both directions) are 3 voxels along z at 2 mm
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95(a, a, (2.0, 1.0, 1.0)) == 0.0


def test_hd95_of_a_cube_shifted_along_x():
    # 3x3x3 cube at x = 1..3 and the same cube at x = 2..4, spacing (z, y, x) = (1, 1, 0.5) mm.
    # Each cube's surface is its 26 voxels minus the centre. Reference surface -> prediction surface:
    #   x = 1 face (9 voxels): nearest prediction surface is its x = 2 face, 1 voxel along x: 0.5 mm
    #   x = 2 ring (8): on the prediction's x = 2 face: 0
    #   x = 3 face: 8 ring voxels lie on the prediction's x = 3 ring: 0; the face centre is 0.5 mm from the
    #   prediction's x = 2 or x = 4 face centre (its x = 3 ring is 1 mm away along y or z)
    # -> 10 x 0.5 and 16 x 0; by symmetry the same from the prediction side. Pooled: 32 zeros then 20 x 0.5;
    # the 95th percentile sits at position 0.95 * 51 = 48.45, inside the 0.5 block: 0.5 mm.
    a, b = np.zeros((5, 5, 6), bool), np.zeros((5, 5, 6), bool)
    a[1:4, 1:4, 1:4] = True
    b[1:4, 1:4, 2:5] = True
    assert hd95(a, b, (1.0, 1.0, 0.5)) == pytest.approx(0.5)
    assert hd95(b, a, (1.0, 1.0, 0.5)) == pytest.approx(0.5)
    # 2 mm along x: the 9 x = 1 face voxels are 2 mm away; the x = 3 face centre is now nearer the prediction's
    # x = 3 ring (1 mm along y) than its faces (2 mm). Pooled: 32 x 0, 2 x 1, 18 x 2; position 48.45 -> 2.0 mm
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(2.0)
    # x taken as the first axis instead would give 1 mm steps along x: the spacing order matters
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(1.0)


def test_hd95_of_parallel_plates_uses_the_anisotropic_spacing():
    # two one-voxel-thick plates perpendicular to x, 4 voxels apart: every surface voxel of either
    # plate lies 4 x 0.5 mm from the other plate, so all pooled distances (and their 95th percentile) are 2 mm
    a, b = np.zeros((4, 4, 8), bool), np.zeros((4, 4, 8), bool)
    a[:, :, 1] = True
    b[:, :, 5] = True
    assert hd95(a, b, (1.0, 1.0, 0.5)) == pytest.approx(2.0)
    assert hd95(a, b, (0.5, 1.0, 3.0)) == pytest.approx(12.0)


def test_dice_of_hand_made_masks():
    a, b = np.zeros(8, bool), np.zeros(8, bool)
    a[0:4] = True
    b[2:6] = True
    assert dice(a, b) == pytest.approx(0.5)  # 2 * 2 / (4 + 4)
    b[3] = False
    assert dice(a, b) == pytest.approx(2 / 7)  # 2 * 1 / (4 + 3)


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
    # pooled and sorted [0, 0, 1], 95th percentile at position 1.9 -> 0.9 (the larger of the two directed
    # 95th percentiles would be 0.95: this checks the pooling)
    assert scores["a"]["dice"] == pytest.approx(2 / 3)
    assert scores["a"]["hd95"] == pytest.approx(0.9)
    # label 2: reference {2, 3}, prediction {1, 2, 3}: Dice 4/5; distances [0, 0] + [1, 0, 0] -> position 3.8 -> 0.8
    assert scores["b"]["dice"] == pytest.approx(0.8)
    assert scores["b"]["hd95"] == pytest.approx(0.8)
    assert scores["a"]["present"] and scores["b"]["present"]
    assert scores["c"] == {"dice": 1.0, "hd95": 0.0, "present": False}  # in neither: the empty-mask rule
    assert "background" not in scores


# --- evaluate_folders and the console script on tiny NIfTI files ---------------------------------------------
SPACING = (0.5, 0.8, 2.0)  # x, y, z as SimpleITK gives it; (z, y, x) = (2.0, 0.8, 0.5)
ORIGIN = (10.0, -5.0, 3.0)
# extent 7 x 0.5, 6 x 0.8, 5 x 2 mm: diagonal sqrt(12.25 + 23.04 + 100) = sqrt(135.29) = 11.631...
DIAGONAL = math.sqrt((7 * 0.5) ** 2 + (6 * 0.8) ** 2 + (5 * 2.0) ** 2)
LABELS = {"background": 0, "core": 1, "rim": 2}


def write_label(path, array, spacing=SPACING, origin=ORIGIN):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def core_and_rim() -> np.ndarray:
    """(z, y, x) = (5, 6, 7): core (1) = 2 x 3 x 4 = 24 voxels, rim (2) = a 2 x 2 patch on top of it at z = 3."""
    label = np.zeros((5, 6, 7))
    label[1:3, 1:4, 1:5] = 1
    label[3:4, 2:4, 2:4] = 2
    return label


@pytest.fixture
def folders(tmp_path):
    """'a' predicted exactly; 'b' with the rim missed; 'c' without a rim in reference or prediction."""
    reference, prediction = tmp_path / "ref", tmp_path / "pred"
    reference.mkdir()
    prediction.mkdir()
    label = core_and_rim()
    write_label(reference / "a.nii.gz", label)
    write_label(prediction / "a.nii.gz", label)
    write_label(reference / "b.nii.gz", label)
    write_label(prediction / "b.nii.gz", np.where(label == 2, 0, label))
    write_label(reference / "c.nii.gz", np.where(label == 2, 0, label))
    write_label(prediction / "c.nii.gz", np.where(label == 2, 0, label))
    return reference, prediction


# Case b, foreground: reference = core + rim (28 voxels), prediction = core (24): Dice 2 * 24 / 52 = 12/13.
# HD95: the reference surface is the core minus its 2 interior voxels (z=2, y=2, x=2..3, covered by the rim)
# plus the 4 rim voxels = 26; the prediction surface is all 24 core voxels. ref->pred: 22 x 0 and the 4 rim
# voxels 1 slice (2.0 mm) above the core; pred->ref: 22 x 0 and the 2 covered voxels 0.5 mm (one x step)
# from the reference surface. Pooled 50 values: 44 x 0, 2 x 0.5, 4 x 2.0; position 0.95 * 49 = 46.55 lies
# among the 2.0s: HD95 = 2.0 mm.
B_FOREGROUND = {"dice": 12 / 13, "hd95": 2.0}


def test_evaluate_folders_hand_values(folders):
    reference, prediction = folders
    summary = evaluate_folders(str(reference), str(prediction), {**LABELS, "edema": 3})
    assert set(summary) == {"per_case", "mean", "std", "grid", "labels"}
    by_case = {row["case"]: row for row in summary["per_case"]}
    assert list(by_case) == ["a", "b", "c"]
    assert by_case["a"]["rim"] == {"dice": 1.0, "hd95": 0.0, "present": True}
    assert by_case["b"]["rim"]["dice"] == 0.0
    assert by_case["b"]["rim"]["hd95"] == pytest.approx(DIAGONAL)  # prediction empty: the image diagonal
    assert by_case["b"]["core"] == {"dice": 1.0, "hd95": 0.0, "present": True}
    assert by_case["b"]["foreground"]["dice"] == pytest.approx(B_FOREGROUND["dice"])
    assert by_case["b"]["foreground"]["hd95"] == pytest.approx(B_FOREGROUND["hd95"])
    assert by_case["c"]["rim"] == {"dice": 1.0, "hd95": 0.0, "present": False}
    assert [by_case[c]["labels_in_reference"] for c in "abc"] == [["core", "rim"], ["core", "rim"], ["core"]]
    # rim: mean over a and b only (c has no rim anywhere): Dice (1 + 0) / 2, std 0.5; HD95 (0 + diagonal) / 2
    # (over all three cases the Dice mean would be 2/3)
    assert summary["mean"]["rim"] == pytest.approx({"dice": 0.5, "hd95": DIAGONAL / 2, "cases": 2})
    assert summary["std"]["rim"] == pytest.approx({"dice": 0.5, "hd95": DIAGONAL / 2})
    assert summary["mean"]["core"] == {"dice": 1.0, "hd95": 0.0, "cases": 3}
    # foreground: every case; Dice (1 + 12/13 + 1) / 3, HD95 (0 + 2 + 0) / 3
    assert summary["mean"]["foreground"] == pytest.approx({"dice": (2 + 12 / 13) / 3, "hd95": 2 / 3, "cases": 3})
    assert summary["std"]["foreground"]["hd95"] == pytest.approx(np.std([0.0, 2.0, 0.0]))
    assert "edema" not in summary["mean"]  # in no case
    assert summary["grid"]["size"] == [7, 6, 5]  # SimpleITK (x, y, z)
    assert summary["grid"]["spacing"] == pytest.approx(SPACING)  # NIfTI stores float32
    table = format_table(summary)
    assert "rim" in table and "edema" in table and "mean ± std" in table


def test_evaluate_folders_default_labels_and_origin_check(folders, tmp_path):
    reference, prediction = folders
    summary = evaluate_folders(str(reference), str(prediction))
    assert summary["labels"] == {"label_1": 1, "label_2": 2}  # the non-zero values of the references
    assert summary["mean"]["label_2"]["dice"] == pytest.approx(0.5)
    # same size and spacing but an origin 1 mm off: another grid
    write_label(prediction / "c.nii.gz", np.where(core_and_rim() == 2, 0, core_and_rim()),
                origin=(ORIGIN[0] + 1.0, ORIGIN[1], ORIGIN[2]))
    with pytest.raises(RehrsegInputError, match=r"c\.nii\.gz.*origin.*--resample-to-reference"):
        evaluate_folders(str(reference), str(prediction))


def test_cli_writes_json_and_table(folders):
    reference, prediction = folders
    result = rehrseg_evaluate("-ref", reference, "-pred", prediction, "-l", "1", "2")
    assert result.returncode == 0, result.stderr
    output = prediction / "summary_rehrseg.json"
    summary = json.loads(output.read_text())
    assert set(summary) == {"per_case", "mean", "std", "grid", "labels"}
    assert summary["labels"] == {"label_1": 1, "label_2": 2}
    assert summary["mean"]["label_2"]["dice"] == pytest.approx(0.5)
    assert summary["mean"]["foreground"]["hd95"] == pytest.approx(2 / 3)
    assert not os.path.exists(str(output) + ".tmp")
    assert "mean ± std" in result.stdout and "label_2" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == f"summary: {output}"


def test_cli_takes_labels_and_ending_from_dataset_json(folders, tmp_path):
    reference, prediction = folders
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {**LABELS, "edema": 3}, "file_ending": ".nii.gz"}))
    output = tmp_path / "out" / "summary.json"
    result = rehrseg_evaluate("-ref", reference, "-pred", prediction, "-djfile", dataset_json, "-o", output)
    assert result.returncode == 0, result.stderr
    summary = json.loads(output.read_text())
    assert summary["labels"] == {**LABELS, "edema": 3}
    assert summary["mean"]["rim"]["cases"] == 2 and "edema" not in summary["mean"]
    # -l must name labels of the dataset.json
    refused = rehrseg_evaluate("-ref", reference, "-pred", prediction, "-djfile", dataset_json, "-l", "4")
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "-l 4" in refused.stderr


@pytest.mark.bad_input
def test_cli_refuses_another_grid_then_resamples(folders, tmp_path):
    reference, prediction = folders
    # one extra (empty) slice below, the origin moved down by one slice (2 mm): the same physical voxels, so
    # nearest-neighbour resampling onto the reference grid gives back the exact reference labels
    write_label(prediction / "a.nii.gz", np.concatenate([np.zeros((1, 6, 7)), core_and_rim()]),
                origin=(ORIGIN[0], ORIGIN[1], ORIGIN[2] - 2.0))
    output = tmp_path / "summary.json"
    refused = rehrseg_evaluate("-ref", reference, "-pred", prediction, "-o", output)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr  # no traceback, no progress bar
    assert "a.nii.gz" in lines[0] and "--resample-to-reference" in lines[0]
    assert "(7, 6, 6) vs (7, 6, 5)" in lines[0]
    assert not output.exists()
    accepted = rehrseg_evaluate("-ref", reference, "-pred", prediction, "-o", output, "--resample-to-reference")
    assert accepted.returncode == 0, accepted.stderr
    rows = {row["case"]: row for row in json.loads(output.read_text())["per_case"]}
    assert rows["a"]["resampled"] and not rows["b"]["resampled"]
    assert rows["a"]["foreground"] == {"dice": 1.0, "hd95": 0.0}
    assert rows["a"]["label_2"] == {"dice": 1.0, "hd95": 0.0, "present": True}
    assert rows["b"]["foreground"] == pytest.approx(B_FOREGROUND)


@pytest.mark.bad_input
def test_cli_names_a_missing_prediction(folders):
    reference, prediction = folders
    os.remove(prediction / "b.nii.gz")
    result = rehrseg_evaluate("-ref", reference, "-pred", prediction)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "b.nii.gz" in lines[0] and "a.nii.gz" not in lines[0]
    assert not (prediction / "summary_rehrseg.json").exists()


@pytest.mark.bad_input
def test_cli_refuses_a_truncated_prediction(folders):
    """SimpleITK reads a truncated .nii.gz as zero-filled; rehrseg_evaluate must not score it."""
    reference, prediction = folders
    big = np.zeros((40, 64, 64), dtype=np.uint8)
    big[5:35, 10:50, 10:50] = 1
    write_label(reference / "b.nii.gz", big)
    write_label(prediction / "b.nii.gz", big)
    data = (prediction / "b.nii.gz").read_bytes()
    (prediction / "b.nii.gz").write_bytes(data[: len(data) // 2])
    result = rehrseg_evaluate("-ref", reference, "-pred", prediction)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]  # after the progress bar
    assert "Traceback" not in result.stderr and "b.nii.gz" in last and "truncated" in last, last
    assert not (prediction / "summary_rehrseg.json").exists()


def test_rehrseg_evaluate_does_not_import_scikit_image():
    # the SR image-quality metrics (SSIM from scikit-image) live in rehrseg_nnunet.image_quality
    code = ("import sys; import rehrseg_nnunet.cli.evaluate, rehrseg_nnunet.evaluation; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'skimage'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
