"""``rehrseg_train_sr``: stages 1a -> 1b -> 1c of the self-supervised SR (METHOD.md, stage 1).

Each stage checkpoints to ``<model>/stage_<s>/checkpoint_latest.pth`` while it trains (atomically)
and to ``checkpoint_final.pth`` when done; ``--continue`` resumes the first unfinished stage from its
latest checkpoint. Nothing is written before every case of the dataset has been checked.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rehrseg_nnunet.dataset_io import (DatasetGeometry, RawDataset, case_arrays, check_label_values, determine_geometry, fingerprint,
                                       load_raw_dataset, read_case, save_npy_atomically)
from rehrseg_nnunet.degradation import profile_fwhm
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.geometry import Grid
from rehrseg_nnunet.sr.config import (PRESETS, STAGES, SRConfig, atomic_save, final_checkpoint, latest_checkpoint,
                                      select_device, stage_dir)
from rehrseg_nnunet.sr.flavr import load_flavr_weights, read_flavr_checkpoint
from rehrseg_nnunet.sr.infer import (label_indices, load_stage_network, network_input, normalisation,
                                     plane_estimate, plane_super_resolve)
from rehrseg_nnunet.sr.networks import (PlaneSRNet, SliceInterpolationNet, head_parameter_prefixes,
                                        uncertainty_parameter_prefixes)
from rehrseg_nnunet.sr.pairs import DegradedVolume, FramePairSampler, PlanePairSampler


#: Lower bound of sigma in the UASR loss (normalised intensity units): errors below 1 % of the
#: image's standard deviation are noise, and a smaller floor lets e / sigma weigh background x1000.
SIGMA_FLOOR = 0.01
#: The attention and sigma layers learn at this multiple of the stage learning rate: sigma must move
#: several logits in a stage of a few thousand steps, and Adam moves a parameter ~lr per step.
UNCERTAINTY_LR_FACTOR = 10.0
UNCERTAINTY_CALIBRATION_BATCHES = 32


@dataclass
class LRCase:
    identifier: str
    image: np.ndarray  # (C, S, A, B), normalised per channel
    labels: np.ndarray  # (S, A, B) class indices


def default_model_folder(dataset_name: str) -> str:
    results = os.environ.get("nnUNet_results")
    if not results:
        raise RehrsegInputError("The environment variable nnUNet_results is not set; export it or pass -o MODEL_FOLDER.")
    return os.path.join(results, dataset_name, "rehrseg_sr")


def load_training_cases(dataset: RawDataset, slice_axis: int | None, scale_factor: int | None
                        ) -> tuple[list[LRCase], DatasetGeometry, str]:
    """Read and check every training case before anything is written."""
    raw = []
    for case in dataset.training:
        images, label = read_case(case, require_label=True)
        raw.append((case, images, label))
    grids = [(case.image_files[0], Grid.from_image(images[0])) for case, images, _ in raw]
    geometry = determine_geometry(grids, slice_axis, scale_factor)
    cases = []
    for case, images, label in raw:
        image, labels = case_arrays(images, label, geometry.slice_axis)
        check_label_values(case.label_file, labels, dataset.label_values)
        if min(image.shape[2:]) < 2 * geometry.scale_factor or image.shape[1] < 2:
            raise RehrsegInputError(
                f"{case.image_files[0]} is too small ({image.shape[1:]} voxels) to learn SR from; use larger volumes."
            )
        mean, std = normalisation(image)
        cases.append(LRCase(case.identifier, (image - mean) / std, label_indices(labels, dataset.label_values)))
    return cases, geometry, fingerprint(grids)


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
    """

    def __init__(self, model_folder: str, stage: str, net: torch.nn.Module, network: str, network_kwargs: dict,
                 sampler, steps: int, batch_size: int, learning_rate: float, device: torch.device, seed: int,
                 save_every: int, log, fast_prefixes: tuple[str, ...] = ()):
        self.model_folder, self.stage, self.net = model_folder, stage, net.to(device)
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
        path = latest_checkpoint(self.model_folder, self.stage)
        if not os.path.isfile(path):
            return
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        if checkpoint["steps"] != self.steps:
            raise RehrsegInputError(
                f"{path} was trained towards {checkpoint['steps']} steps, not {self.steps}; pass the same --steps to continue."
            )
        self.net.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.step = checkpoint["step"]
        self.log(f"stage {self.stage}: resumed from step {self.step} of {self.steps}")

    def _save_latest(self) -> None:
        checkpoint = self._checkpoint()
        checkpoint.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())
        atomic_save(checkpoint, latest_checkpoint(self.model_folder, self.stage))

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
        atomic_save(self._checkpoint(), final_checkpoint(self.model_folder, self.stage))
        seconds = time.time() - started
        self.log(f"stage {self.stage}: finished {self.steps} steps ({self.step - start_step} in this run, "
                 f"{seconds:.1f} s), final loss {running if running is not None else float('nan'):.4f}")


