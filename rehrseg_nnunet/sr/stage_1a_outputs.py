"""Stage 1a's outputs that stages 1b and 1c train on: pseudo-HR training volumes and, per training pair,
1a's estimate of the target slices (both cached in the model folder, so a resumed run reuses them)."""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm import tqdm

from rehrseg_nnunet.file_writing import save_npy_atomically
from rehrseg_nnunet.sr.config import SRConfig, stage_dir
from rehrseg_nnunet.sr.infer import load_stage_network, network_input, plane_estimate, plane_super_resolve
from rehrseg_nnunet.sr.networks import PlaneSRNet
from rehrseg_nnunet.sr.pairs import DegradedVolume, LRCase


def pseudohr_training_volumes(model_folder: str, cases: list[LRCase], config: SRConfig, device: torch.device,
                              log) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stage 1a applied to every training case (cached in stage_1a/pseudohr), for 1b/1c training pairs."""
    cache = os.path.join(stage_dir(model_folder, "1a"), "pseudohr")
    os.makedirs(cache, exist_ok=True)
    net = None
    volumes = []
    for case in tqdm(cases, desc="stage 1a pseudo-HR volumes", unit="case", dynamic_ncols=True):
        image_path = os.path.join(cache, f"{case.identifier}_image.npy")
        label_path = os.path.join(cache, f"{case.identifier}_labels.npy")
        if os.path.isfile(image_path) and os.path.isfile(label_path):
            volumes.append((np.load(image_path), np.load(label_path)))
            continue
        if net is None:
            net = load_stage_network(model_folder, "1a", device)
        volume = network_input(case.image, case.labels, config.num_classes)
        image, probabilities = plane_super_resolve(net, volume, device)
        labels = probabilities.argmax(0).astype(np.int16)
        for path, array in ((image_path, image), (label_path, labels)):
            save_npy_atomically(path, array)
        volumes.append((image, labels))
    log(f"stage 1a pseudo-HR volumes ready for {len(volumes)} case(s) in {cache}")
    return volumes


def stage_1a_prior(net: PlaneSRNet, volume: DegradedVolume, axis: int, num_classes: int, device: torch.device
                   ) -> np.ndarray:
    """Stage 1a applied to the copy of ``volume`` degraded along fine axis ``axis`` (2 or 3).

    Returns:
        (C+K, S, r*n, B) or (C+K, S, A, r*n) float16: image and label probabilities, HR again along ``axis``.
    """
    image = volume.degraded_images[axis]
    onehot_input = network_input(image, volume.degraded_labels[axis], num_classes)
    order = (0, axis, 1, 5 - axis)  # degraded axis first, as stage 1a expects
    estimate = plane_estimate(net, np.ascontiguousarray(onehot_input.transpose(order)), device)
    return estimate.transpose(np.argsort(order)).astype(np.float16)


def attach_stage_1a_priors(model_folder: str, identifiers: list[str], volumes: list[DegradedVolume],
                           config: SRConfig, device: torch.device) -> None:
    """Stages 1b/1c refine stage 1a: their training pairs carry 1a's estimate of the target slices (cached)."""
    cache = os.path.join(stage_dir(model_folder, "1a"), "priors")
    os.makedirs(cache, exist_ok=True)
    net = None
    for identifier, volume in tqdm(list(zip(identifiers, volumes, strict=True)), desc="stage 1a priors", unit="case",
                                   dynamic_ncols=True):
        for axis in (2, 3):
            path = os.path.join(cache, f"{identifier}_axis{axis}.npy")
            if not os.path.isfile(path):
                if net is None:
                    net = load_stage_network(model_folder, "1a", device)
                save_npy_atomically(path, stage_1a_prior(net, volume, axis, config.num_classes, device))
            volume.priors[axis] = np.load(path)
