"""Segmentation scores against a reference (``rehrseg_evaluate``): Dice and HD95 per label, on the reference grid."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from rehrseg_nnunet.dataset_io import read_grid, read_image
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.geometry import Grid


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


# --- segmentation scores (rehrseg_evaluate) ------------------------------------------------------------
# Arrays are numpy (z, y, x) as from sitk.GetArrayFromImage; spacings are given in that same order.
# HD95 is ~20 lines of scipy here: MedPy or MONAI would add a dependency for the same computation and
# neither scores empty masks the way we report them (finite worst case, see hd95).

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour (6-connectivity) outside it; the image border counts as outside."""
    structure = ndimage.generate_binary_structure(3, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between the surfaces of two boolean masks.

    Arrays are numpy (z, y, x) as from ``sitk.GetArrayFromImage``; ``spacing`` is in mm in that same
    order (``image.GetSpacing()`` reversed). A mask's surface is its voxels with a face neighbour
    (6-connectivity) outside it, the image border counting as outside (:func:`surface`). Distances are
    scipy's exact Euclidean distance transform of the other surface's complement with ``sampling=spacing``.
    The distances from every reference-surface voxel to the prediction surface and from every
    prediction-surface voxel to the reference surface are pooled and their 95th percentile taken with
    numpy's default linear interpolation (MedPy's ``hd95`` convention). Both masks empty: 0.0. Exactly
    one empty: the diagonal of the image extent in mm, ``sqrt(sum((shape_i * spacing_i) ** 2))`` (a finite
    worst case, as in the BraTS challenge, so that means over cases stay finite).
    """
    reference, prediction = reference.astype(bool), prediction.astype(bool)
    if not reference.any() and not prediction.any():
        return 0.0
    if not reference.any() or not prediction.any():
        return float(np.sqrt(np.sum((np.asarray(reference.shape) * np.asarray(spacing, dtype=float)) ** 2)))
    # distances between surfaces do not depend on voxels outside both masks: crop to their joint bounding
    # box plus one empty voxel (keeps the image border "outside") before the distance transforms
    box = ndimage.find_objects((reference | prediction).astype(np.uint8))[0]
    reference, prediction = np.pad(reference[box], 1), np.pad(prediction[box], 1)
    surface_reference, surface_prediction = surface(reference), surface(prediction)
    to_prediction = ndimage.distance_transform_edt(~surface_prediction, sampling=spacing)[surface_reference]
    to_reference = ndimage.distance_transform_edt(~surface_reference, sampling=spacing)[surface_prediction]
    return float(np.percentile(np.concatenate([to_prediction, to_reference]), 95))


def segmentation_scores(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                        labels: dict[str, int]) -> dict[str, dict[str, float]]:
    """Dice and HD95 of the whole foreground (label > 0; BraTS: whole tumour) and of every non-zero label.

    Empty masks follow :func:`dice` and :func:`hd95`: both empty -> Dice 1.0, HD95 0.0; exactly one empty ->
    Dice 0.0, HD95 = the image diagonal in mm.

    Args:
        reference, prediction: integer label maps on the same grid, numpy (z, y, x) order.
        spacing: voxel size in mm in the same (z, y, x) order (``image.GetSpacing()`` reversed).
        labels: name -> value; background (0) is skipped.
    Returns:
        ``{"foreground": {"dice", "hd95"}, name: {"dice", "hd95", "present"}, ...}``; ``present`` says whether
        the label occurs in the reference or the prediction (a label in neither scores Dice 1, HD95 0).
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {reference.shape} and prediction {prediction.shape} differ in shape.")
    scores = {"foreground": {"dice": dice(reference > 0, prediction > 0),
                             "hd95": hd95(reference > 0, prediction > 0, spacing)}}
    for name, value in labels.items():
        if value:
            a, b = reference == value, prediction == value
            scores[name] = {"dice": dice(a, b), "hd95": hd95(a, b, spacing), "present": bool(a.any() or b.any())}
    return scores


#: how close a prediction's grid must be to its reference's: spacing 1e-4 relative, origin 1e-3 mm, direction 1e-5
GRID_TOLERANCE = {"spacing_rtol": 1e-4, "origin_atol": 1e-3, "direction_atol": 1e-5}


def _label_array(image: sitk.Image) -> np.ndarray:
    """Label map as int64 (z, y, x); float label maps are rounded, not truncated."""
    array = sitk.GetArrayFromImage(image)
    return (np.rint(array) if np.issubdtype(array.dtype, np.floating) else array).astype(np.int64)


