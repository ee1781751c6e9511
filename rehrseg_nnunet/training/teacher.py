"""The frozen SR network as distillation teacher: its stride-2 encoder features for each LR slice."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rehrseg_nnunet.sr.infer import load_stage_network
from rehrseg_nnunet.sr.networks import NUM_FRAMES

FEATURE_LEVEL = 1  # SliceEncoder outputs: stem, stage 1 (stride 2 in-plane), …


class DistillationTeacher(nn.Module):
    """Stage-1c SR network, frozen; not part of the trained network, so DDP replicates it per rank
    instead of wrapping it.

    Args:
        sr_model_folder: output of ``rehrseg_train_sr``.
        stage: the SR stage that made the pseudo-HR data (its network is the teacher).
        device: where it runs.
    """

    def __init__(self, sr_model_folder: str, stage: str, device: torch.device):
        super().__init__()
        self.net = load_stage_network(sr_model_folder, stage, device)
        self.net.requires_grad_(False)
        self.net.eval()

    @torch.no_grad()
    def forward(self, lr_image: torch.Tensor, lr_label: torch.Tensor) -> torch.Tensor:
        """Features of the middle frame of each 4-slice window, as the SR network was trained.

        Args:
            lr_image: (B, C, S, Y, X) normalised LR patch.
            lr_label: (B, 1, S, Y, X) LR class indices.

        Returns:
            (B, F, S, Y', X') stride-2 features.
        """
        num_classes = self.net.num_classes
        onehot = F.one_hot(lr_label[:, 0].long().clamp(0, num_classes - 1), num_classes).permute(0, 4, 1, 2, 3)
        volume = torch.cat([lr_image, onehot.to(lr_image.dtype)], 1)
        b, c, s, y, x = volume.shape
        offsets = torch.arange(-1, NUM_FRAMES - 1, device=volume.device)
        index = (torch.arange(s, device=volume.device)[:, None] + offsets).clamp(0, s - 1)
        windows = volume[:, :, index]  # (B, C, S, 4, Y, X)
        windows = windows.permute(0, 2, 1, 3, 4, 5).reshape(b * s, c, NUM_FRAMES, y, x)
        # frame 1 of the window k-1, k, k+1, k+2 is slice k
        features = self.net.encode(windows, up_to=FEATURE_LEVEL)[FEATURE_LEVEL][:, :, 1]
        return features.view(b, s, *features.shape[1:]).permute(0, 2, 1, 3, 4)

    def train(self, mode: bool = True) -> DistillationTeacher:
        return super().train(False)  # always frozen, even when the trainer switches modes