def stage_learning_rate(settings: dict, stage: str) -> float:
    """A preset's learning rate for one stage (one number for all stages, or one per stage)."""
    rate = settings["learning_rate"]
    return float(rate[stage] if isinstance(rate, dict) else rate)


def start_uncertainty_head_from_1b(net: SliceInterpolationNet, model_folder: str, num_attention_maps: int,
                                   seed: int) -> None:
    """Stage 1c starts from stage 1b (METHOD.md 1c): the body is copied, the M reconstructions start as
    1b's output layer with a little noise each, the attention and sigma layers start fresh."""
    previous = load_stage_network(model_folder, "1b", torch.device("cpu"))
    skip = head_parameter_prefixes(0)
    body = {k: v for k, v in previous.state_dict().items() if not k.startswith(skip)}
    missing = net.load_state_dict(body, strict=False).missing_keys
    assert all(k.startswith(head_parameter_prefixes(num_attention_maps)) for k in missing)
    net.init_uncertainty_head_from(previous.out, torch.Generator().manual_seed(seed))


def plane_loss(image_channels: int):
    def loss_fn(net, inputs, image, labels, known):
        return sr_loss(net(inputs), image, labels, known, image_channels)
    return loss_fn


def slice_loss(image_channels: int):
    def loss_fn(net, frames, prior, image, labels, known):
        result = net(frames, prior)
        return sr_loss(result["output"], image, labels, known, image_channels, result.get("uncertainty"))
    return loss_fn


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
        image, probabilities = plane_super_resolve(net, network_input(case.image, case.labels, config.num_classes), device)
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
    for identifier, volume in tqdm(list(zip(identifiers, volumes)), desc="stage 1a priors", unit="case",
                                   dynamic_ncols=True):
        for axis in (2, 3):
            path = os.path.join(cache, f"{identifier}_axis{axis}.npy")
            if not os.path.isfile(path):
                if net is None:
                    net = load_stage_network(model_folder, "1a", device)
                save_npy_atomically(path, stage_1a_prior(net, volume, axis, config.num_classes, device))
            volume.priors[axis] = np.load(path)


