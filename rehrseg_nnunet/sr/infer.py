"""SR inference: LR image(s) + LR label -> pseudo-HR image(s), pseudo-HR label, uncertainty on the HR grid.

Volumes are handled slice-axis-first, (C, S, A, B); the networks see batches of planes (stage 1a)
or of 4-slice windows (stages 1b/1c), so memory is bounded by the batch, not by the volume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from rehrseg_nnunet.dataset_io import case_arrays, from_slice_first
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.geometry import Grid, check_thick_slice_spacing
from rehrseg_nnunet.sr.background import restore_source_intensities
from rehrseg_nnunet.sr.config import SRConfig, final_checkpoint, select_device, verified_final_checkpoint
from rehrseg_nnunet.sr.networks import NUM_FRAMES, PlaneSRNet, SliceInterpolationNet, network_from_checkpoint
from rehrseg_nnunet.sr.pairs import one_hot


def normalisation(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of a (C, …) volume (std floored so constant channels stay finite)."""
    axes = tuple(range(1, image.ndim))
    mean = image.mean(axis=axes, keepdims=True)
    std = np.maximum(image.std(axis=axes, keepdims=True), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


def label_indices(labels: np.ndarray, label_values: list[int]) -> np.ndarray:
    """Map label values (e.g. 0, 1, 2, 4) to class indices 0..K-1."""
    return np.searchsorted(np.asarray(label_values), labels).astype(np.int16)


def class_index_dtype(num_classes: int) -> type:
    """Smallest integer type for class indices 0..K-1 (a class map is HR-sized: its type is memory)."""
    return np.uint8 if num_classes <= 256 else np.int16


def network_input(image: np.ndarray, labels: np.ndarray | None, num_classes: int) -> np.ndarray:
    """Normalised image channels followed by one-hot labels (zeros when the label is unknown)."""
    if labels is None:
        onehot = np.zeros((num_classes,) + image.shape[1:], dtype=np.float32)
    else:
        onehot = one_hot(labels, num_classes)
    return np.concatenate([image, onehot])


def plane_super_resolve(net: PlaneSRNet, volume: np.ndarray, device: torch.device, batch_size: int = 16
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1a on a whole volume: (image (C, S*r, A, B), label probabilities (K, S*r, A, B))."""
    estimate = plane_estimate(net, volume, device, batch_size)
    return estimate[:net.image_channels], estimate[net.image_channels:]


@torch.no_grad()
def plane_estimate(net: PlaneSRNet, volume: np.ndarray, device: torch.device, batch_size: int = 16,
                   dtype: type = np.float32) -> np.ndarray:
    """Stage 1a on a whole volume: the planes containing the slice axis (S-B and S-A), averaged.

    Args:
        net: trained :class:`PlaneSRNet`.
        volume: (C+K, S, A, B) network input.
        dtype: of the result; float16 halves the memory of a prior that only feeds stage 1c.

    Returns:
        (C+K, S*r, A, B): image channels, then label probabilities.
    """
    net.eval()
    c = net.image_channels
    r = net.scale_factor
    channels, s, a, b = volume.shape
    total = np.zeros((channels, s * r, a, b), dtype=dtype)
    for plane_axis in (2, 3):  # planes at fixed A (S-B planes), then at fixed B (S-A planes)
        planes = np.moveaxis(volume, plane_axis, 0)  # (N, C+K, S, other)
        for start in range(0, planes.shape[0], batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(planes[start:start + batch_size])).to(device)
            out = net(chunk)
            out = torch.cat([out[:, :c], torch.softmax(out[:, c:], 1)], 1).cpu().numpy()
            index = [slice(None)] * 4
            index[plane_axis] = slice(start, start + out.shape[0])
            total[tuple(index)] += np.moveaxis(out, 0, plane_axis) / 2
    return total


@torch.no_grad()
def slice_super_resolve(net: SliceInterpolationNet, volume: np.ndarray, device: torch.device, batch_size: int = 4,
                        prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Stages 1b/1c: slide a 4-slice window along S (edge-padded ends); each window gives r HR slices.

    Args:
        net: trained :class:`SliceInterpolationNet`.
        volume: (C+K, S, A, B) network input.
        prior: (C+K, S*r, A, B) stage 1a estimate (image, label probabilities), for ``refine_prior`` networks.

    Returns:
        (image (C, S*r, A, B), class indices (S*r, A, B) uint8 (int16 beyond 256 classes), uncertainty
        (S*r, A, B); without a UASR
        head the uncertainty is 1 - the winning class probability).
    """
    net.eval()
    c, r = net.image_channels, net.scale_factor
    channels, s, a, b = volume.shape
    pad_a, pad_b = (-a) % 8, (-b) % 8
    offset = (r + 1) // 2
    image = np.zeros((c, s * r, a, b), dtype=np.float32)
    classes = np.zeros((s * r, a, b), dtype=class_index_dtype(net.num_classes))
    uncertainty = np.zeros((s * r, a, b), dtype=np.float32)
    windows = list(range(-1, s))  # window k covers HR slices r*k + offset ... + r - 1
    for start in range(0, len(windows), batch_size):
        ks = windows[start:start + batch_size]
        index = np.clip(np.asarray(ks)[:, None] + np.arange(-1, NUM_FRAMES - 1)[None], 0, s - 1)
        frames = torch.from_numpy(np.ascontiguousarray(volume[:, index].transpose(1, 0, 2, 3, 4))).to(device)
        window_prior = None
        if prior is not None:
            hr_index = np.clip(r * np.asarray(ks)[:, None] + offset + np.arange(r)[None], 0, s * r - 1)
            window_prior = torch.from_numpy(
                np.ascontiguousarray(prior[:, hr_index].transpose(1, 0, 2, 3, 4), dtype=np.float32)).to(device)
        if pad_a or pad_b:
            frames = F.pad(frames, (0, pad_b, 0, pad_a, 0, 0), mode="replicate")
            if window_prior is not None:
                window_prior = F.pad(window_prior, (0, pad_b, 0, pad_a, 0, 0), mode="replicate")
        result = net(frames, window_prior)
        out = result["output"][..., :a, :b]
        out = torch.cat([out[:, :c], torch.softmax(out[:, c:], 1)], 1).cpu().numpy()
        if net.num_attention_maps:
            unc = result["uncertainty"][:, 0, :, :a, :b].cpu().numpy()
        else:
            unc = 1.0 - out[:, c:].max(axis=1)
        for i, k in enumerate(ks):
            first = r * k + offset
            keep = [j for j in range(r) if 0 <= first + j < s * r]
            if not keep:
                continue
            hr = slice(first + keep[0], first + keep[-1] + 1)
            image[:, hr] = out[i, :c, keep[0]:keep[-1] + 1]
            classes[hr] = out[i, c:, keep[0]:keep[-1] + 1].argmax(axis=0)
            uncertainty[hr] = unc[i, keep[0]:keep[-1] + 1]
    return image, classes, uncertainty


def load_stage_network(model_folder: str, stage: str, device: torch.device) -> torch.nn.Module:
    """The trained network of a stage from its final checkpoint (SHA-256 and readability checked)."""
    checkpoint = verified_final_checkpoint(model_folder, stage)
    return network_from_checkpoint(checkpoint, final_checkpoint(model_folder, stage)).to(device).eval()


@dataclass
class SRVolume:
    """SR output as slice-first arrays.

    Attributes:
        image: (C, S*r, A, B) in scanner units, the source's background and range kept.
        classes: (S*r, A, B) class indices.
        uncertainty: (S*r, A, B) on the model's fixed scale, min(sigma / uncertainty_scale, 1), 0 in background.
        raw_uncertainty: (S*r, A, B) the network's sigma (1 - winning probability without a UASR head).
    """

    image: np.ndarray
    classes: np.ndarray
    uncertainty: np.ndarray
    raw_uncertainty: np.ndarray


@dataclass
class PseudoHR:
    """SR output on the HR grid: one image per channel, the label map, the uncertainty in [0, 1] and sigma."""

    images: list[sitk.Image]
    label: sitk.Image
    uncertainty: sitk.Image
    raw_uncertainty: sitk.Image | None = None


class SuperResolver:
    """Applies a trained SR model folder to LR cases.

    Args:
        model_folder: output of ``rehrseg_train_sr``.
        device: torch device name, auto-selected when None.
        stage: which stage's network to apply (default: the last finished one).
        batch_size: windows per forward pass (planes: 4x as many); bounds the memory. On CPU, 2 windows
            cost 0.29 GB of activations against 0.51 GB for 4, and a BRATS case ran no slower (small
            preset, 240x240 planes); a single window is about 3x slower per window, because PyTorch
            then picks its im2col 3D convolution instead of oneDNN's.
    """

    def __init__(self, model_folder: str, device: str | torch.device | None = None, stage: str | None = None,
                 batch_size: int = 2):
        self.config = SRConfig.load(model_folder)
        self.device = device if isinstance(device, torch.device) else select_device(device)
        if stage is None:
            finished = [s for s in ("1c", "1b", "1a") if os.path.isfile(final_checkpoint(model_folder, s))]
            if not finished:
                raise RehrsegInputError(f"{model_folder} holds no finished SR stage; run rehrseg_train_sr first.")
            stage = finished[0]
        self.stage = stage
        self.net = load_stage_network(model_folder, stage, self.device)
        refines = getattr(self.net, "refine_prior", False)
        self.plane_net = load_stage_network(model_folder, "1a", self.device) if refines else None
        self.batch_size = batch_size
        self._check_calibrated(f"{model_folder}/config.json")

    @classmethod
    def from_payload(cls, payload: dict, device: str | torch.device | None = None, batch_size: int = 2,
                     source: str = "the carried SR model") -> SuperResolver:
        """A resolver from :func:`rehrseg_nnunet.sr.carried.sr_model_payload` (the SR model a REHRSeg model
        carries) instead of an SR model folder."""
        resolver = cls.__new__(cls)
        resolver.config = SRConfig(**payload["config"])
        resolver.device = device if isinstance(device, torch.device) else select_device(device)
        resolver.stage = payload["stage"]

        def network(stage: str) -> torch.nn.Module:
            return network_from_checkpoint(payload["networks"][stage], source).to(resolver.device).eval()

        resolver.net = network(resolver.stage)
        resolver.plane_net = network("1a") if getattr(resolver.net, "refine_prior", False) else None
        resolver.batch_size = batch_size
        resolver._check_calibrated(source)
        return resolver

    def _check_calibrated(self, source: str) -> None:
        if self.has_uncertainty_head and self.config.uncertainty_scale is None:
            raise RehrsegInputError(
                f"{source} has no uncertainty_scale: stage 1c was not calibrated; run rehrseg_train_sr --continue "
                "with the same options (a model from an older version must be retrained)."
            )

    def check_compatible(self, images: list[sitk.Image], source: str) -> None:
        """A case must have the model's channel count, slice axis and r (from its spacing, the rule of
        :func:`rehrseg_nnunet.dataset_io.check_thick_slice_header`)."""
        cfg = self.config
        if len(images) != cfg.image_channels:
            raise RehrsegInputError(
                f"{source} has {len(images)} channel(s) but the SR model was trained on {cfg.image_channels}; "
                f"use a model trained on this dataset."
            )
        check_thick_slice_spacing(images[0].GetSpacing(), source, cfg.slice_axis, cfg.lr_spacing[cfg.slice_axis],
                                  cfg.scale_factor, "the SR model")

    @property
    def has_uncertainty_head(self) -> bool:
        return bool(getattr(self.net, "num_attention_maps", 0))

    def volume(self, image: np.ndarray, labels: np.ndarray | None) -> SRVolume:
        """SR of slice-first arrays: image (C, S, A, B) in scanner units, labels (S, A, B) as class indices."""
        mean, std = normalisation(image)
        volume = network_input((image - mean) / std, labels, self.config.num_classes)
        if isinstance(self.net, PlaneSRNet):
            hr, probabilities = plane_super_resolve(self.net, volume, self.device, 4 * self.batch_size)
            classes = probabilities.argmax(axis=0).astype(class_index_dtype(len(probabilities)))
            raw = 1.0 - probabilities.max(axis=0)  # no UASR head: 1 - winning probability
            del probabilities
        else:
            prior = None
            if self.plane_net is not None:
                prior = plane_estimate(self.plane_net, volume, self.device, 4 * self.batch_size, np.float16)
            hr, classes, raw = slice_super_resolve(self.net, volume, self.device, self.batch_size, prior)
            del prior
        del volume
        # in place: each HR-sized temporary would add a volume to the peak memory
        hr *= std
        hr += mean
        background = restore_source_intensities(hr, image, self.config.scale_factor)
        scale = self.config.uncertainty_scale if self.has_uncertainty_head else 1.0
        uncertainty = np.clip(raw / scale, 0.0, 1.0).astype(np.float32, copy=False)
        if background is not None:
            uncertainty[background] = 0.0  # the source's exact background is copied, not estimated
        return SRVolume(hr, classes, uncertainty, raw)

    def __call__(self, images: list[sitk.Image], label: sitk.Image | None = None, source: str = "the case") -> PseudoHR:
        """Super-resolve one case given as SimpleITK images (label optional: without it the label is inferred)."""
        self.check_compatible(images, source)
        cfg = self.config
        image, labels = case_arrays(images, label, cfg.slice_axis)
        if labels is not None:
            labels = label_indices(labels, cfg.label_values)
        result = self.volume(image, labels)
        hr_grid = Grid.from_image(images[0]).refine(cfg.slice_axis, cfg.scale_factor)

        def to_image(array: np.ndarray) -> sitk.Image:
            return hr_grid.image_from_array(from_slice_first(array, cfg.slice_axis))

        values = np.asarray(cfg.label_values, dtype=np.uint8 if max(cfg.label_values) < 256 else np.int16)
        # each array is dropped once converted: HR volumes are the peak memory of rehrseg_make_pseudohr
        label = to_image(values[result.classes])
        result.classes = None
        out_images = [to_image(result.image[channel]) for channel in range(len(images))]
        result.image = None
        uncertainty = to_image(result.uncertainty)
        result.uncertainty = None
        return PseudoHR(out_images, label, uncertainty, to_image(result.raw_uncertainty))
