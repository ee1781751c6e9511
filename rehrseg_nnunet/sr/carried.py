"""The SR model that an SR-guided REHRSeg network carries inside its own weights.

A guided network predicts from the super-resolved image, so prediction needs the dataset's SR model. It
travels as a ``uint8`` buffer of the network (``carried_sr.bundle``): its bytes are the SHA-256 of the
payload followed by the payload (``torch.save`` of the SR config and the final stage networks). Being
part of ``network_weights``, it is in every checkpoint, so nnU-Net's own export, install, ``--val`` and both
predictors carry it without the source dataset or its SR model folder.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict

import torch
from torch import nn

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.sr.config import SRConfig, checkpoint_sha256, final_checkpoint, verified_final_checkpoint

DIGEST_BYTES = 32
#: what ``rehrseg_predict`` tells a user whose model carries no usable SR model
RETRAIN_HINT = ("retrain the model (nnUNetv2_train ... -tr REHRSegTrainer) or re-install it from its export, "
                "or predict with a paper-network model (-tr REHRSegTrainer_paper)")


def sr_model_payload(model_folder: str, stage: str, expected_sha256: str | None) -> dict:
    """The SR model folder's config and final stage networks, after checking the stage's SHA-256.

    Args:
        model_folder: output of ``rehrseg_train_sr``.
        stage: the stage that made the pseudo-HR data (the stage contract's ``sr_stage``).
        expected_sha256: the stage contract's ``sr_checkpoint_sha256`` (None: not checked).

    Returns:
        ``{"config": dict, "stage": str, "networks": {stage: checkpoint}, "sha256": {stage: hex}}``.

    Raises:
        RehrsegInputError: a missing file or a checksum that differs, in one line.
    """
    path = final_checkpoint(model_folder, stage)
    if not os.path.isfile(path):
        raise RehrsegInputError(f"{path} is missing: the SR model that made this dataset cannot be carried into the "
                                "REHRSeg model; restore it, or train REHRSegTrainer_paper (no SR model needed).")
    if expected_sha256 and checkpoint_sha256(model_folder, stage) != expected_sha256:
        raise RehrsegInputError(f"{path} is not the SR network that made this dataset (its SHA-256 differs from the "
                                "dataset.json's); restore that model, or re-run rehrseg_make_pseudohr with this one.")
    networks, sha256 = {}, {}
    needed = [stage]
    while needed:  # the final stage, and stage 1a when it refines 1a's prior
        current = needed.pop()
        checkpoint = verified_final_checkpoint(model_folder, current)
        networks[current] = {key: checkpoint[key] for key in ("network", "network_kwargs", "model")}
        sha256[current] = checkpoint_sha256(model_folder, current)
        if current != "1a" and checkpoint["network_kwargs"].get("refine_prior", False):
            needed.append("1a")
    return {"config": asdict(SRConfig.load(model_folder)), "stage": stage, "networks": networks, "sha256": sha256}


def encode_bundle(payload: dict) -> torch.Tensor:
    """The payload as the carried buffer: SHA-256 of the serialised payload, then the payload."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    return torch.frombuffer(bytearray(hashlib.sha256(data).digest() + data), dtype=torch.uint8)


def decode_bundle(bundle: torch.Tensor, source: str) -> dict:
    """The payload of a carried buffer, its SHA-256 verified.

    Raises:
        RehrsegInputError: an empty buffer (no SR model carried) or one whose bytes were altered.
    """
    data = bytes(bundle.detach().cpu().numpy().tobytes())
    if len(data) <= DIGEST_BYTES:
        raise RehrsegInputError(f"{source} carries no SR model, but its network predicts from super-resolved "
                                f"images; {RETRAIN_HINT}.")
    digest, payload = data[:DIGEST_BYTES], data[DIGEST_BYTES:]
    if hashlib.sha256(payload).digest() != digest:
        raise RehrsegInputError(f"the SR model carried by {source} is damaged (its SHA-256 does not match); "
                                f"{RETRAIN_HINT}.")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


class CarriedSRModel(nn.Module):
    """Holds the bundle as a buffer of any length (``load_state_dict`` takes the stored one's size)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("bundle", torch.zeros(0, dtype=torch.uint8))

    @property
    def is_empty(self) -> bool:
        return self.bundle.numel() <= DIGEST_BYTES

    def carry(self, payload: dict) -> None:
        self.bundle = encode_bundle(payload).to(self.bundle.device)

    def payload(self, source: str) -> dict:
        return decode_bundle(self.bundle, source)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # the stored bundle replaces ours whatever its length; a checkpoint without one leaves it empty, and
        # prediction then says so in one line (not a size-mismatch traceback from load_state_dict)
        key = prefix + "bundle"
        stored = state_dict.get(key)
        self.bundle = (stored.detach().to(torch.uint8).clone() if stored is not None
                       else torch.zeros(0, dtype=torch.uint8)).to(self.bundle.device)
