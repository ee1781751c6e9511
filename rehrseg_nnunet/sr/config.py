"""Presets and the model folder's config.json (everything needed to rebuild and apply the SR networks)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

import torch

from rehrseg_nnunet import __version__
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import write_atomically, write_json_atomically

STAGES = ("1a", "1b", "1c")
CONFIG_FILE = "config.json"

#: Network sizes and training settings. "small" trains on 2 CPU cores in minutes; "paper" is the
#: authors' setting (WDSR 16 blocks x 32 features, 96x96 patches, batch 32, 8.32 M patches in
#: stage 1a = 260 000 steps; FLAVR ResNet-18 widths; 20 000 UASR fine-tuning steps; M = 16 attention maps
#: from a 1x1 conv). ``learning_rate`` is one number or one per stage.
PRESETS: dict[str, dict] = {
    "small": {
        "plane_net": {"features": 24, "num_blocks": 4, "expansion": 3},
        "slice_net": {"widths": [16, 24, 32, 48], "blocks": [1, 1, 1, 1]},
        "num_attention_maps": 4,  # attention conv 7x7 (the default of ``attention_kernel``)
        "steps": {"1a": 2000, "1b": 500, "1c": 1500},
        "batch_size": {"1a": 16, "1b": 4, "1c": 4},
        "patch_size": {"1a": 64, "1b": 64, "1c": 64},
        "learning_rate": 5e-4,
    },
    "paper": {
        "plane_net": {"features": 32, "num_blocks": 16, "expansion": 4},
        "slice_net": {"widths": [64, 128, 256, 512], "blocks": [2, 2, 2, 2]},
        "num_attention_maps": 16,
        "attention_kernel": 1,
        "steps": {"1a": 260000, "1b": 50000, "1c": 20000},
        "batch_size": {"1a": 32, "1b": 8, "1c": 8},
        "patch_size": {"1a": 96, "1b": 96, "1c": 96},
        "learning_rate": 5e-4,
    },
}


@dataclass
class SRConfig:
    """The model folder's config.json."""

    dataset: str
    fingerprint: str
    slice_axis: int
    scale_factor: int
    lr_spacing: list[float]
    hr_spacing: list[float]
    channel_names: dict
    label_values: list[int]
    preset: str
    profile: str
    profile_fwhm: float
    steps: dict
    seed: int
    settings: dict = field(default_factory=dict)
    #: sigma written as uncertainty 1 (u = min(sigma / scale, 1)); set when stage 1c has finished
    uncertainty_scale: float | None = None
    version: str = __version__

    @property
    def image_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        return len(self.label_values)

    def plane_net_kwargs(self) -> dict:
        return {"image_channels": self.image_channels, "num_classes": self.num_classes,
                "scale_factor": self.scale_factor, **self.settings["plane_net"]}

    def slice_net_kwargs(self, uncertainty_head: bool) -> dict:
        return {"image_channels": self.image_channels, "num_classes": self.num_classes,
                "scale_factor": self.scale_factor, "widths": tuple(self.settings["slice_net"]["widths"]),
                "blocks": tuple(self.settings["slice_net"]["blocks"]),
                "num_attention_maps": self.settings["num_attention_maps"] if uncertainty_head else 0,
                "attention_kernel": self.settings.get("attention_kernel", 7), "refine_prior": True}

    def save(self, folder: str) -> None:
        write_json_atomically(os.path.join(folder, CONFIG_FILE), asdict(self))

    @classmethod
    def load(cls, folder: str) -> SRConfig:
        path = os.path.join(folder, CONFIG_FILE)
        if not os.path.isfile(path):
            raise RehrsegInputError(f"{path} is missing: {folder} is not an SR model folder; run rehrseg_train_sr "
                                    "first.")
        with open(path) as handle:
            data = json.load(handle)
        return cls(**data)


def stage_dir(model_folder: str, stage: str) -> str:
    return os.path.join(model_folder, f"stage_{stage}")


def final_checkpoint(model_folder: str, stage: str) -> str:
    return os.path.join(stage_dir(model_folder, stage), "checkpoint_final.pth")


def latest_checkpoint(model_folder: str, stage: str) -> str:
    return os.path.join(stage_dir(model_folder, stage), "checkpoint_latest.pth")


def checkpoint_sha256(model_folder: str, stage: str) -> str:
    """SHA-256 of a stage's final checkpoint: identifies the network that made (and teaches) a pseudo-HR dataset."""
    digest = hashlib.sha256()
    with open(final_checkpoint(model_folder, stage), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_device(name: str | None = None) -> torch.device:
    """cuda > mps > cpu unless ``name`` says otherwise."""
    if name:
        if name == "cuda" and not torch.cuda.is_available():
            raise RehrsegInputError("-device cuda was requested but no CUDA GPU is visible; use -device cpu.")
        if name == "mps" and not torch.backends.mps.is_available():
            raise RehrsegInputError("-device mps was requested but MPS is not available; use -device cpu.")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def atomic_save(obj: object, path: str) -> None:
    """torch.save to a temporary name and rename, so an interrupted write never leaves a corrupt file."""
    write_atomically(path, lambda handle: torch.save(obj, handle))
