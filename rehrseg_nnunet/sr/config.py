"""Presets and the model folder's config.json (everything needed to rebuild and apply the SR networks)."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from rehrseg_nnunet import __version__
from rehrseg_nnunet.dataset_io import read_json_file
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import (
    file_sha256,
    hash_mismatch,
    write_atomically,
    write_checkpoint_bytes,
    write_json_atomically,
)

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
    #: SHA-256 of each finished stage's checkpoint_final.pth, recorded when rehrseg_train_sr writes it (a model
    #: from an older version has none: its checkpoints are then only checked for readability)
    checkpoint_sha256: dict[str, str] = field(default_factory=dict)

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
        data = read_json_file(path, f"{folder} is not an SR model folder; run rehrseg_train_sr first",
                              "restore the file written by rehrseg_train_sr or retrain the model")
        try:
            return cls(**data)
        except TypeError as error:
            raise RehrsegInputError(f"{path} is not a valid SR model config ({error}); restore the file written by "
                                    f"rehrseg_train_sr or retrain the model.") from None


def stage_dir(model_folder: str, stage: str) -> str:
    return os.path.join(model_folder, f"stage_{stage}")


def final_checkpoint(model_folder: str, stage: str) -> str:
    return os.path.join(stage_dir(model_folder, stage), "checkpoint_final.pth")


def latest_checkpoint(model_folder: str, stage: str) -> str:
    return os.path.join(stage_dir(model_folder, stage), "checkpoint_latest.pth")


def previous_checkpoint(model_folder: str, stage: str) -> str:
    """The latest checkpoint before the current one (kept when a new latest is written)."""
    return os.path.join(stage_dir(model_folder, stage), "checkpoint_previous.pth")


def checkpoint_sha256(model_folder: str, stage: str) -> str:
    """SHA-256 of a stage's final checkpoint: identifies the network that made (and teaches) a pseudo-HR dataset."""
    return file_sha256(final_checkpoint(model_folder, stage))


#: what ``torch.load`` raises for a truncated, corrupt or foreign file: almost anything (a flipped byte of a pickle
#: gives MemoryError, OverflowError, UnicodeDecodeError, UnpicklingError, RuntimeError, TypeError, ...)
UNREADABLE_CHECKPOINT_ERRORS = (Exception,)
#: entries every SR checkpoint holds (the latest one also holds optimizer and scheduler states)
CHECKPOINT_KEYS = ("model", "network", "network_kwargs", "step", "steps")