def train_sr(dataset: str, output: str | None = None, device: str | None = None, preset: str = "small",
             scale_factor: int | None = None, slice_axis: int | None = None, steps: list[int] | None = None,
             seed: int = 12345, resume: bool = False, init_flavr: str | None = None, profile: str = "gaussian",
             save_every: int = 100, attention_maps: int | None = None) -> str:
    """Train the self-SR model of a raw dataset. Returns the model folder.

    Args:
        dataset: nnU-Net dataset id or name under ``nnUNet_raw``.
        output: model folder (default ``nnUNet_results/<dataset>/rehrseg_sr``).
        device: cuda | mps | cpu (auto when None).
        preset: ``small`` or ``paper``.
        scale_factor, slice_axis: overrides of the automatic detection.
        steps: steps of stage 1a, 1b, 1c (one value = all stages).
        seed: random seed.
        resume: continue an interrupted training in ``output``.
        init_flavr: FLAVR checkpoint to initialise the stage 1b network.
        profile: slice profile used to simulate thick slices (``gaussian`` or ``box``).
        save_every: checkpoint interval in steps.
        attention_maps: M of the uncertainty head (default: the preset's).
    """
    if preset not in PRESETS:
        raise RehrsegInputError(f"Preset '{preset}' is unknown; use one of {sorted(PRESETS)}.")
    settings = dict(PRESETS[preset])
    if attention_maps is not None:
        if not 2 <= attention_maps <= 64:
            raise RehrsegInputError(f"--attention-maps {attention_maps} is out of range; use M between 2 and 64.")
        settings["num_attention_maps"] = attention_maps
    raw = load_raw_dataset(dataset)
    torch_device = select_device(device)
    flavr_state = read_flavr_checkpoint(init_flavr) if init_flavr else None
    cases, geometry, data_fingerprint = load_training_cases(raw, slice_axis, scale_factor)
    stage_steps = dict(settings["steps"])
    if steps:
        if len(steps) not in (1, 3) or min(steps) < 1:
            raise RehrsegInputError("--steps takes one positive number (all stages) or three (1a 1b 1c).")
        stage_steps = dict(zip(STAGES, steps * 3 if len(steps) == 1 else steps))
    in_plane = [s for i, s in enumerate(geometry.lr_spacing) if i != geometry.slice_axis]
    fwhm = profile_fwhm(geometry.lr_spacing[geometry.slice_axis], min(in_plane), profile)
    config = SRConfig(dataset=raw.name, fingerprint=data_fingerprint, slice_axis=geometry.slice_axis,
                      scale_factor=geometry.scale_factor, lr_spacing=list(geometry.lr_spacing),
                      hr_spacing=list(geometry.hr_spacing), channel_names=raw.dataset_json["channel_names"],
                      label_values=raw.label_values, preset=preset, profile=profile, profile_fwhm=fwhm,
                      steps=stage_steps, seed=seed, settings=settings)

    model_folder = output or default_model_folder(raw.name)
    existing = os.path.isfile(os.path.join(model_folder, "config.json"))
    if existing and not resume:
        raise RehrsegInputError(
            f"{model_folder} already holds an SR model; pass --continue to resume it or -o another folder."
        )
    if existing:
        previous = SRConfig.load(model_folder)
        for key in ("fingerprint", "slice_axis", "scale_factor", "preset", "label_values", "profile", "steps", "seed",
                    "settings"):
            if getattr(previous, key) != getattr(config, key):
                raise RehrsegInputError(
                    f"{os.path.join(model_folder, 'config.json')} has {key}={getattr(previous, key)} but this run has "
                    f"{getattr(config, key)}; continue with the same data and options or use another -o."
                )
        config.uncertainty_scale = previous.uncertainty_scale
    os.makedirs(model_folder, exist_ok=True)
    config.save(model_folder)
    log_path = os.path.join(model_folder, "training_log.txt")

    def log(message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        tqdm.write(line)
        with open(log_path, "a") as handle:
            handle.write(line + "\n")

    log(f"dataset {raw.name}: {len(cases)} case(s), slice axis {'xyz'[geometry.slice_axis]}, r = {geometry.scale_factor}, "
        f"preset {preset}, device {torch_device}, steps {stage_steps}")
    r = geometry.scale_factor
    thick, fine = geometry.lr_spacing[geometry.slice_axis], float(np.mean(in_plane))
    if round(thick / fine) != r:  # --scale-factor overrode the acquisition's ratio: say what that means
        log(f"note: r = {r} is not the acquisition's ratio {thick / fine:.2f} ({thick:g} mm / {fine:g} mm): the HR grid "
            f"gets {thick / r:.3g} mm slices (neither the in-plane {fine:g} mm nor the acquired {thick:g} mm), and the "
            f"training pairs blur in-plane rows with the {thick:g} mm slice profile but keep every {r}th row")
    c = config.image_channels

    if not os.path.isfile(final_checkpoint(model_folder, "1a")):
        volumes = [DegradedVolume.build(case.image, case.labels, r, fwhm, profile) for case in cases]
        kwargs = config.plane_net_kwargs()
        torch.manual_seed(seed)
        net = PlaneSRNet(**kwargs)
        trainer = StageTrainer(model_folder, "1a", net, "plane", kwargs,
                               PlanePairSampler(volumes, config.num_classes, r, settings["patch_size"]["1a"]),
                               stage_steps["1a"], settings["batch_size"]["1a"], stage_learning_rate(settings, "1a"),
                               torch_device, seed, save_every, log)
        if resume:
            trainer.resume()
        trainer.run(plane_loss(c))

    pending = [s for s in ("1b", "1c") if not os.path.isfile(final_checkpoint(model_folder, s))]
    if pending or config.uncertainty_scale is None:
        pseudo = pseudohr_training_volumes(model_folder, cases, config, torch_device, log)
        volumes = [DegradedVolume.build(image, labels, r, fwhm, profile) for image, labels in pseudo]
        attach_stage_1a_priors(model_folder, [case.identifier for case in cases], volumes, config, torch_device)
        for stage in pending:
            kwargs = config.slice_net_kwargs(uncertainty_head=stage == "1c")
            torch.manual_seed(seed + STAGES.index(stage))
            net = SliceInterpolationNet(**kwargs)
            if stage == "1b" and flavr_state is not None:
                log(load_flavr_weights(net, flavr_state).summary())
            if stage == "1c":
                start_uncertainty_head_from_1b(net, model_folder, kwargs["num_attention_maps"], seed)
            sampler = FramePairSampler(volumes, config.num_classes, r, settings["patch_size"][stage])
            trainer = StageTrainer(model_folder, stage, net, "slice", kwargs, sampler, stage_steps[stage],
                                   settings["batch_size"][stage], stage_learning_rate(settings, stage), torch_device,
                                   seed, save_every, log,
                                   fast_prefixes=uncertainty_parameter_prefixes() if stage == "1c" else ())
            if resume:
                trainer.resume()
            trainer.run(slice_loss(c))
        net = load_stage_network(model_folder, "1c", torch_device)
        sampler = FramePairSampler(volumes, config.num_classes, r, settings["patch_size"]["1c"])
        config.uncertainty_scale = calibrate_uncertainty_scale(net, sampler, seed, torch_device,
                                                               settings["batch_size"]["1c"])
        config.save(model_folder)
        log(f"uncertainty scale: sigma {config.uncertainty_scale:.4f} is written as 1 (99th percentile on training pairs)")
    log(f"SR model complete in {model_folder}")
    return model_folder
