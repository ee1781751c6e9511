"""Keep the source's background and intensity range in pseudo-HR images.

Many MRI volumes hold an exact background value (0 after skull stripping or masking). A network's
output is never exactly that value, so without this step a pseudo-HR image has no background at
all: nnU-Net then cannot crop the training cases to their non-zero region, while it does crop
test images, and its intensity statistics differ between the two.

The pseudo-HR background is the thick-slice background copied onto the r HR slices of each thick
slice: exactly the mask nnU-Net builds from a thick-slice test image once its preprocessing has
copied each slice onto the HR grid (nearest neighbour along the slice axis). Training and test then
crop and normalise (``use_mask_for_norm``) over the same region. A mask from the SR output instead
(its sharper boundary) covered 50 % of the quick start's crop box against 40 % for a test image, so
the band between the two was "outside the mask" (0, the mean tissue value after z-scoring) in
training but dark tissue at test.
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
    """Each thick slice's background copied onto its r HR slices: (S, A, B) -> (S*r, A, B).

    HR slice j lies inside thick slice j // r (the grid of :meth:`rehrseg_nnunet.geometry.Grid.refine`),
    which is also the slice nnU-Net's nearest-neighbour resampling copies there.
    """
    return np.repeat(lr_background, scale_factor, axis=0)


def nearest_foreground_value(channel: np.ndarray, background: float) -> float:
    """The source value closest to the background among the other values (the background itself if none)."""
    others = channel[channel != background]  # one pass, no sort of the whole volume
    return float(others[np.abs(others - background).argmin()]) if others.size else background


def restore_source_intensities(hr: np.ndarray, lr: np.ndarray, scale_factor: int) -> np.ndarray | None:
    """In place: clip each HR channel to its LR channel's range; background exactly where the thick slice is.

    Outside that background an HR voxel never holds the background value (an SR estimate clipped onto it
    gets the source's nearest other value), so the non-zero region equals the thick-slice image's.

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
            clipped_onto_background = (hr[channel] == value) & ~mask
            if clipped_onto_background.any():
                hr[channel][clipped_onto_background] = nearest_foreground_value(lr[channel], value)
            hr[channel][mask] = value
        masks.append(mask)
    if any(mask is None for mask in masks):
        return None
    return np.logical_and.reduce(masks)
