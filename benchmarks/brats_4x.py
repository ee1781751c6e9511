"""REHRSeg against the baselines on BRATS T1c with simulated 4 mm slices, at an equal total iteration budget.

Data: case folders under ``--data`` (``t1c.nii.gz``, ``labels.nii.gz`` at 1 mm; ../shared/data/brats2013_subset
has pat0001-pat0004). Thick slices are simulated at r = 4 along z (Gaussian slice profile; LR labels by the
majority rule). Training sees the LR images and LR labels of its training cases only (the oracle excepted);
the 1 mm labels of the test cases are used for scoring only. Split: ``--train-cases`` / ``--test-cases``
(default pat0001-pat0003 / pat0004), ``--leave-one-out CASE ...`` (each listed case held out in turn, training on
the rest of the union of both lists; the fold equal to the fixed split reuses the ``fixed`` work folder), or
``--folds K`` (K-fold cross-validation over that union).

The method's protocol (METHOD.md): REHRSeg is fine-tuned from the converged LR nnU-Net. With E1 =
``--lr-epochs`` and E2 = ``--finetune-epochs`` (x ``--iterations`` each), every method spends E1 + E2 epochs:
- ``nnunet_lr_upsampled_{nearest,sdf}``: stock nnU-Net on the LR data (E1 + E2), its LR segmentation
  brought to 1 mm by nearest neighbour or by shape-based interpolation (rehrseg_nnunet.shape_interpolation);
- ``interp_nnunet``: images cubic-B-spline- and labels shape-based-upsampled to 1 mm, stock nnU-Net there;
- ``sr_nnunet``: the pseudo-HR dataset (``rehrseg_make_pseudohr``) with the stock trainer, the thick-slice test
  image super-resolved by the same SR model (``rehrseg_super_resolve``, timed as part of its prediction);
- ``rehrseg`` (``-tr REHRSegTrainer``), ``rehrseg_paper`` (the paper's network, ``REHRSegTrainer_paper``), the
  SR-guided designs ``rehrseg_hrStem`` / ``rehrseg_hrLevel`` (predicted from the test image super-resolved by
  the SR model the model carries) and the ablations ``rehrseg_noUASR``, ``rehrseg_noDistill``,
  ``rehrseg_noHRHead``, ``rehrseg_lrDice``,
  ``rehrseg_mirror``, ``rehrseg_fgOversample``, ``rehrseg_lrCentre``, ``rehrseg_fineTuneLr1en2``: an LR nnU-Net
  trained for E1 epochs (``nnunet_lr_init``), then REHRSegTrainer fine-tuned from its checkpoint for E2
  (``rehrseg_plan --lr_plans`` gives the inner U-Net its topology; lr 1e-3, or 1e-2 for the last),
  predicted with ``rehrseg_predict``;
- ``oracle_hr``: stock nnU-Net on the true 1 mm images and labels, predicted from the 1 mm test image (ceiling).
The self-SR model is trained (``rehrseg_train_sr``) on the LR training cases of the split only. What each
method trains on and how it predicts is defined in benchmarks/brats_methods.py (one entry per method).

Scores per test case, on the HR grid (1 mm labels) and on the LR grid (HR predictions brought down by the
majority rule): Dice and HD95 of every class and of the BraTS regions (whole tumour 1-4, tumour core 1+3+4,
enhancing 4); mean and std over test cases; ``per_class_mean_hr_dice`` = mean over the classes of their mean HR
Dice (classes present in reference or prediction). Costs per method: training seconds per iteration (all
sittings), prediction seconds per volume (super-resolution included where the method uses it) and the peak RSS
of training (this process, augmentation in-process on CPU) and of prediction (the largest process of the run).

    python benchmarks/brats_4x.py --device cpu                                   # fixed split, quick budget
    python benchmarks/brats_4x.py --device cuda --folds 2 --lr-epochs 40 --finetune-epochs 20 --iterations 50
    python benchmarks/brats_4x.py --device cpu --lr-epochs 96 --finetune-epochs 64 \
        --leave-one-out pat0004 pat0003 pat0002 --output benchmarks/results/brats_4x_cv.json   # issue 28

Everything resumes: a re-run skips finished models (an interrupted one continues from its latest
checkpoint), predictions and the SR model; work lives in ``--work``, one folder per split. Writes
``--output`` (benchmarks/results/brats_4x.json) after every model's prediction (the keys not yet scored listed as
``pending``) and, at the end, a figure of the first test case (``--figure``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.degradation import labels_to_lr, simulate_thick_slices
from rehrseg_nnunet.file_writing import write_json_atomically
from rehrseg_nnunet.geometry import Grid
from rehrseg_nnunet.resized_plans import write_resized_plans
from rehrseg_nnunet.shape_interpolation import shape_based_upsample_image
from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from brats_methods import (  # noqa: E402
    BENCH_PLANS,
    DATASETS,
    ENSEMBLES,
    INIT_PLANS,
    LABEL_FREE_ID,
    LABEL_FREE_NAME,
    LR_INIT,
    METHODS,
    PSEUDOHR_ID,
    SCORED_KEYS,
    Method,
    method_of_model,
    models_needed,
    needs_super_resolution,
    recommended_key,
)

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing": 3, "enhancing": 4}
CLASSES = [name for name, value in LABELS.items() if value]
REGIONS = {"whole_tumour": (1, 2, 3, 4), "tumour_core": (1, 3, 4), "enhancing_tumour": (4,)}
SCALE_FACTOR = 4
SLICE_AXIS = 2  # z, SimpleITK order
PREDICT_FLAGS = ["-c", "3d_fullres", "-f", "all", "-npp", "1", "-nps", "1"]


def log(message: str) -> None:
    print(f"[brats_4x {time.strftime('%H:%M:%S')}] {message}", flush=True)


def script(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


#: runs argv[2:] and writes the peak RSS (kB) of its largest process to argv[1]: a small interpreter in between,
#: as a child's ru_maxrss starts from the RSS of the process that forked it (this one holds torch and more)
MEASURED = ("import resource, subprocess, sys\n"
            "code = subprocess.call(sys.argv[2:])\n"
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
            "sys.exit(code)")


def run(command: list[str], env: dict | None = None) -> int:
    """Run ``command``; returns the peak RSS in bytes of the largest process of its tree."""
    import tempfile
    log(" ".join(os.path.basename(command[0]) if i == 0 else shlex.quote(c) for i, c in enumerate(command)))
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = os.path.join(scratch, "peak_rss_kb")
        subprocess.run([sys.executable, "-c", MEASURED, peak_file, *command], check=True,
                       env={**os.environ, **(env or {})})
        with open(peak_file) as handle:
            return int(handle.read()) * 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) so that :func:`peak_rss` measures from now; False where the kernel
    does not allow it (then the peak covers the whole process)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """This process's peak RSS in bytes (VmHWM), 0 where /proc is not available."""
    try:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def dataset_name(key: str) -> str:
    dataset_id, name = DATASETS[key]
    return f"Dataset{dataset_id}_{name}"


