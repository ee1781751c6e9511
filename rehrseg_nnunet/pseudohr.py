"""``rehrseg_make_pseudohr``: rewrite a thick-slice raw dataset into a pseudo-HR raw dataset.

Output ``nnUNet_raw/DatasetTTT_<Source>PseudoHR``: ``imagesTr`` (every channel), ``labelsTr``,
``uncertaintyTr`` (float, [0, 1]), ``imagesTs`` + ``uncertaintyTs`` when the source has test images,
``qc/`` (one PNG per case) and ``dataset.json`` with a ``rehrseg`` block.

Safety: the source is only read; each case is written under a temporary folder and its files are
renamed into place when all of them are complete (the label last, so "label present" means
"case complete"); a re-run skips complete cases; ``-part_id/-num_parts`` split the cases.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass

import SimpleITK as sitk
from tqdm import tqdm

from rehrseg_nnunet import __version__
from rehrseg_nnunet.contract import CONTRACT_KEY, StageContract, default_sr_model_folder, portable_sr_model_folder
from rehrseg_nnunet.dataset_io import (
    RawCase,
    RawDataset,
    check_label_values,
    check_thick_slice_header,
    load_raw_dataset,
    raw_root,
    read_case,
)
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import process_alive, write_image_verified, write_json_atomically
from rehrseg_nnunet.qc import Panel, save_qc_png
from rehrseg_nnunet.sr.config import (
    SRConfig,
    check_checkpoint_fits_config,
    checkpoint_sha256,
    final_checkpoint,
    select_device,
    verified_final_checkpoint,
)
from rehrseg_nnunet.sr.infer import SuperResolver
from rehrseg_nnunet.sr.networks import network_from_checkpoint

TEMP_FOLDER = ".rehrseg_incomplete"
#: the SR stage whose network writes the pseudo-HR data (and teaches during training)
SR_STAGE = "1c"


@dataclass(frozen=True)
class CaseJob:
    case: RawCase
    split: str  # "Tr" or "Ts"


def target_folder_for(source: RawDataset, target_id: int) -> str:
    """``DatasetTTT_<Source>PseudoHR``; an existing folder with that id must come from the same source."""
    root = raw_root()
    existing = [d for d in os.listdir(root) if d.startswith(f"Dataset{target_id:03d}_")] if os.path.isdir(root) else []
    source_short = source.name.split("_", 1)[1] if "_" in source.name else source.name
    folder = os.path.join(root, f"Dataset{target_id:03d}_{source_short}PseudoHR")
    for name in existing:
        path = os.path.join(root, name)
        if path != folder or existing_source_dataset(path) != source.name:
            raise RehrsegInputError(
                f"Dataset id {target_id} is already used by {path}; choose another -o TARGET_ID or remove that folder."
            )
    if os.path.abspath(folder) == os.path.abspath(source.folder):
        raise RehrsegInputError(f"The target {folder} is the source dataset; choose another -o TARGET_ID.")
    return folder


def existing_source_dataset(folder: str) -> str | None:
    """The source dataset recorded in an existing pseudo-HR dataset's contract (None when there is none)."""
    path = os.path.join(folder, "dataset.json")
    try:
        with open(path) as handle:
            return StageContract.from_dataset_json(json.load(handle), path).source_dataset
    except (OSError, ValueError, RehrsegInputError):
        return None


def expected_files(folder: str, job: CaseJob, num_channels: int, file_ending: str) -> dict[str, str]:
    """Final path of every file of one case; the label (training cases) or uncertainty (test) comes last."""
    identifier = job.case.identifier
    files = {f"image{c}": os.path.join(folder, f"images{job.split}", f"{identifier}_{c:04d}{file_ending}")
             for c in range(num_channels)}
    files["qc"] = os.path.join(folder, "qc", f"{identifier}.png")
    files["uncertainty"] = os.path.join(folder, f"uncertainty{job.split}", f"{identifier}{file_ending}")
    if job.split == "Tr":
        files["label"] = os.path.join(folder, "labelsTr", f"{identifier}{file_ending}")
    return files


