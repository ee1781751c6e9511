"""Keep the source's background and intensity range in pseudo-HR images.

Many MRI volumes hold an exact background value (0 after skull stripping or masking). A network's
output is never exactly that value, so without this step a pseudo-HR image has no background at
all: nnU-Net then cannot crop the training cases to their non-zero region, while it does crop
test images, and its intensity statistics differ between the two.
"""

from __future__ import annotations

import numpy as np

#: A channel has a background value when at least this fraction of its border voxels hold it exactly.
BACKGROUND_BORDER_FRACTION = 0.5


def background_value(channel: np.ndarray) -> float | None:
    """The exact background value of one (S, A, B) channel, or None when it has none.

    The background is what surrounds the anatomy: the value held by most voxels on the volume's
    faces. Not the minimum: an image z-scored inside the brain has negative tissue and a 0 background.
    """
    faces = np.concatenate([np.moveaxis(channel, axis, 0)[[0, -1]].ravel() for axis in range(channel.ndim)])
    values, counts = np.unique(faces, return_counts=True)
    if counts.max() >= BACKGROUND_BORDER_FRACTION * faces.size:
        return float(values[counts.argmax()])
    return None


def hr_background_mask(lr_background: np.ndarray, scale_factor: int) -> np.ndarray:
    """HR voxels whose two nearest LR slices are both background (S, A, B) -> (S*r, A, B).

    On the cell-centred HR grid, HR slice j sits at LR position (j + 0.5) / r - 0.5, between LR
    slices floor and floor + 1 (clipped at the ends); the SR output there interpolates those two.
    """
    s = lr_background.shape[0]
    position = (np.arange(s * scale_factor) + 0.5) / scale_factor - 0.5
    below = np.clip(np.floor(position).astype(int), 0, s - 1)
    above = np.clip(below + 1, 0, s - 1)
    return lr_background[below] & lr_background[above]


def restore_source_intensities(hr: np.ndarray, lr: np.ndarray, scale_factor: int) -> np.ndarray | None:
    """In place: clip each HR channel to its LR channel's range and write the exact background value.

    Args:
        hr: (C, S*r, A, B) pseudo-HR image in scanner units (modified).
        lr: (C, S, A, B) source image in scanner units.
        scale_factor: r.

    Returns:
        (S*r, A, B) mask of HR voxels that are background in every channel (None if a channel has none).
    """
    masks = []
    for channel in range(lr.shape[0]):
        np.clip(hr[channel], lr[channel].min(), lr[channel].max(), out=hr[channel])
        value = background_value(lr[channel])
        mask = None if value is None else hr_background_mask(lr[channel] == value, scale_factor)
        if mask is not None:
            hr[channel][mask] = value
        masks.append(mask)
    if any(mask is None for mask in masks):
        return None
    return np.logical_and.reduce(masks)
