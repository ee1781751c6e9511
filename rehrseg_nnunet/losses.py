"""Stage-2 losses that nnU-Net does not have: the UASR-weighted LR cross-entropy and structural distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UNCERTAINTY_WEIGHT = 0.99  # w = 1 - 0.99 u (METHOD.md)


def uncertainty_weighted_ce(logits: torch.Tensor, target: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
    """Voxel-wise cross-entropy weighted by ``w = 1 - 0.99 u``, averaged over all voxels.

    Args:
        logits: (B, K, …) LR logits.
        target: (B, 1, …) class indices.
        uncertainty: (B, 1, …) in [0, 1], on the same grid.

    Returns:
        A scalar tensor.
    """
    ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
    weight = 1.0 - UNCERTAINTY_WEIGHT * uncertainty[:, 0].clamp(0, 1)
    return (weight * ce).mean()


class UncertaintyWeightedCE(nn.Module):
    """:func:`uncertainty_weighted_ce` as a module, so nnU-Net's DeepSupervisionWrapper can wrap it."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
        return uncertainty_weighted_ce(logits, target, uncertainty)


class UncertaintyWeightedCEAndDice(nn.Module):
    """:func:`uncertainty_weighted_ce` plus nnU-Net's soft Dice (foreground classes, unweighted): the LR loss of
    the ``lrDice`` ablation, to measure what a Dice term adds to per-class quality under UASR.

    Args:
        dice: nnU-Net's Dice loss on logits (``MemoryEfficientSoftDiceLoss`` with softmax), called as
            ``dice(logits, target)``.
    """

    def __init__(self, dice: nn.Module):
        super().__init__()
        self.dice = dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
        return uncertainty_weighted_ce(logits, target, uncertainty) + self.dice(logits, target)


def _per_slice(features: torch.Tensor) -> torch.Tensor:
    """(B, C, S, H, W) -> (B*S, C, H, W)."""
    b, c, s, h, w = features.shape
    return features.permute(0, 2, 1, 3, 4).reshape(b * s, c, h, w)


def region_affinity(features: torch.Tensor) -> torch.Tensor:
    """Per slice: max-pool into a 2x2 grid of regions, L2-normalise each region's channel vector, and
    return the region-to-region cosine-similarity matrix (B*S, 4, 4)."""
    planes = _per_slice(features)
    h, w = planes.shape[-2:]
    regions = F.max_pool2d(planes, kernel_size=(max(h // 2, 1), max(w // 2, 1)), ceil_mode=True)
    regions = F.normalize(regions.flatten(2), dim=1)  # (N, C, regions)
    return regions.transpose(1, 2) @ regions


def structural_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared difference of the student's and teacher's region affinities, / (number of region pairs)^2.

    Both are (B, C, S, H, W) on the same spatial grid (channel counts may differ).
    """
    student_affinity = region_affinity(student)
    teacher_affinity = region_affinity(teacher.detach())
    pairs = student_affinity.shape[-1] * student_affinity.shape[-2]
    return ((student_affinity - teacher_affinity) ** 2).sum((-2, -1)).mean() / pairs ** 2


def cosine_distillation(projected_student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of each channel's spatial map (student projected to the teacher's channels)."""
    s = projected_student.flatten(2)
    t = teacher.detach().flatten(2)
    return (1.0 - F.cosine_similarity(s, t, dim=2, eps=1e-6)).mean()


def match_grid(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Average-pool (or interpolate) the teacher's (B, C, S, H, W) features onto the student's grid."""
    if teacher.shape[2:] == student.shape[2:]:
        return teacher
    if all(t >= s for t, s in zip(teacher.shape[2:], student.shape[2:], strict=True)):
        return F.adaptive_avg_pool3d(teacher, student.shape[2:])
    return F.interpolate(teacher, size=student.shape[2:], mode="trilinear", align_corners=False)