def is_complete(files: dict[str, str]) -> bool:
    return all(os.path.isfile(path) for path in files.values())


def check_model_matches_dataset(config: SRConfig, source: RawDataset, model_folder: str) -> None:
    if config.image_channels != source.num_channels:
        raise RehrsegInputError(
            f"The SR model in {model_folder} has {config.image_channels} image channel(s) but {source.folder} has "
            f"{source.num_channels}; train the SR model on this dataset (rehrseg_train_sr -d {source.name})."
        )
    if sorted(config.label_values) != source.label_values:
        raise RehrsegInputError(
            f"The SR model in {model_folder} knows labels {config.label_values} but {source.folder}/dataset.json "
            f"declares {source.label_values}; train the SR model on this dataset."
        )


def check_sr_model(model_folder: str, config: SRConfig) -> None:
    """The SR model loads and is the one config.json describes: the writing stage's final checkpoint (and stage
    1a's, which it refines) is the model's own (recorded SHA-256), readable, fits config.json and loads into its
    network; a stage 1c model has its uncertainty scale. One line naming the file and the fix, before anything
    is written."""
    stages = [SR_STAGE]
    while stages:
        stage = stages.pop()
        checkpoint = verified_final_checkpoint(model_folder, stage)
        check_checkpoint_fits_config(checkpoint, config, model_folder, stage)
        net = network_from_checkpoint(checkpoint, final_checkpoint(model_folder, stage))
        if getattr(net, "num_attention_maps", 0) and config.uncertainty_scale is None:
            raise RehrsegInputError(
                f"{os.path.join(model_folder, 'config.json')} has no uncertainty_scale: stage 1c was not calibrated; "
                f"run rehrseg_train_sr --continue with the same options.")
        if getattr(net, "refine_prior", False) and stage != "1a":
            stages.append("1a")


def check_case_geometry(config: SRConfig, job: CaseJob, model_folder: str) -> None:
    """Header-only check that a case has the thick-slice geometry the model was trained for."""
    for path in job.case.image_files:
        check_thick_slice_header(path, config.slice_axis, config.lr_spacing[config.slice_axis], config.scale_factor,
                                 f"the SR model in {model_folder}")


def validate_cases(jobs: list[CaseJob], source: RawDataset) -> None:
    """Read each case once: readable and complete files, finite voxels, one geometry for image and label, label
    values declared in dataset.json and whole numbers. One line naming the file on the first problem."""
    for job in jobs:  # no progress bar: reading is quick next to SR, and an error stays the only stderr line
        _, label = read_case(job.case, require_label=job.split == "Tr")
        if label is not None:
            check_label_values(job.case.label_file, sitk.GetArrayViewFromImage(label), source.label_values)


_RESOLVER: SuperResolver | None = None
_RESOLVER_KEY: tuple[str, str | None] | None = None


def _init_worker(model_folder: str, device: str | None, threads: int | None) -> None:
    global _RESOLVER, _RESOLVER_KEY
    if threads:
        import torch
        torch.set_num_threads(threads)
    if _RESOLVER is None or _RESOLVER_KEY != (model_folder, device):
        _RESOLVER, _RESOLVER_KEY = SuperResolver(model_folder, device), (model_folder, device)


