"""SR image quality against a known HR image: PSNR, SSIM, label Dice and the uncertainty's AUROC
(benchmarks and examples; ``rehrseg_evaluate`` scores segmentations with :mod:`rehrseg_nnunet.evaluation`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy.stats import rankdata
from skimage.metrics import structural_similarity

from rehrseg_nnunet.evaluation import dice


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


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (Mann-Whitney U, ties count half).

    Returns NaN when one of the two classes is empty.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    n_positive = int(positive.sum())
    n_negative = positive.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


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
