"""Scores of SR and segmentation outputs against a reference: image quality, label overlap, HD95."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.metrics import structural_similarity

from rehrseg_nnunet.errors import RehrsegInputError


def psnr(truth: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB) inside ``mask``; the peak is the truth's intensity range inside the mask."""
    data_range = float(truth[mask].max() - truth[mask].min())
    mse = float(np.mean((truth[mask].astype(np.float64) - estimate[mask]) ** 2))
    return float(10 * np.log10(data_range ** 2 / mse))


def ssim(truth: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM (scikit-image, 3D, 7-voxel window) over the voxels inside ``mask``."""
    data_range = float(truth[mask].max() - truth[mask].min())
    _, full = structural_similarity(truth.astype(np.float32), estimate.astype(np.float32), data_range=data_range,
                                    full=True)
    return float(full[mask].mean())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def label_dice(truth: np.ndarray, estimate: np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """Dice of the whole foreground (label > 0) and of each label present in the truth."""
    scores = {"foreground": dice(truth > 0, estimate > 0)}
    for name, value in labels.items():
        if value and (truth == value).any():
            scores[name] = dice(truth == value, estimate == value)
    return scores


def resample_like(image: sitk.Image, reference: sitk.Image, interpolator: int = sitk.sitkBSpline) -> np.ndarray:
    """``image`` resampled onto ``reference``'s grid (identity transform), as a (z, y, x) array."""
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0))


def linear_label_interpolation(label: sitk.Image, reference: sitk.Image, values: Sequence[int]) -> np.ndarray:
    """Label map resampled by linear interpolation of its one-hot channels, then argmax."""
    array = sitk.GetArrayFromImage(label)
    probabilities = []
    for value in values:
        channel = sitk.GetImageFromArray((array == value).astype(np.float32))
        channel.CopyInformation(label)
        probabilities.append(resample_like(channel, reference, sitk.sitkLinear))
    return np.asarray(values)[np.argmax(probabilities, axis=0)]


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

    The distances from every reference-surface voxel to the prediction surface and from every
    prediction-surface voxel to the reference surface are pooled (MedPy's convention). Both masks
    empty: 0.0. Exactly one empty: the diagonal of the image extent in mm (a finite worst case, as in
    the BraTS challenge, so that means over cases stay finite).
    """
    reference, prediction = reference.astype(bool), prediction.astype(bool)
    if not reference.any() and not prediction.any():
        return 0.0
    if not reference.any() or not prediction.any():
        return float(np.sqrt(np.sum((np.asarray(reference.shape) * np.asarray(spacing, dtype=float)) ** 2)))
    # distances between surfaces do not depend on voxels outside both masks: crop to their joint bounding
    # box plus one empty voxel (keeps the image border "outside") before the distance transforms
    corners = np.argwhere(reference | prediction)
    box = tuple(slice(low, high + 1) for low, high in zip(corners.min(0), corners.max(0)))
    reference, prediction = np.pad(reference[box], 1), np.pad(prediction[box], 1)
    surface_reference, surface_prediction = surface(reference), surface(prediction)
    to_prediction = ndimage.distance_transform_edt(~surface_prediction, sampling=spacing)[surface_reference]
    to_reference = ndimage.distance_transform_edt(~surface_reference, sampling=spacing)[surface_prediction]
    return float(np.percentile(np.concatenate([to_prediction, to_reference]), 95))


def segmentation_scores(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                        labels: dict[str, int]) -> dict[str, dict[str, float]]:
    """Dice and HD95 of the whole foreground (label > 0) and of every non-zero label.

    Args:
        reference, prediction: label maps on the same grid, (z, y, x).
        spacing: voxel size in mm, (z, y, x).
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


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4, atol=0)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def _detect_ending(folder: str) -> str:
    for ending in IMAGE_ENDINGS:
        if any(f.endswith(ending) for f in os.listdir(folder)):
            return ending
    raise RehrsegInputError(f"{folder} holds no label files ({', '.join(IMAGE_ENDINGS)}); point -ref at a folder of "
                            f"reference segmentations.")