def hr_reference(lr_image: sitk.Image) -> sitk.Image:
    """An empty image on the HR grid of ``lr_image`` (n*r slices, cell-centred)."""
    grid = Grid.from_image(lr_image).refine(SLICE_AXIS, SCALE_FACTOR)
    return grid.image_from_array(np.zeros(tuple(reversed(grid.size)), np.float32))


def shape_based_label(lr_label: sitk.Image) -> sitk.Image:
    """An LR label map on its HR grid by shape-based interpolation along z."""
    return shape_based_upsample_image(lr_label, SLICE_AXIS, SCALE_FACTOR)


# --- data -------------------------------------------------------------------------------------------------
def make_datasets(data: str, raw: str, references: str, train_cases: list[str], test_cases: list[str]) -> None:
    """The LR (911), interpolated HR (912) and true HR (914, oracle) datasets and the scoring references."""
    folders = {key: os.path.join(raw, dataset_name(key)) for key in DATASETS}
    if all(os.path.isfile(os.path.join(f, "dataset.json")) for f in folders.values()):
        return
    for folder in folders.values():
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for sub in ("hr", "lr"):
        os.makedirs(os.path.join(references, sub), exist_ok=True)
    for case in train_cases + test_cases:
        image = sitk.ReadImage(os.path.join(data, case, "t1c.nii.gz"), sitk.sitkFloat32)
        label = sitk.Cast(sitk.ReadImage(os.path.join(data, case, "labels.nii.gz")), sitk.sitkUInt8)
        lr_image, lr_label = simulate_thick_slices(image, SLICE_AXIS, SCALE_FACTOR, label=label)
        reference = hr_reference(lr_image)
        if not np.allclose(reference.GetOrigin(), image.GetOrigin(), atol=1e-4):
            raise RuntimeError(f"{case}: the HR grid of the simulated LR image does not start at the 1 mm origin.")
        cubic = sitk.Resample(lr_image, reference, sitk.Transform(), sitk.sitkBSpline, 0.0)
        images = {"lr": lr_image, "interp": cubic, "hr": image}
        if case in test_cases:
            for key, folder in folders.items():
                sitk.WriteImage(images[key], os.path.join(folder, "imagesTs", f"{case}_0000.nii.gz"))
            sitk.WriteImage(label, os.path.join(references, "hr", f"{case}.nii.gz"))
            sitk.WriteImage(lr_label, os.path.join(references, "lr", f"{case}.nii.gz"))
        else:
            labels = {"lr": lr_label, "interp": shape_based_label(lr_label), "hr": label}
            for key, folder in folders.items():
                sitk.WriteImage(images[key], os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
                sitk.WriteImage(labels[key], os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
    for key, folder in folders.items():
        write_json_atomically(os.path.join(folder, "dataset.json"), {
            "channel_names": {"0": "T1c"}, "labels": LABELS, "numTraining": len(train_cases), "file_ending": ".nii.gz",
            "name": DATASETS[key][1],
            "description": "BRATS T1c, 4 mm slices simulated along z (benchmarks/brats_4x.py)"})


# --- plans ------------------------------------------------------------------------------------------------
def write_bench_plans(preprocessed: str, dataset: str, patch_size: list[int], args,
                      plans_name: str = BENCH_PLANS) -> str:
    """nnU-Net's plans of ``dataset`` with the benchmark's patch, widths and batch, saved as ``plans_name``."""
    write_resized_plans(os.path.join(preprocessed, dataset), patch_size, args.base_features, args.max_features,
                        args.batch_size, plans_name)
    return plans_name


def bench_plans_of(stock: list[str], pseudohr: str) -> list[tuple[str, str]]:
    """(dataset, plans name) of every bench plans file that the models of a split train with.

    Args:
        stock: the datasets the asked methods train on (only these are preprocessed, so only these have plans
            to resize: a part of a fold without an LR model has no LR plans).
        pseudohr: the name of the split's pseudo-HR dataset.

    Returns:
        The LR dataset under both bench plans names (the LR initialisation trains in a folder of its own), the
        others under :data:`BENCH_PLANS`, each only when it is in ``stock``.
    """
    lr = dataset_name("lr")
    plans = [(lr, name) for name in (BENCH_PLANS, INIT_PLANS) if lr in stock]
    return plans + [(dataset, BENCH_PLANS) for dataset in (dataset_name("interp"), dataset_name("hr"), pseudohr,
                                                           LABEL_FREE_DATASET) if dataset in stock]


# --- training and prediction ------------------------------------------------------------------------------
@dataclass
class Model:
    """One model of a split to train and predict with (a :class:`brats_methods.Method` made concrete)."""

    name: str
    dataset: str
    trainer: str
    plans: str
    epochs: int
    entry: str  # prediction console script
    inputs: str  # folder of test images
    initialised_from: str | None = None  # checkpoint to fine-tune from (REHRSeg)
    sr_model: str | None = None  # SR model that super-resolves ``inputs`` before prediction ("SR + stock nnU-Net")
    save_probabilities: bool = False  # the prediction also writes HR class probabilities (an ensemble member)


def trainer_class_named(name: str):
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    if name.startswith("REHRSeg"):
        from rehrseg_nnunet.training import trainer, variants
        return getattr(trainer, name, None) or getattr(variants, name)
    return recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                       "nnunetv2.training.nnUNetTrainer")


def model_folder(method: Model) -> str:
    return os.path.join(os.environ["nnUNet_results"], method.dataset, f"{method.trainer}__{method.plans}__3d_fullres")


def new_trainer(method: Model, args):
    """``method``'s trainer on its preprocessed dataset and plans, fold ``all``."""
    import torch
    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], method.dataset)
    plans, dataset_json = (read_json(os.path.join(preprocessed, name)) for name in (f"{method.plans}.json",
                                                                                    "dataset.json"))
    return trainer_class_named(method.trainer)({**plans, "continue_training": False}, "3d_fullres", "all",
                                               dataset_json, torch.device(args.device))


