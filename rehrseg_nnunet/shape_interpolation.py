"""Shape-based interpolation of a thick-slice label map onto its HR grid.

What a user would do without REHRSeg to get HR labels from an LR segmentation: per class, a signed
distance map (mm, negative inside) on the LR grid, interpolated linearly along the slice axis at the HR
slice centres; each HR voxel takes the class whose map is lowest there (the class it lies most inside).
Unlike argmax of linearly interpolated one-hot labels, which is nearest-neighbour in disguise, boundaries
move smoothly between slices. The HR grid is the cell-centred refinement of
:meth:`rehrseg_nnunet.geometry.Grid.refine`: HR slice j sits at LR index (j + 0.5) / r - 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

from rehrseg_nnunet.geometry import Grid, numpy_axis


def signed_distance(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance in mm to the other side of the mask's boundary: positive outside, negative inside.

    Args:
        mask: boolean array with at least one voxel in and one out.
        spacing: voxel size per array axis.

    Returns:
        float32 array of the mask's shape.
    """
    outside = distance_transform_edt(~mask, sampling=spacing)
    inside = distance_transform_edt(mask, sampling=spacing)
    return (outside - inside).astype(np.float32)


def shape_based_upsample(labels: np.ndarray, axis: int, scale_factor: int, spacing: Sequence[float]) -> np.ndarray:
    """Upsample an LR label map by ``scale_factor`` along ``axis`` with shape-based interpolation.

    Args:
        labels: integer class map on the LR grid.
        axis: the slice (array) axis to refine.
        scale_factor: r, HR slices per LR slice.
        spacing: LR voxel size per array axis (the distances are in mm, so anisotropy is respected).

    Returns:
        The HR class map (r times as many slices along ``axis``), dtype of ``labels``.
    """
    r, slices = int(scale_factor), labels.shape[axis]
    positions = np.clip((np.arange(r * slices) + 0.5) / r - 0.5, 0, slices - 1)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, slices - 1)
    weight_shape = [1] * labels.ndim
    weight_shape[axis] = -1
    weight = (positions - below).astype(np.float32).reshape(weight_shape)
    classes = np.unique(labels)
    hr_shape = list(labels.shape)
    hr_shape[axis] *= r
    if len(classes) == 1:
        return np.full(hr_shape, classes[0], dtype=labels.dtype)
    best = np.full(hr_shape, np.inf, dtype=np.float32)
    result = np.zeros(hr_shape, dtype=labels.dtype)
    for value in classes:  # a running minimum: one HR-sized distance map at a time
        distance = signed_distance(labels == value, spacing)
        hr = (1 - weight) * np.take(distance, below, axis=axis) + weight * np.take(distance, above, axis=axis)
        closer = hr < best
        best[closer] = hr[closer]
        result[closer] = value
    return result


def shape_based_upsample_image(lr_label: sitk.Image, slice_axis: int, scale_factor: int) -> sitk.Image:
    """:func:`shape_based_upsample` of a label image, written on its HR grid (:meth:`Grid.refine`).

    Args:
        lr_label: thick-slice label map.
        slice_axis: the image axis (x = 0, y = 1, z = 2) that holds the thick slices.
        scale_factor: r.

    Returns:
        The HR label image: r times the slices, spacing / r along ``slice_axis``, origin and direction of
        the cell-centred refinement.
    """
    array = sitk.GetArrayFromImage(lr_label)
    hr = shape_based_upsample(array, numpy_axis(slice_axis), scale_factor, tuple(reversed(lr_label.GetSpacing())))
    return Grid.from_image(lr_label).refine(slice_axis, scale_factor).image_from_array(hr)
