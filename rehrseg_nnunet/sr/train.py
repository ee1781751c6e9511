"""``rehrseg_train_sr``: stages 1a -> 1b -> 1c of the self-supervised SR (METHOD.md, stage 1).

Each stage checkpoints to ``<model>/stage_<s>/checkpoint_latest.pth`` while it trains (atomically; the
one it replaces is kept as ``checkpoint_previous.pth``) and to ``checkpoint_final.pth`` when done, whose
SHA-256 config.json records (every loader checks it); ``--continue`` checks the finished stages' checkpoints,
then resumes the first unfinished stage from its latest checkpoint, or from the previous one when the latest
is unreadable. Nothing is written before every case of the dataset (and, with ``--continue``, every
checkpoint) has been checked.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from rehrseg_nnunet.contract import default_sr_model_folder
from rehrseg_nnunet.dataset_io import (
    RawDataset,
    case_arrays,
    check_label_values,
    fingerprint,
    load_raw_dataset,
    read_case,
)
from rehrseg_nnunet.degradation import profile_fwhm
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import remove_stale_temporary_files
from rehrseg_nnunet.geometry import DatasetGeometry, Grid, determine_geometry, scale_factor_rule
from rehrseg_nnunet.sr.config import (
    PRESETS,
    STAGES,
    SRConfig,
    check_checkpoint_fits_config,
    final_checkpoint,
    select_device,
    verified_final_checkpoint,
)
from rehrseg_nnunet.sr.flavr import load_flavr_weights, read_flavr_checkpoint
from rehrseg_nnunet.sr.infer import (
    label_indices,
    load_stage_network,
    normalisation,
)
from rehrseg_nnunet.sr.networks import (
    PlaneSRNet,
    SliceInterpolationNet,
    head_parameter_prefixes,
    uncertainty_parameter_prefixes,
)
from rehrseg_nnunet.sr.pairs import DegradedVolume, FramePairSampler, LRCase, PlanePairSampler
from rehrseg_nnunet.sr.stage_1a_outputs import attach_stage_1a_priors, pseudohr_training_volumes
from rehrseg_nnunet.sr.stage_trainer import (
    StageTrainer,
    calibrate_uncertainty_scale,
    plane_loss,
    resumable_checkpoint,
    slice_loss,
    stage_learning_rate,
)


def load_training_cases(dataset: RawDataset, slice_axis: int | None, scale_factor: int | None
                        ) -> tuple[list[LRCase], DatasetGeometry, str]:
    """Read and check every training case before anything is written."""
    raw = []
    for case in dataset.training:
        images, label = read_case(case, require_label=True)
        # on the stored values: case_arrays rounds them (0.5 would silently become background)
        check_label_values(case.label_file, sitk.GetArrayViewFromImage(label), dataset.label_values)
        raw.append((case, images, label))
    grids = [(case.image_files[0], Grid.from_image(images[0])) for case, images, _ in raw]
    geometry = determine_geometry(grids, slice_axis, scale_factor)
    cases = []
    for case, images, label in raw:
        image, labels = case_arrays(images, label, geometry.slice_axis)
        if min(image.shape[2:]) < 2 * geometry.scale_factor or image.shape[1] < 2:
            raise RehrsegInputError(
                f"{case.image_files[0]} is too small ({image.shape[1:]} voxels) to learn SR from; use larger volumes."
            )
        mean, std = normalisation(image)
        cases.append(LRCase(case.identifier, (image - mean) / std, label_indices(labels, dataset.label_values)))
    return cases, geometry, fingerprint(grids)


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


@dataclass(frozen=True)
class SRTrainingOptions:
    """What ``rehrseg_train_sr`` can be told (one field per command-line option).

    Attributes:
        output: model folder (default ``nnUNet_results/<dataset>/rehrseg_sr``).
        device: cuda | mps | cpu (auto when None).
        preset: ``small`` or ``paper`` (:data:`rehrseg_nnunet.sr.config.PRESETS`).
        scale_factor, slice_axis: overrides of the automatic detection.
        steps: steps of stage 1a, 1b, 1c (one value = all stages; default the preset's).
        seed: random seed.
        resume: continue an interrupted training in ``output``.
        init_flavr: FLAVR checkpoint to initialise the stage 1b network.
        profile: slice profile used to simulate thick slices (``gaussian`` or ``box``).
        save_every: checkpoint interval in steps.
        attention_maps: M of the uncertainty head (default: the preset's).
    """

    output: str | None = None
    device: str | None = None
    preset: str = "small"
    scale_factor: int | None = None
    slice_axis: int | None = None
    steps: tuple[int, ...] | None = None
    seed: int = 12345
    resume: bool = False
    init_flavr: str | None = None
    profile: str = "gaussian"
    save_every: int = 100
    attention_maps: int | None = None

    def settings(self) -> dict:
        """The preset's settings with the options that change them; one line for a bad value."""
        if self.preset not in PRESETS:
            raise RehrsegInputError(f"Preset '{self.preset}' is unknown; use one of {sorted(PRESETS)}.")
        settings = dict(PRESETS[self.preset])
        if self.attention_maps is not None:
            if not 2 <= self.attention_maps <= 64:
                raise RehrsegInputError(f"--attention-maps {self.attention_maps} is out of range; use M between 2 "
                                        f"and 64.")
            settings["num_attention_maps"] = self.attention_maps
        return settings

    def stage_steps(self, settings: dict) -> dict[str, int]:
        """Steps per stage: ``steps`` when given, else the preset's."""
        if not self.steps:
            return dict(settings["steps"])
        if len(self.steps) not in (1, 3) or min(self.steps) < 1:
            raise RehrsegInputError("--steps takes one positive number (all stages) or three (1a 1b 1c).")
        return dict(zip(STAGES, list(self.steps) * 3 if len(self.steps) == 1 else self.steps, strict=True))


#: config.json entries that must not change when a training is continued
RESUME_KEYS = ("fingerprint", "slice_axis", "scale_factor", "preset", "label_values", "profile", "steps", "seed",
               "settings")


class TrainingLog:
    """Timestamped lines on the console (above the progress bars) and in the model's training_log.txt."""

    def __init__(self, model_folder: str):
        self.path = os.path.join(model_folder, "training_log.txt")

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        tqdm.write(line)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")


@dataclass
class SRRun:
    """One training run: its checked cases, configuration, folder, device and log."""

    cases: list[LRCase]
    config: SRConfig
    model_folder: str
    device: torch.device
    options: SRTrainingOptions
    log: TrainingLog
    flavr_state: dict | None = None


def train_sr(dataset: str, options: SRTrainingOptions | None = None) -> str:
    """Train the self-SR model of a raw dataset: stage 1a, then 1b and 1c, then the uncertainty scale.

    Args:
        dataset: nnU-Net dataset id or name under ``nnUNet_raw``.
        options: the command line's options (defaults when None).

    Returns:
        The model folder.
    """
    run = prepare_run(dataset, options or SRTrainingOptions())
    if not os.path.isfile(final_checkpoint(run.model_folder, "1a")):
        train_stage_1a(run)
    train_slice_stages(run)
    run.log(f"SR model complete in {run.model_folder}")
    return run.model_folder


def prepare_run(dataset: str, options: SRTrainingOptions) -> SRRun:
    """Check the options, the data and (with ``resume``) the model folder's config; then write the config.

    Nothing is written before every case has been read and checked.
    """
    settings = options.settings()
    steps = options.stage_steps(settings)
    raw = load_raw_dataset(dataset)
    device = select_device(options.device)
    flavr_state = read_flavr_checkpoint(options.init_flavr) if options.init_flavr else None
    cases, geometry, data_fingerprint = load_training_cases(raw, options.slice_axis, options.scale_factor)
    in_plane = [s for i, s in enumerate(geometry.lr_spacing) if i != geometry.slice_axis]
    fwhm = profile_fwhm(geometry.lr_spacing[geometry.slice_axis], min(in_plane), options.profile)
    config = SRConfig(dataset=raw.name, fingerprint=data_fingerprint, slice_axis=geometry.slice_axis,
                      scale_factor=geometry.scale_factor, lr_spacing=list(geometry.lr_spacing),
                      hr_spacing=list(geometry.hr_spacing), channel_names=raw.dataset_json["channel_names"],
                      label_values=raw.label_values, preset=options.preset, profile=options.profile,
                      profile_fwhm=fwhm, steps=steps, seed=options.seed, settings=settings)
    model_folder = options.output or default_sr_model_folder(raw.name, "-o MODEL_FOLDER")
    check_resumable(model_folder, config, options.resume)
    os.makedirs(model_folder, exist_ok=True)
    remove_stale_temporary_files(model_folder)  # a killed run's half-written checkpoint
    config.save(model_folder)
    log = TrainingLog(model_folder)
    log(f"dataset {raw.name}: {len(cases)} case(s), slice axis {'xyz'[geometry.slice_axis]}, "
        f"r = {geometry.scale_factor}, preset {options.preset}, device {device}, steps {config.steps}")
    thick, fine = geometry.lr_spacing[geometry.slice_axis], float(np.mean(in_plane))
    r = geometry.scale_factor
    rule = scale_factor_rule(geometry.lr_spacing, geometry.slice_axis)
    if options.scale_factor is None:
        log(f"scale factor: {rule}; --scale-factor overrides")
    else:
        log(f"scale factor: r = {r} from --scale-factor (the spacing gives {rule})")
    if round(thick / fine) != r:  # --scale-factor overrode the acquisition's ratio: say what that means
        log(f"note: r = {r} is not the acquisition's ratio {thick / fine:.2f} ({thick:g} mm / {fine:g} mm): the HR "
            f"grid gets {thick / r:.3g} mm slices (neither the in-plane {fine:g} mm nor the acquired {thick:g} mm), "
            f"and the training pairs blur in-plane rows with the {thick:g} mm slice profile but keep every {r}th row")
    return SRRun(cases, config, model_folder, device, options, log, flavr_state)


def check_resumable(model_folder: str, config: SRConfig, resume: bool) -> None:
    """An existing model folder is continued only with ``resume`` and the same data and options; its
    uncertainty scale (set when stage 1c has been calibrated) carries over into ``config``."""
    if not os.path.isfile(os.path.join(model_folder, "config.json")):
        return
    if not resume:
        raise RehrsegInputError(
            f"{model_folder} already holds an SR model; pass --continue to resume it or -o another folder."
        )
    previous = SRConfig.load(model_folder)
    for key in RESUME_KEYS:
        if getattr(previous, key) != getattr(config, key):
            raise RehrsegInputError(
                f"{os.path.join(model_folder, 'config.json')} has {key}={getattr(previous, key)} but this run has "
                f"{getattr(config, key)}; continue with the same data and options or use another -o."
            )
    check_checkpoints(model_folder, previous)
    config.uncertainty_scale = previous.uncertainty_scale
    config.checkpoint_sha256 = dict(previous.checkpoint_sha256)


def check_checkpoints(model_folder: str, config: SRConfig) -> None:
    """Before ``--continue`` writes anything: every finished stage's final checkpoint is this model's own (its
    recorded SHA-256), loads and fits config.json; the first unfinished stage's latest checkpoint (or the
    previous one) loads."""
    for stage in STAGES:
        if os.path.isfile(final_checkpoint(model_folder, stage)):
            check_checkpoint_fits_config(verified_final_checkpoint(model_folder, stage), config, model_folder, stage)
        else:
            resumable_checkpoint(model_folder, stage)
            return


def stage_trainer(run: SRRun, stage: str, net: torch.nn.Module, network: str, kwargs: dict, sampler,
                  fast_prefixes: tuple[str, ...] = ()) -> StageTrainer:
    """The stage's trainer on the run's schedule, resumed from its latest checkpoint with ``--continue``."""
    settings = run.config.settings
    trainer = StageTrainer(run.model_folder, stage, net, network, kwargs, sampler, run.config.steps[stage],
                           settings["batch_size"][stage], stage_learning_rate(settings, stage), run.device,
                           run.options.seed, run.options.save_every, run.log, fast_prefixes=fast_prefixes,
                           config=run.config)
    if run.options.resume:
        trainer.resume()
    return trainer


def train_stage_1a(run: SRRun) -> None:
    """Stage 1a: in-plane SR of degraded planes (the thick-slice data's own in-plane resolution as target)."""
    config = run.config
    volumes = [DegradedVolume.build(case.image, case.labels, config.scale_factor, config.profile_fwhm,
                                    config.profile) for case in run.cases]
    kwargs = config.plane_net_kwargs()
    torch.manual_seed(run.options.seed)
    net = PlaneSRNet(**kwargs)  # right after seeding: the same initial weights for the same seed
    sampler = PlanePairSampler(volumes, config.num_classes, config.scale_factor, config.settings["patch_size"]["1a"])
    stage_trainer(run, "1a", net, "plane", kwargs, sampler).run(plane_loss(config.image_channels))


def train_slice_stages(run: SRRun) -> None:
    """Stages 1b and 1c (slice interpolation refining 1a, then its UASR head) on stage 1a's pseudo-HR
    volumes, then the fixed scale of the written uncertainty; each part skipped when already done."""
    config, folder = run.config, run.model_folder
    pending = [s for s in ("1b", "1c") if not os.path.isfile(final_checkpoint(folder, s))]
    if not pending and config.uncertainty_scale is not None:
        return
    r, patch_size = config.scale_factor, config.settings["patch_size"]
    pseudo = pseudohr_training_volumes(folder, run.cases, config, run.device, run.log)
    volumes = [DegradedVolume.build(image, labels, r, config.profile_fwhm, config.profile) for image, labels in pseudo]
    attach_stage_1a_priors(folder, [case.identifier for case in run.cases], volumes, config, run.device)
    for stage in pending:
        kwargs = config.slice_net_kwargs(uncertainty_head=stage == "1c")
        torch.manual_seed(run.options.seed + STAGES.index(stage))
        net = SliceInterpolationNet(**kwargs)
        if stage == "1b" and run.flavr_state is not None:
            run.log(load_flavr_weights(net, run.flavr_state).summary())
        if stage == "1c":
            start_uncertainty_head_from_1b(net, folder, kwargs["num_attention_maps"], run.options.seed)
        sampler = FramePairSampler(volumes, config.num_classes, r, patch_size[stage])
        fast = uncertainty_parameter_prefixes() if stage == "1c" else ()
        stage_trainer(run, stage, net, "slice", kwargs, sampler, fast).run(slice_loss(config.image_channels))
    net = load_stage_network(folder, "1c", run.device)
    sampler = FramePairSampler(volumes, config.num_classes, r, patch_size["1c"])
    config.uncertainty_scale = calibrate_uncertainty_scale(net, sampler, run.options.seed, run.device,
                                                           config.settings["batch_size"]["1c"])
    config.save(folder)
    run.log(f"uncertainty scale: sigma {config.uncertainty_scale:.4f} is written as 1 (99th percentile on training "
            f"pairs)")