def train(method: Model, args) -> float | None:
    """Train in this process for ``method.epochs`` x ``--iterations``; resumes from checkpoint_latest.pth.
    Returns the seconds this call trained (None when the model was already complete)."""
    import torch

    from rehrseg_nnunet.training.fine_tuning import load_lr_weights
    folder = model_folder(method)
    if os.path.isfile(os.path.join(folder, "fold_all", "checkpoint_final.pth")):
        log(f"{method.name}: already trained, skipped")
        return None
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    trainer = new_trainer(method, args)
    trainer.num_epochs = method.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = args.val_iterations
    trainer.save_every = 1  # an interrupted run loses at most one epoch
    trainer.initialize()
    latest = os.path.join(folder, "fold_all", "checkpoint_latest.pth")
    if os.path.isfile(latest):
        trainer.load_checkpoint(latest)
        log(f"{method.name}: resumed at epoch {trainer.current_epoch} of {method.epochs}")
    elif method.initialised_from:
        loaded, total = load_lr_weights(trainer.network, method.initialised_from)
        log(f"{method.name}: fine-tuning from {method.initialised_from} ({loaded} of {total} inner U-Net tensors)")
    log(f"training {method.name} ({method.trainer} on {method.dataset}, {method.plans}): {method.epochs} epochs x "
        f"{args.iterations} iterations")
    measured_alone = reset_peak_rss()
    started = time.perf_counter()
    trainer.run_training()
    seconds = time.perf_counter() - started
    del trainer
    record = train_record(method) or {}  # seconds of every sitting, so a resumed model still has its time
    write_json_atomically(os.path.join(folder, "fold_all", TRAIN_RECORD),
                          {"seconds": record.get("seconds", 0.0) + seconds,
                           "iterations": method.epochs * args.iterations,
                           "peak_rss_bytes": max(record.get("peak_rss_bytes") or 0, peak_rss() if measured_alone else 0)
                           or None})
    return seconds


TRAIN_RECORD = "benchmark_train_seconds.json"
SPEED_RECORD = "benchmark_train_speed.json"


def time_training(method: Model, args) -> None:
    """Seconds per training iteration of ``method``'s trainer with nothing else on the machine's mind: data
    loading and augmentation included, after 2 warm-up iterations, in a scratch folder (the model's own is not
    touched). Training seconds over all sittings mix in whatever else ran; this figure compares designs."""
    import tempfile

    import torch
    record = os.path.join(model_folder(method), "fold_all", SPEED_RECORD)
    if os.path.isfile(record) or not args.time_training:
        return
    from trainer_speed import start_first_epoch
    torch.manual_seed(args.seed)
    measured_alone = reset_peak_rss()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = new_trainer(method, args)
        trainer.output_folder = trainer.output_folder_base = scratch
        trainer.log_file = os.path.join(scratch, "training_log.txt")
        start_first_epoch(trainer)
        started = time.perf_counter()
        for _ in range(args.time_training):
            trainer.train_step(next(trainer.dataloader_train))
        seconds = (time.perf_counter() - started) / args.time_training
        del trainer
    log(f"{method.name}: {seconds:.2f} s per training iteration ({args.time_training} timed)")
    write_json_atomically(record, {"seconds_per_iteration": seconds, "iterations": args.time_training,
                                   "device": args.device, "cpu_cores": os.cpu_count(),
                                   "peak_rss_bytes": peak_rss() if measured_alone else None})


def read_json(path: str) -> dict | None:
    """The JSON file at ``path``, None when there is none."""
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def train_record(method: Model) -> dict | None:
    """The training seconds a model took over all its sittings (None when not recorded)."""
    return read_json(os.path.join(model_folder(method), "fold_all", TRAIN_RECORD))


def predict(method: Model, output: str, args) -> None:
    """Predict the test images; the marker records the seconds, super-resolution included where the method uses
    it (in rehrseg_predict for guided models; rehrseg_super_resolve before stock prediction for ``sr_model``)."""
    marker = os.path.join(output, "benchmark_predict_complete.json")  # a killed run may leave truncated files
    if os.path.isfile(marker):
        return
    inputs, peak, super_resolve_seconds = method.inputs, 0, None
    started = time.perf_counter()
    if method.sr_model:
        inputs = f"{output}_super_resolved"
        peak = run([script("rehrseg_super_resolve"), "-i", method.inputs, "-o", inputs, "-m", method.sr_model,
                    "-device", args.device, "--overwrite", "--disable_progress_bar"])
        super_resolve_seconds = time.perf_counter() - started
    command = [script(method.entry), "-i", inputs, "-o", output, "-d", method.dataset, "-tr", method.trainer,
               "-p", method.plans, "-device", args.device, *PREDICT_FLAGS]
    if method.entry == "nnUNetv2_predict":
        command.append("--disable_tta")  # stock baselines without mirroring, as REHRSeg (trained without it)
    if method.save_probabilities:
        command.append("--save_probabilities")
    peak = max(peak, run(command, {"nnUNet_extTrainer": EXT_TRAINER_FOLDER}))
    write_json_atomically(marker, {"seconds": time.perf_counter() - started, "peak_rss_bytes": peak,
                                   "super_resolve_seconds": super_resolve_seconds,
                                   "saved_probabilities": method.save_probabilities})


