"""Self-supervised training pairs: degrade a fine (in-plane) axis like the scanner degrades the slice axis.

Volumes are (C, S, A, B) float arrays (slice axis first, already normalised) with (S, A, B) label
maps holding class indices 0..K-1. The fine axes A and B stand in for the missing HR slice axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rehrseg_nnunet.degradation import ProfileKind, degrade_axis, labels_to_lr

#: Probability that a training sample hides its label channels (all zero), so that the SR model
#: also works on images without labels (test images).
LABEL_DROPOUT = 0.2


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(…) class indices -> (K, …) float32 one-hot."""
    return (labels[None] == np.arange(num_classes).reshape((-1,) + (1,) * labels.ndim)).astype(np.float32)


@dataclass
class DegradedVolume:
    """A volume with its copies degraded along the fine axes A (array axis 2) and B (axis 3)."""

    image: np.ndarray
    labels: np.ndarray
    degraded_images: dict[int, np.ndarray]
    degraded_labels: dict[int, np.ndarray]

    @classmethod
    def build(cls, image: np.ndarray, labels: np.ndarray, scale_factor: int, fwhm: float,
              kind: ProfileKind) -> "DegradedVolume":
        degraded_images = {axis: degrade_axis(image, axis, scale_factor, fwhm, kind) for axis in (2, 3)}
        degraded_labels = {axis: labels_to_lr(labels, axis - 1, scale_factor) for axis in (2, 3)}
        return cls(image, labels, degraded_images, degraded_labels)


def _random_flips(rng: np.random.Generator, arrays: list[np.ndarray], spatial_axes: tuple[int, ...]) -> list[np.ndarray]:
    """Flip all arrays along the same random subset of their last ``len(spatial_axes)`` axes."""
    for offset in spatial_axes:
        if rng.random() < 0.5:
            arrays = [np.flip(a, axis=a.ndim - offset) for a in arrays]
    return arrays


class PlanePairSampler:
    """Stage 1a pairs: 2D in-plane patches, one fine axis degraded (LR rows first).

    Args:
        volumes: LR volumes (degraded copies along A and B are precomputed).
        num_classes: K.
        scale_factor: r.
        patch_size: HR patch edge; reduced to fit the smallest volume, a multiple of r.
    """

    def __init__(self, volumes: list[DegradedVolume], num_classes: int, scale_factor: int, patch_size: int):
        self.volumes = volumes
        self.num_classes = num_classes
        self.r = scale_factor
        smallest = min(min(v.image.shape[2], v.image.shape[3]) for v in volumes)
        self.patch = max(self.r, min(patch_size, smallest) // self.r * self.r)

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Returns LR inputs (B, C+K, P/r, P), HR image (B, C, P, P), HR labels (B, P, P), label-known mask (B,)."""
        inputs, images, labels, known = [], [], [], []
        r, p = self.r, self.patch
        for _ in range(batch_size):
            volume = self.volumes[rng.integers(len(self.volumes))]
            axis = int(rng.choice((2, 3)))
            s = rng.integers(volume.image.shape[1])
            hr_image = volume.image[:, s]
            hr_labels = volume.labels[s]
            lr_image = volume.degraded_images[axis][:, s]
            lr_labels = volume.degraded_labels[axis][s]
            if axis == 3:  # degraded axis first
                hr_image, lr_image = hr_image.transpose(0, 2, 1), lr_image.transpose(0, 2, 1)
                hr_labels, lr_labels = hr_labels.T, lr_labels.T
            a = rng.integers(lr_image.shape[1] - p // r + 1)
            b = rng.integers(hr_image.shape[2] - p + 1)
            lr_in = np.concatenate([lr_image[:, a:a + p // r, b:b + p],
                                    one_hot(lr_labels[a:a + p // r, b:b + p], self.num_classes)])
            label_known = rng.random() >= LABEL_DROPOUT
            if not label_known:
                lr_in[lr_image.shape[0]:] = 0
            pair = _random_flips(rng, [lr_in, hr_image[:, a * r:(a + p // r) * r, b:b + p],
                                       hr_labels[a * r:(a + p // r) * r, b:b + p]], (1, 2))
            inputs.append(pair[0])
            images.append(pair[1])
            labels.append(pair[2])
            known.append(label_known)
        return (np.ascontiguousarray(np.stack(inputs)), np.ascontiguousarray(np.stack(images)),
                np.ascontiguousarray(np.stack(labels)).astype(np.int64), np.asarray(known, dtype=np.float32))


class FramePairSampler:
    """Stages 1b/1c pairs from pseudo-HR volumes: 4 LR frames along a degraded fine axis -> r HR slices.

    The frames are planes perpendicular to the degraded axis; both of their axes carry HR content
    (one true in-plane axis, one super-resolved slice axis), as the real LR slices do at test time.
    """

    def __init__(self, volumes: list[DegradedVolume], num_classes: int, scale_factor: int, patch_size: int):
        self.volumes = volumes
        self.num_classes = num_classes
        self.r = scale_factor
        smallest = min(min(v.image.shape[1:]) for v in volumes)
        if smallest < 8 or min(v.degraded_images[2].shape[2] for v in volumes) < 4:
            raise ValueError(f"Volumes of {smallest} voxels are too small for 4-slice windows of 8x8 patches.")
        self.patch = min(patch_size, smallest) // 8 * 8
        self.offset = (scale_factor + 1) // 2

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Returns frames (B, C+K, 4, P, P), HR image (B, C, r, P, P), HR labels (B, r, P, P), label-known (B,)."""
        frames, images, labels, known = [], [], [], []
        r, p = self.r, self.patch
        for _ in range(batch_size):
            volume = self.volumes[rng.integers(len(self.volumes))]
            axis = int(rng.choice((2, 3)))
            # degraded axis first, then the two frame axes (S and the other fine axis)
            order = (0, axis, 1, 5 - axis)
            lr_image = volume.degraded_images[axis].transpose(order)
            lr_labels = volume.degraded_labels[axis].transpose([o - 1 for o in order[1:]])
            hr_image = volume.image.transpose(order)
            hr_labels = volume.labels.transpose([o - 1 for o in order[1:]])
            n_lr = lr_image.shape[1]
            k = rng.integers(1, n_lr - 2)
            u = rng.integers(lr_image.shape[2] - p + 1)
            v = rng.integers(lr_image.shape[3] - p + 1)
            window = slice(k - 1, k + 3)
            hr_slices = slice(r * k + self.offset, r * k + self.offset + r)
            frame = np.concatenate([lr_image[:, window, u:u + p, v:v + p],
                                    one_hot(lr_labels[window, u:u + p, v:v + p], self.num_classes)])
            label_known = rng.random() >= LABEL_DROPOUT
            if not label_known:
                frame[lr_image.shape[0]:] = 0
            pair = [frame, hr_image[:, hr_slices, u:u + p, v:v + p], hr_labels[hr_slices, u:u + p, v:v + p]]
            pair = _random_flips(rng, pair, (1, 2))
            if rng.random() < 0.5:  # in-plane transposition
                pair = [np.swapaxes(a, -1, -2) for a in pair]
            frames.append(pair[0])
            images.append(pair[1])
            labels.append(pair[2])
            known.append(label_known)
        return (np.ascontiguousarray(np.stack(frames)), np.ascontiguousarray(np.stack(images)),
                np.ascontiguousarray(np.stack(labels)).astype(np.int64), np.asarray(known, dtype=np.float32))
