"""Thick-slice acquisition model: slice profiles, decimation by r, and the LR rule for labels.

One linear operator per axis: LR slice ``k`` is the slice profile, centred at HR position
``c_k = r*k + (r - 1)/2`` (the cell-centred HR grid of :mod:`rehrseg_nnunet.geometry`), sampled at the
HR voxel centres. For a Gaussian this equals blurring and then interpolating at ``c_k``; for a box of
width r it is exactly the mean of HR slices ``r*k ... r*k + r - 1``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch

from rehrseg_nnunet.geometry import Grid, numpy_axis

ProfileKind = Literal["gaussian", "box"]
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def added_blur_fwhm(slice_thickness: float, fine_spacing: float) -> float:
    """FWHM (in units of the fine spacing) that makes a fine voxel look like a thick slice.

    Gaussian widths add in quadrature, so the width to add is ``sqrt(thick^2 - fine^2)``.
    """
    if slice_thickness <= fine_spacing:
        return 0.0
    return math.sqrt(slice_thickness ** 2 - fine_spacing ** 2) / fine_spacing


def profile_fwhm(slice_thickness: float, fine_spacing: float, kind: ProfileKind = "gaussian") -> float:
    """FWHM of the slice profile in fine voxels: quadrature subtraction (Gaussian) or full width (box)."""
    if kind == "gaussian":
        return added_blur_fwhm(slice_thickness, fine_spacing)
    if kind == "box":
        return slice_thickness / fine_spacing
    raise ValueError(f"Unknown slice profile '{kind}'; use 'gaussian' or 'box'.")


def slice_profile(offsets: np.ndarray, fwhm: float, kind: ProfileKind = "gaussian") -> np.ndarray:
    """Evaluate the (unnormalised) slice profile at ``offsets`` (fine voxels from its centre).

    Gaussian: peak 1 with the given FWHM. Box: for each voxel cell ``[x - 1/2, x + 1/2]``, the
    fraction of it covered by ``[-fwhm/2, fwhm/2]`` — exact averaging when fwhm is an integer.
    """
    offsets = np.asarray(offsets, dtype=np.float64)
    if kind == "gaussian":
        if fwhm < 1.0:
            # narrower than a voxel: plain linear interpolation at the slice centre
            return np.clip(1.0 - np.abs(offsets), 0.0, 1.0)
        sigma = fwhm * FWHM_TO_SIGMA
        return np.exp(-0.5 * (offsets / sigma) ** 2)
    if kind == "box":
        half = fwhm / 2.0
        return np.clip(np.minimum(offsets + 0.5, half) - np.maximum(offsets - 0.5, -half), 0.0, 1.0)
    raise ValueError(f"Unknown slice profile '{kind}'; use 'gaussian' or 'box'.")


def degradation_matrix(n_fine: int, scale_factor: int, fwhm: float, kind: ProfileKind = "gaussian") -> np.ndarray:
    """Matrix ``(n_fine // r, n_fine)`` mapping fine slices to thick slices (rows sum to 1).

    Near the ends the profile is cut off and the row renormalised, i.e. the volume is treated as
    continuing with the same content (no dark border).
    """
    r = int(scale_factor)
    n_thick = n_fine // r
    centres = r * np.arange(n_thick) + (r - 1) / 2.0
    weights = slice_profile(np.arange(n_fine)[None, :] - centres[:, None], fwhm, kind)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def degrade_axis(array: np.ndarray, axis: int, scale_factor: int, fwhm: float,
                 kind: ProfileKind = "gaussian") -> np.ndarray:
    """Simulate thick slices along ``axis`` of ``array`` (any number of dimensions).

    Args:
        array: intensities on the fine grid.
        axis: the array axis to degrade.
        scale_factor: r, the decimation factor.
        fwhm: slice-profile FWHM in fine voxels (see :func:`profile_fwhm`).
        kind: ``gaussian`` or ``box``.

    Returns:
        float32 array with ``shape[axis] // r`` slices along ``axis``.
    """
    matrix = degradation_matrix(array.shape[axis], scale_factor, fwhm, kind)
    out = np.tensordot(matrix, np.asarray(array, dtype=np.float32), axes=([1], [axis]))
    return np.moveaxis(out, 0, axis)


def labels_to_lr(labels: np.ndarray, axis: int, scale_factor: int) -> np.ndarray:
    """LR label of each group of r fine slices: the majority, ties broken by the centre slice.

    This is the one rule used everywhere for LR labels (simulation, SR training pairs, trainer targets).
    """
    r = int(scale_factor)
    moved = np.moveaxis(labels, axis, 0)
    n_thick = moved.shape[0] // r
    groups = moved[: n_thick * r].reshape((n_thick, r) + moved.shape[1:])
    centre = groups[:, r // 2]
    values = np.unique(groups)
    best_score = np.full(centre.shape, -1, dtype=np.int32)
    best_value = np.zeros(centre.shape, dtype=labels.dtype)
    for value in values:
        # two points per vote plus one for the centre slice: a tie goes to the centre's label
        score = 2 * (groups == value).sum(axis=1, dtype=np.int32) + (centre == value)
        better = score > best_score
        best_score[better] = score[better]
        best_value[better] = value
    return np.moveaxis(best_value, 0, axis)


def labels_to_lr_tensor(labels: torch.Tensor, scale_factor: int, num_classes: int) -> torch.Tensor:
    """:func:`labels_to_lr` along axis 2 of a (B, C, S*r, …) tensor of class indices 0..K-1, on its own device.

    Vectorised (one comparison per class), so the trainer derives its LR targets where the batch already is.
    Ties left after the centre bonus go to the smallest class, as in :func:`labels_to_lr`.
    """
    r = int(scale_factor)
    b, c, s, *rest = labels.shape
    if s % r:
        raise ValueError(f"{s} slices along axis 2 are not a multiple of r = {r}.")
    groups = labels.view(b, c, s // r, r, *rest)
    centre = groups[:, :, :, r // 2]
    best_score = best_class = None
    for k in range(num_classes):
        # two points per vote plus one for the centre slice: a tie goes to the centre's label
        score = 2 * (groups == k).sum(3, dtype=torch.int32) + (centre == k)
        if best_class is None:
            best_score, best_class = score, torch.zeros_like(score)
        else:
            # strictly better only, so ties left go to the smallest class (a running maximum instead of
            # argmax over a stacked score: argmax over the class axis is ~10x slower on CPU)
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_class = torch.where(better, torch.full_like(best_class, k), best_class)
    return best_class.to(labels.dtype)


def centre_slice_labels(labels: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """The centre slice (index r // 2) of each group of r along axis 2 of a (B, C, S*r, …) label tensor.

    The alternative LR-target rule (one HR slice per thick slice, as the authors take the label at the acquired
    position; with even r the thick slice's centre lies between slices r // 2 - 1 and r // 2), kept for the
    ablation ``REHRSegTrainer_lrCentre``; :func:`labels_to_lr_tensor` is the rule used everywhere else.
    """
    r = int(scale_factor)
    if labels.shape[2] % r:
        raise ValueError(f"{labels.shape[2]} slices along axis 2 are not a multiple of r = {r}.")
    return labels[:, :, r // 2::r]


def simulate_thick_slices(image: sitk.Image, slice_axis: int, scale_factor: int,
                          kind: ProfileKind = "gaussian", label: sitk.Image | None = None,
                          ) -> tuple[sitk.Image, sitk.Image | None]:
    """Make a thick-slice acquisition from an HR image (and its label map).

    The HR image is padded at its far end (edge values) to a multiple of r slices; the LR grid is
    the one whose cell-centred refinement is that padded HR grid.

    Args:
        image: HR image, spacing ``h`` along ``slice_axis``.
        slice_axis: axis in (x, y, z) order.
        scale_factor: r; LR spacing is ``r*h``.
        kind: slice profile.
        label: optional HR label map on the same grid.

    Returns:
        (LR image as float32, LR label or None), with exact LR geometry.
    """
    r = int(scale_factor)
    grid = Grid.from_image(image)
    pad = (-grid.size[slice_axis]) % r
    axis = numpy_axis(slice_axis)
    padded_size = list(grid.size)
    padded_size[slice_axis] += pad
    lr_grid = Grid(tuple(padded_size), grid.spacing, grid.origin, grid.direction).coarsen(slice_axis, r)

    def padded(array: np.ndarray) -> np.ndarray:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, pad)
        return np.pad(array, widths, mode="edge")

    hr = padded(sitk.GetArrayFromImage(image).astype(np.float32))
    fine = grid.spacing[slice_axis]
    lr = degrade_axis(hr, axis, r, profile_fwhm(r * fine, fine, kind), kind)
    lr_image = lr_grid.image_from_array(lr)
    lr_label = None
    if label is not None:
        lr_label = lr_grid.image_from_array(labels_to_lr(padded(sitk.GetArrayFromImage(label)), axis, r))
    return lr_image, lr_label