def _detect_ending(folder: str) -> str:
    for ending in IMAGE_ENDINGS:
        if any(f.endswith(ending) for f in os.listdir(folder)):
            return ending
    raise RehrsegInputError(f"{folder} holds no label files ({', '.join(IMAGE_ENDINGS)}); point -ref at a folder of "
                            f"reference segmentations.")


def _rounded(values: Sequence[float]) -> tuple:
    return tuple(round(float(v), 4) for v in values)


def evaluate_folders(reference_folder: str, prediction_folder: str, labels: dict[str, int] | None = None,
                     file_ending: str | None = None, resample_to_reference: bool = False) -> dict:
    """Score every reference case (nnU-Net naming: ``<case><file_ending>``) against its prediction.

    Scores are computed on the reference grid (an LR reference scores on the LR grid, an HR one on the HR
    grid), with the reference's spacing. Every prediction's grid (size, spacing to 1e-4 relative, origin to
    1e-3 mm, direction to 1e-5) is checked from the file headers before any scoring: one on another grid is
    an error unless ``resample_to_reference`` (nearest neighbour onto the reference grid, 0 outside).

    Per case and label: Dice and HD95 as in :func:`segmentation_scores` (a label in neither the reference
    nor the prediction scores Dice 1, HD95 0 and ``present`` False); ``labels_in_reference`` lists the
    labels that occur in the case's reference. Per-label mean and std (numpy, ddof=0) use only the cases
    where the label is present in the reference or the prediction (their number is ``mean[name]["cases"]``);
    the foreground uses every case.

    Args:
        reference_folder, prediction_folder: folders of label maps (any SimpleITK-readable format).
        labels: name -> value; value 0 is skipped. Default: the sorted non-zero values found in the
            references, named ``label_<v>`` (costs one extra read of every reference).
        file_ending: e.g. ``".nii.gz"``; default: the first of ``IMAGE_ENDINGS`` that a reference file has.
        resample_to_reference: resample predictions on another grid instead of refusing them.
    Returns:
        ``{"per_case": [{"case", "reference", "prediction", "labels_in_reference", "foreground": {...},
        name: {...}, ...}], "mean": {key: {"dice", "hd95", "cases"}}, "std": {key: {"dice", "hd95"}},
        "grid": {"size", "spacing"} of the first reference in SimpleITK's (x, y, z) order, "labels": {...}}``.
    Raises:
        RehrsegInputError: a missing folder or prediction, an unreadable file, a prediction on another grid.
    """
    from tqdm import tqdm

    file_ending, cases, paths = paired_files(reference_folder, prediction_folder, file_ending)
    # all grids from the headers first, so that a wrong grid fails at once (one line, before any progress bar)
    grids = {c: (read_grid(r), read_grid(p)) for c, (r, p) in paths.items()}
    other = [c for c, (r, p) in grids.items() if not p.matches(r, **GRID_TOLERANCE)]
    if other and not resample_to_reference:
        raise_other_grid(paths, grids, other)
    if labels is None:
        values: set[int] = set()
        for case in tqdm(cases, desc="rehrseg_evaluate: label values", unit="case"):
            values.update(int(v) for v in np.unique(_label_array(read_image(paths[case][0]))))
        labels = {f"label_{v}": v for v in sorted(values - {0})}
    names = [n for n, v in labels.items() if v]
    per_case = []
    for case in tqdm(cases, desc="rehrseg_evaluate", unit="case"):
        reference_path, prediction_path = paths[case]
        reference, prediction = read_image(reference_path), read_image(prediction_path)
        if case in other:
            prediction = sitk.Resample(prediction, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        reference_array = _label_array(reference)
        scores = segmentation_scores(reference_array, _label_array(prediction),
                                     list(reversed(reference.GetSpacing())), labels)
        in_reference = set(np.unique(reference_array).tolist())
        per_case.append({"case": case, "reference": reference_path, "prediction": prediction_path,
                         "resampled": case in other,
                         "labels_in_reference": [n for n in names if labels[n] in in_reference], **scores})
    first = grids[cases[0]][0]
    return {"per_case": per_case, **mean_and_std(per_case, names), "labels": dict(labels),
            "grid": {"size": [int(s) for s in first.size], "spacing": [float(s) for s in first.spacing]}}


def paired_files(reference_folder: str, prediction_folder: str, file_ending: str | None
                 ) -> tuple[str, list[str], dict[str, tuple[str, str]]]:
    """The reference cases and their predictions' paths; one line when a folder or a prediction is missing.

    Returns:
        (file ending, sorted case names, case -> (reference path, prediction path)).
    """
    for folder, flag in ((reference_folder, "-ref"), (prediction_folder, "-pred")):
        if not os.path.isdir(folder):
            raise RehrsegInputError(f"{folder} does not exist; pass an existing folder with {flag}.")
    file_ending = file_ending or _detect_ending(reference_folder)
    cases = sorted(f[: -len(file_ending)] for f in os.listdir(reference_folder) if f.endswith(file_ending))
    if not cases:
        raise RehrsegInputError(f"{reference_folder} holds no '*{file_ending}' files; check -ref and the file ending.")
    paths = {c: (os.path.join(reference_folder, c + file_ending), os.path.join(prediction_folder, c + file_ending))
             for c in cases}
    missing = [os.path.basename(p) for _, p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise RehrsegInputError(f"{prediction_folder} lacks the prediction(s) {', '.join(missing[:5])}"
                                f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''} of {len(cases)} "
                                f"reference case(s); predict every reference case (or remove those references) and "
                                f"run again.")
    return file_ending, cases, paths


def raise_other_grid(paths: dict[str, tuple[str, str]], grids: dict[str, tuple[Grid, Grid]],
                     other: list[str]) -> None:
    """One line naming the first prediction on another grid than its reference, how it differs, and the fix."""
    reference_grid, prediction_grid = grids[other[0]]
    more = f" (and {len(other) - 1} more: {', '.join(other[1:4])}{' …' if len(other) > 4 else ''})" \
        if len(other) > 1 else ""
    raise RehrsegInputError(
        f"{paths[other[0]][1]}{more} is on another grid than its reference (size {prediction_grid.size} vs "
        f"{reference_grid.size}, spacing {_rounded(prediction_grid.spacing)} vs {_rounded(reference_grid.spacing)}, "
        f"origin {_rounded(prediction_grid.origin)} vs {_rounded(reference_grid.origin)}); pass "
        f"--resample-to-reference to resample predictions onto the reference grid (nearest neighbour).")


def mean_and_std(per_case: list[dict], names: list[str]) -> dict[str, dict]:
    """Mean and std (ddof=0) of Dice and HD95 per key: over every case for the foreground, over the cases where
    the label is present (reference or prediction) for a label."""
    mean, std = {}, {}
    for key in ["foreground", *names]:
        rows = [c[key] for c in per_case if key == "foreground" or c[key]["present"]]
        if rows:
            mean[key] = {m: float(np.mean([r[m] for r in rows])) for m in ("dice", "hd95")}
            std[key] = {m: float(np.std([r[m] for r in rows])) for m in ("dice", "hd95")}
            mean[key]["cases"] = len(rows)
    return {"mean": mean, "std": std}


def format_table(summary: dict) -> str:
    """Fixed-width text of an :func:`evaluate_folders` summary.

    One row per case (foreground Dice and HD95 in mm, then the Dice of each label; ``-`` where the label is
    in neither the reference nor the prediction), then one ``mean ± std`` row per key (Dice, HD95 mm, the
    number of cases it averages: every case for the foreground, the cases where the label occurs in the
    reference or the prediction for a label).
    """
    names = [n for n, v in summary["labels"].items() if v]
    grid = summary["grid"]
    lines = [(f"grid of the references (first case): size {grid['size']}, spacing "
              f"{[round(s, 4) for s in grid['spacing']]} mm (x, y, z)"),
             f"{'case':20s} {'fg Dice':>8s} {'fg HD95':>8s} " + " ".join(f"{n[:12]:>12s}" for n in names)
             + ("  (label columns: Dice)" if names else "")]
    for row in summary["per_case"]:
        cells = " ".join(f"{row[n]['dice']:12.4f}" if row[n]["present"] else f"{'-':>12s}" for n in names)
        foreground = row["foreground"]
        lines.append(f"{row['case'][:20]:20s} {foreground['dice']:8.4f} {foreground['hd95']:8.2f} {cells}")
    lines.append("")
    lines.append(f"{'mean ± std':20s} {'Dice':>17s} {'HD95 mm':>20s} {'cases':>6s}")
    for key in ["foreground", *names]:
        if key not in summary["mean"]:
            lines.append(f"{key[:20]:20s} {'-':>17s} {'-':>20s} {0:6d}")
            continue
        m, s = summary["mean"][key], summary["std"][key]
        lines.append(f"{key[:20]:20s} {m['dice']:8.4f} ± {s['dice']:6.4f} {m['hd95']:10.2f} ± {s['hd95']:7.2f} "
                     f"{m['cases']:6d}")
    lines.append("(label rows average the cases where the label occurs in the reference or the prediction; "
                 "'-' = in neither)")
    return "\n".join(lines)
