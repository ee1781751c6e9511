"""Initialise :class:`SliceInterpolationNet` from a public FLAVR video-interpolation checkpoint.

FLAVR's parameter names (``encoder.layerN.i.conv1.0.weight`` …) are mapped onto ours; the stem and
the output layers are re-initialised because their channel counts differ (RGB video vs MRI
image + label channels). Only tensors whose shapes match are loaded (the paper preset's widths
64-128-256-512 match FLAVR's).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from rehrseg_nnunet.errors import RehrsegInputError

# (FLAVR pattern, our replacement); applied to names without the DataParallel "module." prefix
_RULES: tuple[tuple[str, str], ...] = (
    (r"^encoder\.layer(\d)\.(\d+)\.conv1\.0\.", "encoder.stages.{l}.{b}.conv_a."),
    (r"^encoder\.layer(\d)\.(\d+)\.conv2\.0\.", "encoder.stages.{l}.{b}.conv_b."),
    (r"^encoder\.layer(\d)\.(\d+)\.fg\.attn_layer\.0\.", "encoder.stages.{l}.{b}.gate.fc."),
    (r"^encoder\.layer(\d)\.(\d+)\.downsample\.0\.", "encoder.stages.{l}.{b}.shortcut."),
    (r"^decoder\.(\d)\.(?:conv|upconv)\.0\.", "decoder.{d}.conv."),
    (r"^decoder\.(\d)\.(?:conv|upconv)\.1\.attn_layer\.0\.", "decoder.{d}.gate.fc."),
    (r"^feature_fuse\.conv\.0\.", "fuse."),
)
#: FLAVR layers that are re-initialised: the RGB stem and the RGB output conv.
REINITIALISED = (r"^encoder\.stem\.", r"^outconv\.")


def map_flavr_name(name: str) -> str | None:
    """Our parameter name for a FLAVR parameter name, or None for re-initialised / unknown layers."""
    name = name[len("module."):] if name.startswith("module.") else name
    for pattern, replacement in _RULES:
        match = re.match(pattern, name)
        if match:
            groups = match.groups()
            if replacement.startswith("encoder"):
                prefix = replacement.format(l=int(groups[0]) - 1, b=groups[1])
            elif replacement.startswith("decoder"):
                prefix = replacement.format(d=groups[0])
            else:
                prefix = replacement
            return prefix + name[match.end():]
    return None


@dataclass
class FlavrLoadReport:
    loaded: list[str]
    reinitialised: list[str]
    shape_mismatch: list[str]
    unknown: list[str]

    def summary(self) -> str:
        return (f"FLAVR init: {len(self.loaded)} tensors loaded, {len(self.reinitialised)} re-initialised "
                f"(stem/output), {len(self.shape_mismatch)} skipped for shape, {len(self.unknown)} unknown")


def load_flavr_weights(net: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> FlavrLoadReport:
    """Copy FLAVR tensors into ``net`` where names map and shapes match."""
    own = net.state_dict()
    report = FlavrLoadReport([], [], [], [])
    updates = {}
    for name, tensor in state_dict.items():
        plain = name[len("module."):] if name.startswith("module.") else name
        if any(re.match(p, plain) for p in REINITIALISED):
            report.reinitialised.append(name)
            continue
        target = map_flavr_name(name)
        if target is None or target not in own:
            report.unknown.append(name)
        elif tuple(own[target].shape) != tuple(tensor.shape):
            report.shape_mismatch.append(name)
        else:
            updates[target] = tensor
            report.loaded.append(target)
    own.update(updates)
    net.load_state_dict(own)
    return report


def read_flavr_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a FLAVR checkpoint file (plain, or under 'state_dict')."""
    if not os.path.isfile(path):
        raise RehrsegInputError(f"{path} does not exist; pass --init-flavr the FLAVR 4x checkpoint (FLAVR_4x.pth).")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file unpickles into any error
        raise RehrsegInputError(f"{path} is not a readable torch checkpoint ({type(error).__name__}); pass "
                                "--init-flavr the FLAVR 4x checkpoint (FLAVR_4x.pth).") from None
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not any(map_flavr_name(k) for k in checkpoint):
        raise RehrsegInputError(f"{path} holds no FLAVR parameters (encoder.layerN…); pass a FLAVR checkpoint.")
    return checkpoint