def predict_ensemble(key: str, predictions: str, cases: list[str]) -> None:
    """Average the HR class probabilities of the ensemble's members (``--save_probabilities`` in their prediction
    folders) and write the argmax on their HR grid; the marker's seconds are the members' prediction seconds plus
    the averaging. Needs every member's prediction complete."""
    output = os.path.join(predictions, key)
    marker = os.path.join(output, "benchmark_predict_complete.json")
    if os.path.isfile(marker):
        return
    members = [os.path.join(predictions, METHODS[member].model_name(member)) for member in ENSEMBLES[key]]
    records = [read_json(os.path.join(folder, "benchmark_predict_complete.json")) for folder in members]
    if not all(record and record.get("saved_probabilities") for record in records):
        log(f"{key}: its members' probabilities are not all predicted yet, not ensembled")
        return
    log(f"{key}: averaging the HR probabilities of {', '.join(ENSEMBLES[key])}")
    os.makedirs(output, exist_ok=True)
    started = time.perf_counter()
    for case in cases:
        segmentations = [sitk.ReadImage(os.path.join(folder, f"{case}.nii.gz")) for folder in members]
        for other, folder in zip(segmentations[1:], members[1:], strict=True):
            if not Grid.from_image(other).matches(Grid.from_image(segmentations[0])):
                raise RuntimeError(f"{folder}/{case}.nii.gz is not on the grid of {members[0]}/{case}.nii.gz.")
        probabilities = [np.load(os.path.join(folder, f"{case}.npz"))["probabilities"].astype(np.float32)
                         for folder in members]
        if len({p.shape for p in probabilities}) != 1:
            raise RuntimeError(f"{key}/{case}: the members' probabilities differ in shape "
                               f"({', '.join(str(p.shape) for p in probabilities)}).")
        mean = np.mean(probabilities, axis=0)
        if mean.shape[1:] != sitk.GetArrayViewFromImage(segmentations[0]).shape:
            raise RuntimeError(f"{key}/{case}: probabilities of shape {mean.shape} do not fit the segmentation "
                               f"{members[0]}/{case}.nii.gz.")
        ensembled = sitk.GetImageFromArray(np.argmax(mean, axis=0).astype(np.uint8))
        ensembled.CopyInformation(segmentations[0])
        sitk.WriteImage(ensembled, os.path.join(output, f"{case}.nii.gz"))
    averaging = time.perf_counter() - started
    write_json_atomically(marker, {"seconds": sum(r["seconds"] for r in records) + averaging,
                                   "averaging_seconds": averaging, "members": list(ENSEMBLES[key]),
                                   "peak_rss_bytes": max(r.get("peak_rss_bytes") or 0 for r in records) or None})


# --- scoring ----------------------------------------------------------------------------------------------
def grid_scores(truth: np.ndarray, prediction: np.ndarray, spacing: list[float]) -> dict:
    """Dice / HD95 of every class and every BraTS region."""
    from rehrseg_nnunet.evaluation import dice, hd95, segmentation_scores
    scores = segmentation_scores(truth, prediction, spacing, LABELS)
    del scores["foreground"]  # = whole tumour, below
    for region, values in REGIONS.items():
        a, b = np.isin(truth, values), np.isin(prediction, values)
        scores[region] = {"dice": dice(a, b), "hd95": hd95(a, b, spacing), "present": bool(a.any() or b.any())}
    return scores