def evaluate_folders(reference_folder: str, prediction_folder: str, labels: dict[str, int] | None = None,
                     file_ending: str | None = None, resample_to_reference: bool = False) -> dict:
    """Score every reference case (nnU-Net naming: ``<case><file_ending>``) against its prediction.

    Scores are computed on the reference grid. A prediction on another grid is an error unless
    ``resample_to_reference`` (nearest neighbour onto the reference grid). Per-label means and standard
    deviations use the cases where the label is present in the reference or the prediction.

    Args:
        reference_folder, prediction_folder: folders of label maps.
        labels: name -> value; default: every non-zero value found in the references, named ``label_<v>``.
        file_ending: default: detected from the reference folder.
        resample_to_reference: resample predictions on another grid instead of refusing them.
    Returns:
        ``{"per_case": [...], "mean": {...}, "std": {...}, "grid": {"size", "spacing"}, "labels": {...}}``.
    """
    from tqdm import tqdm

    for folder, flag in ((reference_folder, "-ref"), (prediction_folder, "-pred")):
        if not os.path.isdir(folder):
            raise RehrsegInputError(f"{folder} does not exist; pass an existing folder with {flag}.")
    file_ending = file_ending or _detect_ending(reference_folder)
    cases = sorted(f[: -len(file_ending)] for f in os.listdir(reference_folder) if f.endswith(file_ending))
    if not cases:
        raise RehrsegInputError(f"{reference_folder} holds no '*{file_ending}' files; check -ref and the file ending.")
    missing = [c + file_ending for c in cases if not os.path.isfile(os.path.join(prediction_folder, c + file_ending))]
    if missing:
        raise RehrsegInputError(f"{prediction_folder} lacks the prediction(s) {', '.join(missing[:5])}"
                                f"{' …' if len(missing) > 5 else ''}; predict every reference case (or remove the "
                                f"reference) and run again.")
    references = {c: sitk.ReadImage(os.path.join(reference_folder, c + file_ending)) for c in cases}
    if labels is None:
        values = sorted({int(v) for image in references.values() for v in np.unique(sitk.GetArrayViewFromImage(image))} - {0})
        labels = {f"label_{v}": v for v in values}
    per_case = []
    for case in tqdm(cases, desc="rehrseg_evaluate", unit="case"):
        reference = references[case]
        path = os.path.join(prediction_folder, case + file_ending)
        prediction = sitk.ReadImage(path)
        if not _same_grid(reference, prediction):
            if not resample_to_reference:
                raise RehrsegInputError(
                    f"{path} is on another grid than its reference (size {prediction.GetSize()} vs "
                    f"{reference.GetSize()}, spacing {tuple(round(s, 4) for s in prediction.GetSpacing())} vs "
                    f"{tuple(round(s, 4) for s in reference.GetSpacing())}); pass --resample-to-reference to resample "
                    f"predictions onto the reference grid (nearest neighbour).")
            prediction = sitk.Resample(prediction, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        scores = segmentation_scores(sitk.GetArrayFromImage(reference).astype(np.int64),
                                     sitk.GetArrayFromImage(prediction).astype(np.int64),
                                     list(reversed(reference.GetSpacing())), labels)
        per_case.append({"case": case, "reference": os.path.join(reference_folder, case + file_ending),
                         "prediction": path, **scores})
    mean, std = {}, {}
    for key in ["foreground", *[n for n, v in labels.items() if v]]:
        rows = [c[key] for c in per_case if key == "foreground" or c[key]["present"]]
        if rows:
            mean[key] = {m: float(np.mean([r[m] for r in rows])) for m in ("dice", "hd95")}
            std[key] = {m: float(np.std([r[m] for r in rows])) for m in ("dice", "hd95")}
            mean[key]["cases"] = len(rows)
    first = references[cases[0]]
    return {"per_case": per_case, "mean": mean, "std": std, "labels": labels,
            "grid": {"size": list(first.GetSize()), "spacing": [float(s) for s in first.GetSpacing()]}}


def format_table(summary: dict) -> str:
    """Fixed-width text: one row per case (foreground and per-label Dice, foreground HD95), then mean ± std."""
    names = [n for n, v in summary["labels"].items() if v]
    header = f"{'case':20s} {'fg Dice':>8s} {'fg HD95':>8s} " + " ".join(f"{n[:12]:>12s}" for n in names)
    lines = [f"grid: size {summary['grid']['size']}, spacing {summary['grid']['spacing']} (x, y, z)", header]
    for row in summary["per_case"]:
        cells = " ".join(f"{row[n]['dice']:12.4f}" if row[n]["present"] else f"{'-':>12s}" for n in names)
        lines.append(f"{row['case'][:20]:20s} {row['foreground']['dice']:8.4f} {row['foreground']['hd95']:8.2f} {cells}")
    lines.append("")
    lines.append(f"{'label':20s} {'Dice mean ± std':>18s} {'HD95 mm mean ± std':>20s} {'cases':>6s}")
    for key in summary["mean"]:
        m, s = summary["mean"][key], summary["std"][key]
        lines.append(f"{key[:20]:20s} {m['dice']:9.4f} ± {s['dice']:6.4f} {m['hd95']:10.2f} ± {s['hd95']:7.2f} "
                     f"{m['cases']:6d}")
    lines.append("(per-label rows: cases where the label occurs in the reference or the prediction; '-' = in neither)")
    return "\n".join(lines)