def process_case(job: CaseJob, folder: str, file_ending: str, num_channels: int) -> float:
    """Super-resolve one case into a temporary folder, then rename its files into place. Returns seconds."""
    started = time.perf_counter()
    images, label = read_case(job.case, require_label=job.split == "Tr")
    result = _RESOLVER(images, label, source=job.case.image_files[0])
    files = expected_files(folder, job, num_channels, file_ending)
    temp = os.path.join(folder, TEMP_FOLDER, f"{job.split}_{job.case.identifier}_{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    os.makedirs(temp)
    written = {}
    for channel, image in enumerate(result.images):
        written[f"image{channel}"] = image
    written["uncertainty"] = result.uncertainty
    if "label" in files:
        written["label"] = result.label
    temp_paths = {}
    try:
        for key, image in written.items():
            temp_paths[key] = os.path.join(temp, f"{key}_{os.path.basename(files[key])}")
            write_image_verified(image, temp_paths[key])
        temp_paths["qc"] = os.path.join(temp, "qc.png")
        panels = [Panel("LR", images[0], label),
                  Panel("pseudo-HR", result.images[0], result.label if label is not None else None),
                  Panel("uncertainty (fixed scale)", result.uncertainty, cmap="magma", value_range=(0.0, 1.0),
                        colorbar=True)]
        save_qc_png(temp_paths["qc"], panels, slice_axis=_RESOLVER.config.slice_axis)
        for key in files:  # dict order: images, qc, uncertainty, then the label last
            os.makedirs(os.path.dirname(files[key]), exist_ok=True)
            os.replace(temp_paths[key], files[key])
    except OSError as error:
        raise RehrsegInputError(f"writing case '{job.case.identifier}' into {folder} failed "
                                f"({error.strerror or error}); "
                                f"check free space, quotas and write permission.") from None
    finally:  # a failed case leaves nothing: its temporary folder goes, its label (written last) never arrives
        shutil.rmtree(temp, ignore_errors=True)
    return time.perf_counter() - started


def remove_stale_temporaries(folder: str) -> None:
    """Delete half-written cases left by interrupted runs (their process is gone); keep live ones."""
    temp_root = os.path.join(folder, TEMP_FOLDER)
    if not os.path.isdir(temp_root):
        return
    for name in os.listdir(temp_root):
        pid = name.rsplit("_", 1)[-1]
        if not pid.isdigit() or not process_alive(int(pid)):
            shutil.rmtree(os.path.join(temp_root, name), ignore_errors=True)
    if not os.listdir(temp_root):
        os.rmdir(temp_root)


def write_dataset_json(folder: str, source: RawDataset, config: SRConfig, model_folder: str) -> None:
    dataset_json = dict(source.dataset_json)
    dataset_json["numTraining"] = len(source.training)
    dataset_json["name"] = os.path.basename(folder).split("_", 1)[1]
    contract = StageContract(
        scale_factor=config.scale_factor, slice_axis=config.slice_axis, lr_spacing=tuple(config.lr_spacing),
        source_dataset=source.name, sr_model_folder=portable_sr_model_folder(model_folder), sr_stage=SR_STAGE,
        sr_checkpoint_sha256=checkpoint_sha256(model_folder, SR_STAGE),
        uncertainty_folders=("uncertaintyTr", "uncertaintyTs") if source.test else ("uncertaintyTr",),
        tool_version=__version__)
    dataset_json[CONTRACT_KEY] = contract.to_json()
    write_json_atomically(os.path.join(folder, "dataset.json"), dataset_json)


@dataclass(frozen=True)
class PseudoHRWork:
    """A checked run of rehrseg_make_pseudohr: where it writes and the cases it will write."""

    source: RawDataset
    config: SRConfig
    model_folder: str
    folder: str
    todo: list[CaseJob]
    skipped: int


def make_pseudohr(source_dataset: str, target_id: int, model_folder: str | None = None, device: str | None = None,
                  part_id: int = 0, num_parts: int = 1, num_processes: int = 1, overwrite: bool = False) -> dict:
    """Write the pseudo-HR dataset. Returns a summary (cases written / skipped, seconds per case, folder).

    Args:
        source_dataset: id or name of the thick-slice dataset under ``nnUNet_raw``.
        target_id: id of the new dataset.
        model_folder: SR model folder (default ``nnUNet_results/<source>/rehrseg_sr``).
        device: torch device (auto when None).
        part_id, num_parts: process only cases ``part_id::num_parts`` (several processes or machines).
        num_processes: worker processes.
        overwrite: redo complete cases.
    """
    work = check_pseudohr_work(source_dataset, target_id, model_folder, part_id, num_parts, overwrite)
    if num_processes <= 1:
        _init_worker(work.model_folder, device, None)  # the model (and device) load before anything is written
    else:
        select_device(device)  # the workers load the model (checked above on the CPU); the device is checked here
    os.makedirs(work.folder, exist_ok=True)
    remove_stale_temporaries(work.folder)
    write_dataset_json(work.folder, work.source, work.config, work.model_folder)
    started = time.perf_counter()
    try:
        write_cases(work, device, num_processes)
    finally:
        remove_stale_temporaries(work.folder)
    written = len(work.todo)
    summary = {"folder": work.folder, "written": written, "skipped": work.skipped,
               "seconds_per_case": (time.perf_counter() - started) / written if written else 0.0}
    print(f"rehrseg_make_pseudohr: {written} case(s) written, {work.skipped} skipped (complete), "
          f"{summary['seconds_per_case']:.1f} s per case -> {work.folder}")
    return summary


def check_pseudohr_work(source_dataset: str, target_id: int, model_folder: str | None, part_id: int, num_parts: int,
                        overwrite: bool) -> PseudoHRWork:
    """Every check before anything is written: the part, the SR model against the dataset, every case's
    geometry and label, the target folder; then every case this run will write, read once."""
    if not 0 <= part_id < num_parts:
        raise RehrsegInputError(f"-part_id {part_id} must lie in 0..{num_parts - 1} (-num_parts {num_parts}).")
    source = load_raw_dataset(source_dataset)
    model_folder = model_folder or default_sr_model_folder(source.name, "-m SR_MODEL_FOLDER")
    config = SRConfig.load(model_folder)
    if not os.path.isfile(final_checkpoint(model_folder, SR_STAGE)):
        raise RehrsegInputError(f"{final_checkpoint(model_folder, SR_STAGE)} is missing: the SR model has not "
                                f"finished; run rehrseg_train_sr --continue.")
    check_model_matches_dataset(config, source, model_folder)
    check_sr_model(model_folder, config)
    jobs = [CaseJob(case, "Tr") for case in source.training] + [CaseJob(case, "Ts") for case in source.test]
    for job in jobs:
        if job.split == "Tr" and not os.path.isfile(job.case.label_file):
            raise RehrsegInputError(f"{job.case.label_file} is missing: case '{job.case.identifier}' has no label; "
                                    f"add it.")
        check_case_geometry(config, job, model_folder)
    folder = target_folder_for(source, int(target_id))
    mine = jobs[part_id::num_parts]
    todo = [job for job in mine
            if overwrite or not is_complete(expected_files(folder, job, source.num_channels, source.file_ending))]
    validate_cases(todo, source)  # every case this run will write, read and checked before anything is written
    return PseudoHRWork(source, config, model_folder, folder, todo, len(mine) - len(todo))


def write_cases(work: PseudoHRWork, device: str | None, num_processes: int) -> None:
    """Super-resolve and write every case of ``work``, in this process or in a pool of ``num_processes``."""
    arguments = [(job, work.folder, work.source.file_ending, work.source.num_channels) for job in work.todo]
    with tqdm(total=len(work.todo), desc="pseudo-HR cases", unit="case", dynamic_ncols=True) as bar:
        if num_processes <= 1:
            _init_worker(work.model_folder, device, None)
            for case_arguments in arguments:
                process_case(*case_arguments)
                bar.update(1)
            return
        threads = max(1, (os.cpu_count() or 1) // num_processes)
        context = multiprocessing.get_context("spawn")
        with context.Pool(num_processes, initializer=_init_worker,
                          initargs=(work.model_folder, device, threads)) as pool:
            for result in [pool.apply_async(process_case, case_arguments) for case_arguments in arguments]:
                result.get()
                bar.update(1)