def read_checkpoint(path: str, fix: str | Callable[[], str], keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict:
    """``torch.load`` of an SR checkpoint on the CPU; one line naming the file and ``fix`` when it is truncated,
    corrupt or not an SR checkpoint.

    Args:
        path: the checkpoint file.
        fix: the recovery the message names (a callable is only called when the file is bad).
        keys: entries the checkpoint must hold.

    Raises:
        RehrsegInputError: the file cannot be read, or lacks one of ``keys``.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except UNREADABLE_CHECKPOINT_ERRORS as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RehrsegInputError(f"{path} is truncated or unreadable ({reason[:120]}); "
                                f"{fix() if callable(fix) else fix}.") from None
    missing = [key for key in keys if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise RehrsegInputError(f"{path} is not an SR checkpoint of rehrseg_train_sr (no {', '.join(missing)}); "
                                f"{fix() if callable(fix) else fix}.")
    return checkpoint


def final_checkpoint_recovery(model_folder: str, stage: str) -> str:
    """How to get a good final checkpoint back: rewrite it from the stage's finished latest checkpoint, or
    retrain."""
    latest = latest_checkpoint(model_folder, stage)
    finished = False
    if os.path.isfile(latest) and hash_mismatch(latest) is None:
        try:
            checkpoint = read_checkpoint(latest, "")
            finished = checkpoint["step"] == checkpoint["steps"]
        except RehrsegInputError:
            pass
    if finished:
        return (f"delete it and re-run rehrseg_train_sr --continue with the same options, which rewrites it from "
                f"{latest} (kept, with the later stages)")
    later = ", ".join(stage_dir(model_folder, s) for s in STAGES[STAGES.index(stage):])
    return (f"retrain that stage and the later ones: delete {later} and re-run rehrseg_train_sr --continue with the "
            f"same options (or train a new model with -o another folder)")


def verified_final_checkpoint(model_folder: str, stage: str) -> dict:
    """A stage's checkpoint_final.pth, loaded on the CPU, after checking that it is this model's own.

    Checks: the file exists; its SHA-256 is the one rehrseg_train_sr recorded in config.json (when recorded: a
    checkpoint of another SR model swapped in, or a damaged one, is refused); it loads and holds an SR network.

    Returns:
        The checkpoint dict (``model``, ``network``, ``network_kwargs``, ``step``, ``steps``).

    Raises:
        RehrsegInputError: one line naming the file and the recovery.
    """
    path = final_checkpoint(model_folder, stage)
    if not os.path.isfile(path):
        raise RehrsegInputError(f"{path} is missing: SR stage {stage} has not finished; run rehrseg_train_sr "
                                f"--continue with the same options.")
    expected = SRConfig.load(model_folder).checkpoint_sha256.get(stage)
    if expected:
        actual = file_sha256(path)
        if actual != expected:
            raise RehrsegInputError(
                f"{path} is not the stage {stage} network this SR model trained (SHA-256 {actual[:12]}... but "
                f"config.json records {expected[:12]}...: a checkpoint of another model, or a damaged file); "
                f"{final_checkpoint_recovery(model_folder, stage)}.")
    return read_checkpoint(path, lambda: final_checkpoint_recovery(model_folder, stage))


def check_checkpoint_fits_config(checkpoint: dict, config: SRConfig, model_folder: str, stage: str) -> None:
    """The network a final checkpoint holds must be the one config.json describes (channels, classes, r and the
    preset's sizes): an edited config.json would otherwise apply the network with another r or label set.

    Raises:
        RehrsegInputError: naming the first differing setting and the fix.
    """
    stored = checkpoint["network_kwargs"]
    if checkpoint["network"] == "plane":
        expected = config.plane_net_kwargs()
    else:
        expected = config.slice_net_kwargs(uncertainty_head=bool(stored.get("num_attention_maps", 0)))
    expected.pop("refine_prior", None)  # not a config setting

    def plain(value: object) -> object:
        return list(value) if isinstance(value, tuple) else value

    for key in sorted(set(expected) & set(stored)):
        if plain(expected[key]) != plain(stored[key]):
            raise RehrsegInputError(
                f"{os.path.join(model_folder, CONFIG_FILE)} gives {key} = {plain(expected[key])} but the stage {stage} "
                f"network in {final_checkpoint(model_folder, stage)} was trained with {key} = {plain(stored[key])}; "
                f"restore the config.json that rehrseg_train_sr wrote (or retrain the model).")


def save_final_checkpoint(checkpoint: dict, model_folder: str, stage: str, config: SRConfig) -> str:
    """Write a stage's checkpoint_final.pth and record its SHA-256 in ``config`` (saved to config.json first, so
    that a final checkpoint never exists without its record). Returns the SHA-256."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    config.checkpoint_sha256 = {**config.checkpoint_sha256, stage: digest}
    config.save(model_folder)
    write_atomically(final_checkpoint(model_folder, stage), lambda handle: handle.write(data))
    return digest


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


def save_checkpoint_with_hash(obj: object, path: str) -> str:
    """torch.save of a checkpoint, written atomically with its SHA-256 record (``NAME.pth.sha256``).

    Args:
        obj: the checkpoint.
        path: where it goes.

    Returns:
        The SHA-256.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_checkpoint_bytes(path, buffer.getvalue())
