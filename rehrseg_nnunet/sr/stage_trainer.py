"""One SR stage's training: the loss (L1 + CE + Dice, UASR terms in stage 1c) and Adam + OneCycle with
atomic, resumable checkpoints; and the fixed scale of the written uncertainty."""

from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import checkpoint_damage, keep_as_previous, promote_checkpoint
from rehrseg_nnunet.sr.config import (
    STAGES,
    SRConfig,
    atomic_save,
    final_checkpoint,
    latest_checkpoint,
    previous_checkpoint,
    read_checkpoint,
    save_checkpoint_with_hash,
    save_final_checkpoint,
    stage_dir,
)
from rehrseg_nnunet.sr.networks import SliceInterpolationNet

#: Lower bound of sigma in the UASR loss (normalised intensity units): errors below 1 % of the
#: image's standard deviation are noise, and a smaller floor lets e / sigma weigh background x1000.
SIGMA_FLOOR = 0.01
#: The attention and sigma layers learn at this multiple of the stage learning rate: sigma must move
#: several logits in a stage of a few thousand steps, and Adam moves a parameter ~lr per step.
UNCERTAINTY_LR_FACTOR = 10.0
UNCERTAINTY_CALIBRATION_BATCHES = 32



def sr_loss(output: torch.Tensor, image: torch.Tensor, labels: torch.Tensor, known: torch.Tensor,
            image_channels: int, uncertainty: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 on the image, CE + Dice on the label channels (samples with known labels), UASR terms if given.

    UASR (METHOD.md 1c): ``mean(e / sigma + log sigma) + L1(sigma, e.detach())`` with the per-voxel
    error e of the joint image + label reconstruction: the mean |image error| (normalised units) plus,
    where the label is known, the probability given to a wrong class (1 - p_true, detached so the
    label channels keep their own loss). Without the label part sigma would only see intensity
    edges, while stage 2 uses it to down-weight uncertain *labels*.
    """
    error = (output[:, :image_channels] - image).abs()
    loss = error.mean()
    parts = {"l1": float(loss.detach())}
    logits = output[:, image_channels:]
    chosen = known > 0
    if chosen.any():
        label_logits, label_target = logits[chosen], labels[chosen]
        ce = F.cross_entropy(label_logits, label_target)
        probabilities = torch.softmax(label_logits, 1)
        target = F.one_hot(label_target, logits.shape[1]).movedim(-1, 1).float()
        dims = (0,) + tuple(range(2, target.ndim))
        intersection = (probabilities * target).sum(dims)
        dice = (2 * intersection + 1e-5) / (probabilities.sum(dims) + target.sum(dims) + 1e-5)
        present = target.sum(dims) > 0
        dice_loss = 1 - dice[present].mean()
        loss = loss + ce + dice_loss
        parts["label"] = float((ce + dice_loss).detach())
    if uncertainty is not None:
        sigma = uncertainty.clamp_min(SIGMA_FLOOR)
        err = error.mean(1, keepdim=True)
        if chosen.any():
            p_true = torch.softmax(logits.detach(), 1).gather(1, labels.unsqueeze(1))
            err = err + (1 - p_true) * chosen.view((-1,) + (1,) * (err.ndim - 1))
        uasr = (err / sigma + torch.log(sigma)).mean() + (sigma - err.detach()).abs().mean()
        loss = loss + uasr
        parts["uasr"] = float(uasr.detach())
        parts["sigma"] = float(uncertainty.detach().mean())
    return loss, parts


@torch.no_grad()
def calibrate_uncertainty_scale(net: SliceInterpolationNet, sampler, seed: int, device: torch.device,
                                batch_size: int, batches: int = UNCERTAINTY_CALIBRATION_BATCHES) -> float:
    """The written uncertainty's fixed scale: the 99th percentile of sigma over training pairs.

    u = min(sigma / scale, 1) then reads the same for every case (no per-volume stretching): u = 1
    marks the 1 % most uncertain voxels the model saw in training. Deterministic (fixed seed).
    """
    net.eval()
    values = []
    for index in range(batches):
        rng = np.random.default_rng((seed, 99, index))
        frames, prior, *_ = [torch.from_numpy(a).to(device) for a in sampler.sample(rng, batch_size)]
        values.append(net(frames, prior)["uncertainty"].flatten().float().cpu())
    return float(torch.quantile(torch.cat(values)[:: 7], 0.99))


class StageTrainer:
    """Adam + OneCycle training of one stage with atomic, resumable checkpoints.

    Args:
        model_folder: the SR model folder.
        stage: ``1a``, ``1b`` or ``1c``.
        net: the network (already initialised).
        network: ``plane`` or ``slice`` (to rebuild it from the checkpoint).
        network_kwargs: its constructor kwargs.
        sampler: a pair sampler.
        steps, batch_size, learning_rate: schedule.
        device: torch device.
        seed: base seed; each step reseeds from (seed, step) so a resumed run samples like an uninterrupted one.
        save_every: checkpoint interval in steps.
        config: the model's config; the final checkpoint's SHA-256 is recorded in it (and its config.json).
    """

    def __init__(self, model_folder: str, stage: str, net: torch.nn.Module, network: str, network_kwargs: dict,
                 sampler, steps: int, batch_size: int, learning_rate: float, device: torch.device, seed: int,
                 save_every: int, log, fast_prefixes: tuple[str, ...] = (), config: SRConfig | None = None):
        self.model_folder, self.stage, self.net = model_folder, stage, net.to(device)
        self.config = config
        self.network, self.network_kwargs = network, network_kwargs
        self.sampler, self.steps, self.batch_size = sampler, steps, batch_size
        self.device, self.seed, self.save_every, self.log = device, seed, max(1, save_every), log
        slow, fast = [], []
        for name, parameter in net.named_parameters():
            (fast if fast_prefixes and name.startswith(fast_prefixes) else slow).append(parameter)
        groups = [{"params": slow}] + ([{"params": fast}] if fast else [])
        rates = [learning_rate] + ([learning_rate * UNCERTAINTY_LR_FACTOR] if fast else [])
        self.optimizer = torch.optim.Adam(groups, lr=learning_rate, betas=(0.9, 0.99))
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=rates, total_steps=steps)
        self.step = 0

    def _checkpoint(self) -> dict:
        return {"model": self.net.state_dict(), "network": self.network, "network_kwargs": self.network_kwargs,
                "step": self.step, "steps": self.steps}

    def resume(self) -> None:
        """Continue from the latest checkpoint; from the previous one when the latest is unreadable (or was
        being replaced when the run stopped)."""
        checkpoint, path = resumable_checkpoint(self.model_folder, self.stage, self.log)
        if checkpoint is None:
            return
        if checkpoint["steps"] != self.steps:
            raise RehrsegInputError(
                f"{path} was trained towards {checkpoint['steps']} steps, not {self.steps}; pass the same --steps to "
                "continue."
            )
        self.net.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.step = checkpoint["step"]
        latest = latest_checkpoint(self.model_folder, self.stage)
        if path != latest:  # the good previous checkpoint becomes the latest (replacing an unreadable one)
            promote_checkpoint(path, latest)
        self.log(f"stage {self.stage}: resumed from step {self.step} of {self.steps}")

    def _save_latest(self) -> None:
        """Write a new checkpoint_latest.pth; the one it replaces is kept as checkpoint_previous.pth."""
        checkpoint = self._checkpoint()
        checkpoint.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())
        latest = latest_checkpoint(self.model_folder, self.stage)
        keep_as_previous(latest, previous_checkpoint(self.model_folder, self.stage))  # latest is never absent
        save_checkpoint_with_hash(checkpoint, latest)

    def run(self, loss_fn) -> None:
        os.makedirs(stage_dir(self.model_folder, self.stage), exist_ok=True)
        self.net.train()
        started = time.time()
        start_step = self.step
        bar = tqdm(total=self.steps, initial=self.step, desc=f"SR stage {self.stage}", unit="step", dynamic_ncols=True)
        running = None
        while self.step < self.steps:
            rng = np.random.default_rng((self.seed, STAGES.index(self.stage), self.step))
            batch = [torch.from_numpy(a).to(self.device) for a in self.sampler.sample(rng, self.batch_size)]
            loss, parts = loss_fn(self.net, *batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            value = float(loss.detach())
            running = value if running is None else 0.95 * running + 0.05 * value
            bar.set_postfix(loss=f"{running:.4f}", **{k: f"{v:.3f}" for k, v in parts.items()})
            bar.update(1)
            if self.step % self.save_every == 0 or self.step == self.steps:
                self._save_latest()
        bar.close()
        if self.config is not None:
            save_final_checkpoint(self._checkpoint(), self.model_folder, self.stage, self.config)
        else:
            atomic_save(self._checkpoint(), final_checkpoint(self.model_folder, self.stage))
        seconds = time.time() - started
        self.log(f"stage {self.stage}: finished {self.steps} steps ({self.step - start_step} in this run, "
                 f"{seconds:.1f} s), final loss {running if running is not None else float('nan'):.4f}")


LATEST_KEYS = ("model", "network", "network_kwargs", "step", "steps", "optimizer", "scheduler")


def verified_checkpoint(path: str, fix: str, log=None) -> dict:
    """:func:`read_checkpoint` of a latest checkpoint after checking it against its SHA-256 record (a checkpoint
    without one, written before records were, loads unverified: ``log`` is told once).

    Raises:
        RehrsegInputError: damaged (SHA-256 differs), truncated or unreadable; the message names ``fix``.
    """
    damage = checkpoint_damage(path, log)
    if damage is not None:  # refused before its bytes are unpickled
        raise RehrsegInputError(f"{path} is {damage}; {fix}.")
    return read_checkpoint(path, fix, LATEST_KEYS)


def resumable_checkpoint(model_folder: str, stage: str, log=None) -> tuple[dict | None, str]:
    """The checkpoint ``--continue`` resumes a stage from: checkpoint_latest.pth, else checkpoint_previous.pth
    (kept when a new latest is written) when the latest is damaged (its SHA-256 differs from its record),
    unreadable or missing.

    Returns:
        (checkpoint, its path), or (None, "") when the stage has not written a checkpoint yet.

    Raises:
        RehrsegInputError: the latest checkpoint is damaged or unreadable and there is no verified previous one.
    """
    latest, previous = latest_checkpoint(model_folder, stage), previous_checkpoint(model_folder, stage)
    fix = (f"delete it and re-run rehrseg_train_sr --continue with the same options to restart stage {stage} from "
           f"step 0 (the finished stages are kept)")
    if not os.path.isfile(latest):
        if not os.path.isfile(previous):
            return None, ""
        return verified_checkpoint(previous, fix, log), previous  # a run stopped while replacing the latest
    try:
        return verified_checkpoint(latest, fix, log), latest
    except RehrsegInputError as error:
        if not os.path.isfile(previous):
            raise
        try:
            checkpoint = verified_checkpoint(previous, fix, log)
        except RehrsegInputError:
            raise error from None
        if log is not None:
            why = "damaged (its SHA-256 differs from its record)" if " is damaged (" in str(error) else \
                "truncated or unreadable"
            log(f"stage {stage}: {latest} is {why}; resuming from {previous} (step {checkpoint['step']}) instead")
        return checkpoint, previous


def stage_learning_rate(settings: dict, stage: str) -> float:
    """A preset's learning rate for one stage (one number for all stages, or one per stage)."""
    rate = settings["learning_rate"]
    return float(rate[stage] if isinstance(rate, dict) else rate)


def plane_loss(image_channels: int):
    def loss_fn(net, inputs, image, labels, known):
        return sr_loss(net(inputs), image, labels, known, image_channels)
    return loss_fn


def slice_loss(image_channels: int):
    def loss_fn(net, frames, prior, image, labels, known):
        result = net(frames, prior)
        return sr_loss(result["output"], image, labels, known, image_channels, result.get("uncertainty"))
    return loss_fn