def score_case(prediction_hr: sitk.Image, prediction_lr: sitk.Image | None, case: str, references: str) -> dict:
    """HR and LR scores of one case; an HR prediction also gives the LR one (majority rule along z)."""
    hr_truth = sitk.ReadImage(os.path.join(references, "hr", f"{case}.nii.gz"))
    lr_truth = sitk.ReadImage(os.path.join(references, "lr", f"{case}.nii.gz"))
    hr_on_truth = sitk.Resample(prediction_hr, hr_truth, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    result = {"hr": grid_scores(sitk.GetArrayFromImage(hr_truth), sitk.GetArrayFromImage(hr_on_truth),
                                list(reversed(hr_truth.GetSpacing())))}
    if prediction_lr is None:
        on_hr_grid = sitk.Resample(prediction_hr, hr_reference(lr_truth), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        prediction_lr = sitk.GetImageFromArray(labels_to_lr(sitk.GetArrayFromImage(on_hr_grid), 0, SCALE_FACTOR))
        prediction_lr.CopyInformation(lr_truth)
    result["lr"] = grid_scores(sitk.GetArrayFromImage(lr_truth), sitk.GetArrayFromImage(prediction_lr),
                               list(reversed(lr_truth.GetSpacing())))
    return result


def summarise(per_case: dict[str, dict]) -> dict:
    """Mean and std over test cases per grid, class / region and metric; classes only where present."""
    out: dict = {}
    for grid in ("hr", "lr"):
        for name in CLASSES + list(REGIONS):
            for metric in ("dice", "hd95"):
                values = [c[grid][name][metric] for c in per_case.values()
                          if c[grid][name]["present"] or name in REGIONS]
                if values:
                    out.setdefault(grid, {}).setdefault(name, {})[metric] = {
                        "mean": float(np.mean(values)), "std": float(np.std(values)), "cases": len(values)}
    out["per_class_mean_hr_dice"] = float(np.mean([out["hr"][name]["dice"]["mean"] for name in CLASSES
                                                   if name in out["hr"]]))
    out["hr_dice"] = out["hr"]["whole_tumour"]["dice"]["mean"]  # whole tumour, for the table
    out["hr_hd95"] = out["hr"]["whole_tumour"]["hd95"]["mean"]
    out["per_case"] = per_case
    return out


def scored_predictions(key: str, output: str, cases: list[str]) -> dict[str, tuple[sitk.Image, sitk.Image | None]]:
    """(HR prediction, LR prediction or None) per case of a method's prediction folder."""
    result = {}
    for case in cases:
        segmentation = sitk.ReadImage(os.path.join(output, f"{case}.nii.gz"))
        if METHODS[key].to_hr == "nearest":
            result[case] = (sitk.Resample(segmentation, hr_reference(segmentation), sitk.Transform(),
                                          sitk.sitkNearestNeighbor, 0), segmentation)
        elif METHODS[key].to_hr == "shape_based":
            result[case] = (shape_based_label(segmentation), segmentation)
        else:
            result[case] = (segmentation, None)
    return result


# --- splits and models ------------------------------------------------------------------------------------
def splits(args) -> list[tuple[str, list[str], list[str]]]:
    """(name, training cases, test cases) of each split: the fixed one, the folds of --leave-one-out or of --folds K."""
    cases = sorted(set(args.train_cases) | set(args.test_cases))
    if args.leave_one_out:
        unknown = [c for c in args.leave_one_out if c not in cases]
        if unknown:
            sys.exit(f"--leave-one-out {' '.join(unknown)}: not among --train-cases/--test-cases ({', '.join(cases)}).")
        return [(f"test_{case}", [c for c in cases if c != case], [case]) for case in args.leave_one_out]
    if not args.folds:
        return [("fixed", args.train_cases, args.test_cases)]
    if not 2 <= args.folds <= len(cases):
        sys.exit(f"--folds {args.folds} needs between 2 and {len(cases)} folds for {len(cases)} cases.")
    folds = [cases[k::args.folds] for k in range(args.folds)]
    return [(f"fold{k}", [c for c in cases if c not in test], test) for k, test in enumerate(folds)]


SPLIT_RECORD = "benchmark_split.json"
FIXED_SPLIT = (["pat0001", "pat0002", "pat0003"], ["pat0004"])  # the split of the ``fixed`` folders so far


def split_work_folder(work_root: str, name: str, train_cases: list[str], test_cases: list[str]) -> str:
    """The work folder of a split: a folder of the same cases under another name (``fixed``) is reused, so a
    leave-one-out fold equal to the fixed split continues from its finished models."""
    wanted = {"train": sorted(train_cases), "test": sorted(test_cases)}
    folder = os.path.join(work_root, name)
    if not os.path.isdir(folder) and os.path.isdir(work_root):
        for other in sorted(os.listdir(work_root)):
            record = os.path.join(work_root, other, SPLIT_RECORD)
            if os.path.isfile(record):
                with open(record) as handle:
                    same = json.load(handle) == wanted
            else:  # folders from before the record: only ``fixed``, always the default split
                same = other == "fixed" and (wanted["train"], wanted["test"]) == FIXED_SPLIT
            if same:
                log(f"split {name}: reusing {other}/ (the same training and test cases)")
                folder = os.path.join(work_root, other)
                break
    os.makedirs(folder, exist_ok=True)
    write_json_atomically(os.path.join(folder, SPLIT_RECORD), wanted)
    return folder


def models_of_split(raw: str, pseudohr: str, sr_model: str, args) -> dict[str, Model]:
    """Every model of a split (name -> concrete model), in training order; ``sr_model`` is the split's SR model."""
    epochs = {"full": args.lr_epochs + args.finetune_epochs, "lr_init": args.lr_epochs,
              "fine_tune": args.finetune_epochs}
    datasets = {**{key: dataset_name(key) for key in DATASETS}, "pseudohr": pseudohr,
                "pseudohr_labelFree": LABEL_FREE_DATASET}
    init_key, init = method_of_model(LR_INIT)
    init_folder = model_folder(Model(LR_INIT, datasets[init.dataset], init.trainer, init.plans, 0, "", ""))
    checkpoint = os.path.join(init_folder, "fold_all", "checkpoint_final.pth")
    models = {}
    for key, method in METHODS.items():
        name = method.model_name(key)
        if name not in models:
            models[name] = Model(name, datasets[method.dataset], method.trainer, method.plans,
                                 epochs[method.schedule], method.predictor,
                                 os.path.join(raw, datasets[method.inputs], "imagesTs"),
                                 checkpoint if method.schedule == "fine_tune" else None,
                                 sr_model if method.super_resolve else None, method.save_probabilities)
    return models


LABEL_FREE_DATASET = f"Dataset{LABEL_FREE_ID}_{LABEL_FREE_NAME}"


def make_label_free_dataset(raw: str, pseudohr: str, sr_model: str, args) -> None:
    """The pseudo-HR dataset with label-free training images: ``imagesTr`` super-resolved from the thick-slice
    training images by ``rehrseg_super_resolve`` (no LR label as SR input, as at test time), ``labelsTr`` copied
    from the pseudo-HR dataset; ``dataset.json`` is written last (it marks the dataset complete)."""
    import shutil
    target = os.path.join(raw, LABEL_FREE_DATASET)
    if os.path.isfile(os.path.join(target, "dataset.json")):
        return
    source = os.path.join(raw, pseudohr)
    run([script("rehrseg_super_resolve"), "-i", os.path.join(raw, dataset_name("lr"), "imagesTr"),
         "-o", os.path.join(target, "imagesTr"), "-m", sr_model, "-device", args.device, "--disable_progress_bar"])
    os.makedirs(os.path.join(target, "labelsTr"), exist_ok=True)
    for name in sorted(os.listdir(os.path.join(source, "labelsTr"))):
        label = os.path.join(source, "labelsTr", name)
        image = os.path.join(target, "imagesTr", name.replace(".nii.gz", "_0000.nii.gz"))
        if not Grid.from_image(sitk.ReadImage(image)).matches(Grid.from_image(sitk.ReadImage(label))):
            raise RuntimeError(f"{image} is not on the grid of the pseudo-HR label {label}.")
        shutil.copyfile(label, os.path.join(target, "labelsTr", name))
    dataset = read_json(os.path.join(source, "dataset.json"))
    write_json_atomically(os.path.join(target, "dataset.json"), {
        **{k: dataset[k] for k in ("channel_names", "labels", "numTraining", "file_ending")},
        "name": LABEL_FREE_NAME,
        "description": f"{pseudohr} with imagesTr super-resolved without the LR label (benchmarks/brats_4x.py)"})


def pseudohr_dataset(raw: str) -> str:
    """The pseudo-HR dataset's folder name in ``raw``: the one ``rehrseg_make_pseudohr`` wrote, else the name it
    gives (a part of a fold without SR methods makes none)."""
    written = [d for d in sorted(os.listdir(raw)) if d.startswith(f"Dataset{PSEUDOHR_ID}_")]
    return written[0] if written else f"Dataset{PSEUDOHR_ID}_{DATASETS['lr'][1]}PseudoHR"


def run_split(name: str, train_cases: list[str], test_cases: list[str], data: str, args,
              on_progress: Callable[[dict], None] | None = None) -> dict:
    """Everything for one split; returns per result key: per-case scores, seconds and provenance.

    ``on_progress`` gets the scores so far after each model's prediction, so that the results of a split cut short
    (a lost work folder) are already written for the models it finished."""
    work = split_work_folder(os.path.abspath(args.work), name, train_cases, test_cases)
    env = {"nnUNet_raw": os.path.join(work, "nnUNet_raw"),
           "nnUNet_preprocessed": os.path.join(work, "nnUNet_preprocessed"),
           "nnUNet_results": os.path.join(work, "nnUNet_results"), "nnUNet_def_n_proc": "1", "nnUNet_compile": "0"}
    os.environ.update(env)
    references = os.path.join(work, "references")
    log(f"split {name}: train {', '.join(train_cases)}; test {', '.join(test_cases)}")
    sr_model = os.path.join(work, "sr_model")
    if args.score_only:
        return score_split(work, models_of_split(env["nnUNet_raw"], pseudohr_dataset(env["nnUNet_raw"]), sr_model,
                                                 args), {}, test_cases,
                           references, args)
    make_datasets(data, env["nnUNet_raw"], references, train_cases, test_cases)
    if needs_super_resolution(args.methods):
        if not os.path.isfile(os.path.join(sr_model, "stage_1c", "checkpoint_final.pth")):
            command = [script("rehrseg_train_sr"), "-d", str(DATASETS["lr"][0]), "-o", sr_model, "-device",
                       args.device, "--steps", *map(str, args.sr_steps), "--seed", str(args.seed)]
            run(command + (["--continue"] if os.path.isfile(os.path.join(sr_model, "config.json")) else []))
        run([script("rehrseg_make_pseudohr"), "-d", str(DATASETS["lr"][0]), "-o", str(PSEUDOHR_ID), "-m", sr_model,
             "-device", args.device])
    else:
        log("no asked method uses the SR model: SR training and the pseudo-HR dataset are skipped")
    pseudohr = pseudohr_dataset(env["nnUNet_raw"])
    models = models_of_split(env["nnUNet_raw"], pseudohr, sr_model, args)
    needed = models_needed(args.methods)
    if any(models[name].dataset == LABEL_FREE_DATASET for name in needed):
        make_label_free_dataset(env["nnUNet_raw"], pseudohr, sr_model, args)
    stock = sorted({models[name].dataset for name in needed})  # only the datasets the asked methods train on
    missing = [d for d in stock
               if not os.path.isdir(os.path.join(env["nnUNet_preprocessed"], d, "nnUNetPlans_3d_fullres"))]
    if missing:
        run([script("nnUNetv2_plan_and_preprocess"), "-d", *[d.split("_")[0][7:] for d in missing], "-c", "3d_fullres",
             "-np", "1", "-npfp", "1", "--verify_dataset_integrity"])
    lr_patch = [args.patch_size[0] // SCALE_FACTOR, *args.patch_size[1:]]
    for dataset, plans_name in bench_plans_of(stock, pseudohr):
        write_bench_plans(env["nnUNet_preprocessed"], dataset, lr_patch if dataset == dataset_name("lr")
                          else args.patch_size, args, plans_name)
    if args.device == "cpu":
        os.environ.setdefault("nnUNet_n_proc_DA", "0")  # 2 CPU cores: augmentation workers only compete

    seconds: dict[str, float | None] = {}
    for model in (models[name] for name in needed):
        if model.initialised_from and not os.path.isfile(os.path.join(env["nnUNet_preprocessed"], pseudohr,
                                                                      "REHRSegPlans.json")):
            lr_plans = os.path.join(model_folder(models[LR_INIT]), "plans.json")
            run([script("rehrseg_plan"), "-d", str(PSEUDOHR_ID), "--lr_plans", lr_plans, "-np", "1"])
        seconds[model.name] = train(model, args)
        time_training(model, args)
        if model.name == LR_INIT:
            continue
        predict(model, os.path.join(work, "predictions", model.name), args)
        for key in (k for k in args.methods if k in ENSEMBLES):  # as soon as its members are predicted
            predict_ensemble(key, os.path.join(work, "predictions"), test_cases)
        if on_progress is not None:
            on_progress(score_split(work, models, seconds, test_cases, references, args))
    for key in (k for k in args.methods if k in ENSEMBLES):
        predict_ensemble(key, os.path.join(work, "predictions"), test_cases)
    return score_split(work, models, seconds, test_cases, references, args)


def megabytes(size: int | None) -> float | None:
    return round(size / 2 ** 20, 1) if size else None


def score_split(work: str, models: dict[str, Model], seconds: dict, test_cases: list[str], references: str,
                args) -> dict:
    """Scores of every result key whose predictions are complete (a run cut short scores what it has)."""
    results = {}
    for key in (k for k in SCORED_KEYS if k in args.methods):
        if key in ENSEMBLES:
            output = os.path.join(work, "predictions", key)
            predicted = read_json(os.path.join(output, "benchmark_predict_complete.json"))
            if predicted is None:
                log(f"{key}: no complete ensemble yet, not scored")
                continue
            per_case = {case: score_case(sitk.ReadImage(os.path.join(output, f"{case}.nii.gz")), None, case,
                                         references) for case in test_cases}
            results[key] = {"per_case": per_case, "train_seconds": None, "trainer": None,
                            "members": list(ENSEMBLES[key]),
                            **dict.fromkeys(("train_seconds_all_sittings", "train_seconds_per_iteration",
                                             "train_seconds_per_iteration_alone", "train_peak_rss_mb")),
                            "predict_seconds_per_volume": predicted["seconds"] / len(test_cases),
                            "predict_peak_rss_mb": megabytes(predicted.get("peak_rss_bytes"))}
            continue
        method: Method = METHODS[key]
        model = models[method.model_name(key)]
        output = os.path.join(work, "predictions", model.name)
        if not os.path.isfile(os.path.join(output, "benchmark_predict_complete.json")):
            log(f"{key}: no complete prediction yet, not scored")
            continue
        predictions = scored_predictions(key, output, test_cases)
        per_case = {case: score_case(hr, lr, case, references) for case, (hr, lr) in predictions.items()}
        with open(os.path.join(output, "benchmark_predict_complete.json")) as handle:
            predicted = json.load(handle)
        record = train_record(model) or {}
        trained = record.get("seconds")
        speed = read_json(os.path.join(model_folder(model), "fold_all", SPEED_RECORD)) or {}
        results[key] = {"per_case": per_case, "train_seconds": seconds.get(model.name), "trainer": model.trainer,
                        "train_seconds_all_sittings": trained,
                        "train_seconds_per_iteration": trained / (model.epochs * args.iterations) if trained else None,
                        "train_seconds_per_iteration_alone": speed.get("seconds_per_iteration"),
                        "predict_seconds_per_volume": predicted["seconds"] / len(test_cases),
                        "train_peak_rss_mb": megabytes(max(record.get("peak_rss_bytes") or 0,
                                                           speed.get("peak_rss_bytes") or 0)),
                        "predict_peak_rss_mb": megabytes(predicted.get("peak_rss_bytes")),
                        "plans": model.plans, "dataset": model.dataset, "epochs": model.epochs,
                        "total_iterations": (model.epochs + (args.lr_epochs if model.initialised_from else 0))
                        * args.iterations}
        if model.initialised_from:
            results[key]["initialised_from"] = os.path.relpath(model.initialised_from, work)
            results[key]["fine_tuning_iterations"] = model.epochs * args.iterations
    return results


def save_figure(path: str, data: str, args) -> None:
    """The first split's first test case in a through-plane view: LR input, each method, the 1 mm truth."""
    from rehrseg_nnunet.qc import Panel, save_qc_png
    name, _, test_cases = splits(args)[0]
    case, work = test_cases[0], os.path.join(os.path.abspath(args.work), name)
    predictions = os.path.join(work, "predictions")
    truth_image = sitk.ReadImage(os.path.join(data, case, "t1c.nii.gz"), sitk.sitkFloat32)
    truth_label = sitk.Cast(sitk.ReadImage(os.path.join(data, case, "labels.nii.gz")), sitk.sitkUInt8)
    lr_image = sitk.ReadImage(os.path.join(work, "nnUNet_raw", dataset_name("lr"), "imagesTs", f"{case}_0000.nii.gz"))
    panels = [Panel("LR input (4 mm)", lr_image)]
    for key in ("nnunet_lr_upsampled_sdf", "interp_nnunet", "sr_nnunet", "rehrseg", "oracle_hr"):
        output = os.path.join(predictions, METHODS[key].model_name(key))
        if not os.path.isfile(os.path.join(output, "benchmark_predict_complete.json")):
            continue
        hr, _ = scored_predictions(key, output, [case])[case]
        panels.append(Panel(key, truth_image, hr))
    panels.append(Panel("1 mm truth", truth_image, truth_label))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_qc_png(path, panels, SLICE_AXIS, columns=4)


def print_table(methods: dict) -> None:
    columns = CLASSES + list(REGIONS)
    print(f"\nHR Dice (mean over test cases); HD95 in mm for the regions\n{'method':29s}"
          + "".join(f"{c[:12]:>13s}" for c in columns) + f"{'class mean':>11s}" + f"{'WT HD95':>9s}")
    for key, row in methods.items():
        cells = "".join(f"{row['hr'][c]['dice']['mean']:13.4f}" if c in row["hr"] else f"{'-':>13s}" for c in columns)
        print(f"{key:29s}{cells}{row['per_class_mean_hr_dice']:11.4f}{row['hr']['whole_tumour']['hd95']['mean']:9.2f}")


COST_KEYS = ("train_seconds_per_iteration", "train_seconds_per_iteration_alone", "predict_seconds_per_volume",
             "train_peak_rss_mb", "predict_peak_rss_mb")


def markdown_table(methods: dict) -> str:
    """The HR-grid table of docs/BENCHMARKS.md: Dice (HD95 mm) per class and region, mean ± std over test cases
    where there are several, and the costs."""
    def cell(row: dict, name: str) -> str:
        if name not in row["hr"]:
            return "–"
        dice, hd95 = row["hr"][name]["dice"], row["hr"][name]["hd95"]
        spread = f" ± {dice['std']:.3f}" if dice["cases"] > 1 else ""
        return f"{dice['mean']:.3f}{spread} ({hd95['mean']:.1f})"

    def number(value, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    names = CLASSES + ["whole_tumour", "tumour_core"]
    lines = ["| method | " + " | ".join(names) + " | class mean | train s/it alone | predict s/volume | peak RSS "
             "train / predict (MB) |", "|---" * (len(names) + 5) + "|"]
    for key, row in methods.items():
        alone = number(row.get("train_seconds_per_iteration_alone"), 2)
        lines.append(f"| {key} | " + " | ".join(cell(row, n) for n in names)
                     + f" | {row['per_class_mean_hr_dice']:.3f} | {alone}"
                     f" | {number(row.get('predict_seconds_per_volume'), 0)} | "
                     f"{number(row.get('train_peak_rss_mb'), 0)} / {number(row.get('predict_peak_rss_mb'), 0)} |")
    return "\n".join(lines)


def processor_name() -> str:
    """The CPU's model name where Linux tells it (costs timed on different CPUs differ by 2x), else its
    architecture."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runner_commit() -> str:
    """The commit of the repository this runner runs from, with ``-dirty`` when tracked files differ from it."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", HERE, *arguments], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


# --- main -------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "brats2013_subset"),
                        help="folder of case folders (t1c.nii.gz, labels.nii.gz)")
    parser.add_argument("--train-cases", nargs="+", default=["pat0001", "pat0002", "pat0003"])
    parser.add_argument("--test-cases", nargs="+", default=["pat0004"])
    parser.add_argument("--folds", type=int, default=0, help="K-fold cross-validation over train + test cases")
    parser.add_argument("--leave-one-out", nargs="+", metavar="CASE", default=[],
                        help="hold out each CASE in turn, training on the other cases of --train-cases/--test-cases")
    parser.add_argument("--work", default=os.path.join(HERE, "work", "brats_4x"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (augmentation workers: nnUNet_n_proc_DA)")
    parser.add_argument("--lr-epochs", type=int, default=24, help="E1: epochs of the LR nnU-Net REHRSeg starts from")
    parser.add_argument("--finetune-epochs", type=int, default=16, help="E2: REHRSeg's fine-tuning epochs")
    parser.add_argument("--iterations", type=int, default=25, help="iterations per epoch (every method)")
    parser.add_argument("--val-iterations", type=int, default=2, help="validation iterations per epoch")
    parser.add_argument("--sr-steps", type=int, nargs=3, default=[1000, 300, 600], help="SR steps of stages 1a 1b 1c")
    parser.add_argument("--patch-size", type=int, nargs=3, default=[32, 64, 64], help="HR patch (z y x); LR: z / 4")
    parser.add_argument("--base-features", type=int, default=16)
    parser.add_argument("--max-features", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=SCORED_KEYS, default=SCORED_KEYS, metavar="KEY",
                        help="result keys to train, predict and score (default: all of "
                             f"{', '.join(SCORED_KEYS)}); a REHRSeg key also trains the LR nnU-Net it starts from")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "brats_4x.json"))
    parser.add_argument("--figure", default=os.path.join(HERE, "..", "docs", "brats_4x.png"))
    parser.add_argument("--time-training", type=int, default=0, metavar="N",
                        help="also time N training iterations of each model alone (2 warm-up; a model's record "
                             "is kept, so a re-run times only new models; 0: off)")
    parser.add_argument("--score-only", action="store_true",
                        help="train and predict nothing: score the methods whose predictions are complete")
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        sys.exit(f"{args.data} does not exist; "
                 f"pass --data with the BRATS case folders (../shared/data/brats2013_subset).")
    data = os.path.abspath(args.data)
    missing = [c for c in args.train_cases + args.test_cases if not os.path.isdir(os.path.join(data, c))]
    if missing:
        sys.exit(f"no case folder {', '.join(missing)} under {data}; "
                 f"pass existing cases to --train-cases/--test-cases.")
    started = time.perf_counter()
    finished: dict[str, dict] = {}
    for name, train_cases, test_cases in splits(args):
        def write_progress(scores: dict, split: str = name) -> None:
            write_results({**finished, split: scores}, args, started)

        finished[name] = run_split(name, train_cases, test_cases, data, args, on_progress=write_progress)
    methods = write_results(finished, args, started)
    save_figure(args.figure, data, args)
    print_table(methods)
    print("\n" + markdown_table(methods))
    log(f"results: {args.output}; figure: {args.figure}; this run {(time.perf_counter() - started) / 60:.1f} min")


def write_results(split_results: dict[str, dict], args, started: float) -> dict:
    """Pool the scores of the splits run so far (split name -> result key -> scores), write ``args.output``
    (keys not yet scored on every test case listed as ``pending``) and return the pooled methods."""
    pooled: dict[str, dict] = {}
    for name, split_result in split_results.items():
        for key, result in split_result.items():
            entry = pooled.setdefault(key, {k: v for k, v in result.items() if k != "per_case"})
            entry.setdefault("per_case", {}).update({f"{name}/{c}": s for c, s in result["per_case"].items()})
            entry.setdefault("train_seconds_per_split", {})[name] = result["train_seconds"]
            entry.pop("train_seconds", None)
            entry.setdefault("costs_per_split", {})[name] = {k: result[k] for k in COST_KEYS}
    for entry in pooled.values():  # costs over splits: mean seconds, largest peak memory
        for cost in COST_KEYS:
            values = [c[cost] for c in entry["costs_per_split"].values() if c[cost] is not None]
            entry[cost] = (max(values) if cost.endswith("_mb") else float(np.mean(values))) if values else None
    methods = {key: {**summarise(entry["per_case"]), **{k: v for k, v in entry.items() if k != "per_case"}}
               for key, entry in pooled.items()}
    complete = {key for key, entry in methods.items() if len(entry["per_case"]) == sum(len(s[2]) for s in splits(args))}
    pending = [key for key in args.methods if key not in complete]

    import torch
    results = {
        "test_cases": sorted({case for _, _, test in splits(args) for case in test}),
        "recommended": recommended_key(),  # the REHRSeg variant that -tr REHRSegTrainer trains
        "methods": methods,
        "pending": pending,  # result keys not yet scored on every test case: re-run to resume
        "methods_asked": args.methods,
        "splits": [{"name": n, "train": tr, "test": te} for n, tr, te in splits(args)],
        "budget": {"lr_epochs": args.lr_epochs, "finetune_epochs": args.finetune_epochs,
                   "iterations_per_epoch": args.iterations, "val_iterations_per_epoch": args.val_iterations,
                   "total_iterations_per_method": (args.lr_epochs + args.finetune_epochs) * args.iterations,
                   "hr_patch_size": args.patch_size, "base_features": args.base_features,
                   "max_features": args.max_features, "batch_size": args.batch_size, "sr_steps": args.sr_steps,
                   "test_time_mirroring": False, "seed": args.seed},
        "device": f"{args.device} ({processor_name()}, {os.cpu_count()} cores, torch "
                  f"{torch.__version__})",
        "seconds_this_run": time.perf_counter() - started,
        "command": "python benchmarks/brats_4x.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "commit": runner_commit(),
    }
    for entry in methods.values():
        entry["source"] = f"brats_4x.py at commit {results['commit']}"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json_atomically(args.output, results)
    return methods


if __name__ == "__main__":
    main()
