"""REHRSeg against the baselines on BRATS T1c with simulated 4 mm slices, at an equal total iteration budget.

Data: case folders under ``--data`` (``t1c.nii.gz``, ``labels.nii.gz`` at 1 mm; ../shared/data/brats2013_subset
has pat0001-pat0004). Thick slices are simulated at r = 4 along z (Gaussian slice profile; LR labels by the
majority rule). Training sees the LR images and LR labels of its training cases only (the oracle excepted);
the 1 mm labels of the test cases are used for scoring only. Split: ``--train-cases`` / ``--test-cases``
(default pat0001-pat0003 / pat0004), or ``--folds K`` (cross-validation over the union of both lists).

The method's protocol (METHOD.md): REHRSeg is fine-tuned from the converged LR nnU-Net. With E1 =
``--lr-epochs`` and E2 = ``--finetune-epochs`` (x ``--iterations`` each), every method spends E1 + E2 epochs:
- ``nnunet_lr_upsampled_{nearest,sdf}``: stock nnU-Net on the LR data (E1 + E2), its LR segmentation
  brought to 1 mm by nearest neighbour or by shape-based interpolation (rehrseg_nnunet.shape_interpolation);
- ``interp_nnunet``: images cubic-B-spline- and labels shape-based-upsampled to 1 mm, stock nnU-Net there;
- ``sr_nnunet``: the pseudo-HR dataset (``rehrseg_make_pseudohr``) with the stock trainer, test image
  super-resolved by the same SR model;
- ``rehrseg`` (``-tr REHRSegTrainer``), ``rehrseg_paper`` (the paper's network, ``REHRSegTrainer_paper``), the
  SR-guided designs ``rehrseg_hrStem`` / ``rehrseg_hrLevel`` (predicted from the test image super-resolved by
  the SR model the model carries) and the ablations ``rehrseg_noUASR``, ``rehrseg_noDistill``,
  ``rehrseg_noHRHead``, ``rehrseg_lrDice``,
  ``rehrseg_mirror``, ``rehrseg_fgOversample``, ``rehrseg_lrCentre``, ``rehrseg_fineTuneLr1en2``: an LR nnU-Net
  trained for E1 epochs (``nnunet_lr_init``), then REHRSegTrainer fine-tuned from its checkpoint for E2
  (``rehrseg_plan --lr_plans`` gives the inner U-Net its topology; lr 1e-3, or 1e-2 for the last),
  predicted with ``rehrseg_predict``;
- ``oracle_hr``: stock nnU-Net on the true 1 mm images and labels, predicted from the 1 mm test image (ceiling).
The self-SR model is trained (``rehrseg_train_sr``) on the LR training cases of the split only.

Scores per test case, on the HR grid (1 mm labels) and on the LR grid (HR predictions brought down by the
majority rule): Dice and HD95 of every class and of the BraTS regions (whole tumour 1-4, tumour core 1+3+4,
enhancing 4); mean and std over test cases; ``per_class_mean_hr_dice`` = mean over the classes of their mean HR
Dice (classes present in reference or prediction).

    python benchmarks/brats_4x.py --device cpu                                   # fixed split, quick budget
    python benchmarks/brats_4x.py --device cuda --folds 2 --lr-epochs 40 --finetune-epochs 20 --iterations 50

Everything resumes: a re-run skips finished models (an interrupted one continues from its latest
checkpoint), predictions and the SR model; work lives in ``--work``, one folder per split. Writes
``--output`` (benchmarks/results/brats_4x.json) and a figure of the first test case (``--figure``).
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
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.degradation import labels_to_lr, simulate_thick_slices
from rehrseg_nnunet.file_writing import write_json_atomically
from rehrseg_nnunet.geometry import Grid
from rehrseg_nnunet.resized_plans import write_resized_plans
from rehrseg_nnunet.shape_interpolation import shape_based_upsample_image
from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing": 3, "enhancing": 4}
CLASSES = [name for name, value in LABELS.items() if value]
REGIONS = {"whole_tumour": (1, 2, 3, 4), "tumour_core": (1, 3, 4), "enhancing_tumour": (4,)}
SCALE_FACTOR = 4
SLICE_AXIS = 2  # z, SimpleITK order
DATASETS = {"lr": (911, "BratsLR4x"), "interp": (912, "BratsInterp4x"), "hr": (914, "BratsHR")}
PSEUDOHR_ID = 913
BENCH_PLANS = "BenchPlans"
INIT_PLANS = "BenchPlansInit"  # the same plans under a second name: the E1-epoch LR model gets its own folder
PREDICT_FLAGS = ["-c", "3d_fullres", "-f", "all", "-npp", "1", "-nps", "1"]


def log(message: str) -> None:
    print(f"[brats_4x {time.strftime('%H:%M:%S')}] {message}", flush=True)


def script(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def run(command: list[str], env: dict | None = None) -> None:
    log(" ".join(os.path.basename(command[0]) if i == 0 else shlex.quote(c) for i, c in enumerate(command)))
    subprocess.run(command, check=True, env={**os.environ, **(env or {})})


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


# --- training and prediction ------------------------------------------------------------------------------
@dataclass
class Method:
    """One model to train and predict with."""

    name: str
    dataset: str
    trainer: str
    plans: str
    epochs: int
    entry: str  # prediction console script
    inputs: str  # folder of test images
    initialised_from: str | None = None  # checkpoint to fine-tune from (REHRSeg)


def trainer_class_named(name: str):
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    if name.startswith("REHRSeg"):
        from rehrseg_nnunet.training import trainer, variants
        return getattr(trainer, name, None) or getattr(variants, name)
    return recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                       "nnunetv2.training.nnUNetTrainer")


def model_folder(method: Method) -> str:
    return os.path.join(os.environ["nnUNet_results"], method.dataset, f"{method.trainer}__{method.plans}__3d_fullres")


def train(method: Method, args) -> float | None:
    """Train in this process for ``method.epochs`` x ``--iterations``; resumes from checkpoint_latest.pth.
    Returns the seconds this call trained (None when the model was already complete)."""
    import torch

    from rehrseg_nnunet.training.fine_tuning import load_lr_weights
    folder = model_folder(method)
    if os.path.isfile(os.path.join(folder, "fold_all", "checkpoint_final.pth")):
        log(f"{method.name}: already trained, skipped")
        return None
    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], method.dataset)
    with open(os.path.join(preprocessed, f"{method.plans}.json")) as handle:
        plans = json.load(handle)
    with open(os.path.join(preprocessed, "dataset.json")) as handle:
        dataset_json = json.load(handle)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    trainer = trainer_class_named(method.trainer)({**plans, "continue_training": False}, "3d_fullres", "all",
                                                  dataset_json, torch.device(args.device))
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
    started = time.perf_counter()
    trainer.run_training()
    seconds = time.perf_counter() - started
    del trainer
    record = train_record(method)  # seconds of every sitting, so a resumed model still has its training time
    write_json_atomically(os.path.join(folder, "fold_all", TRAIN_RECORD),
                          {"seconds": (record or {}).get("seconds", 0.0) + seconds,
                           "iterations": method.epochs * args.iterations})
    return seconds


TRAIN_RECORD = "benchmark_train_seconds.json"


def train_record(method: Method) -> dict | None:
    """The training seconds a model took over all its sittings (None when not recorded)."""
    path = os.path.join(model_folder(method), "fold_all", TRAIN_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def predict(method: Method, output: str, args) -> None:
    """Predict the test images; the marker records the seconds (super-resolution included for guided models)."""
    marker = os.path.join(output, "benchmark_predict_complete.json")  # a killed run may leave truncated files
    if os.path.isfile(marker):
        return
    command = [script(method.entry), "-i", method.inputs, "-o", output, "-d", method.dataset, "-tr", method.trainer,
               "-p", method.plans, "-device", args.device, *PREDICT_FLAGS]
    if method.entry == "nnUNetv2_predict":
        command.append("--disable_tta")  # stock baselines without mirroring, as REHRSeg (trained without it)
    started = time.perf_counter()
    run(command, {"nnUNet_extTrainer": EXT_TRAINER_FOLDER})
    write_json_atomically(marker, {"seconds": time.perf_counter() - started})


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


def scored_predictions(name: str, output: str, cases: list[str]) -> dict[str, tuple[sitk.Image, sitk.Image | None]]:
    """(HR prediction, LR prediction or None) per case of a method's prediction folder."""
    result = {}
    for case in cases:
        segmentation = sitk.ReadImage(os.path.join(output, f"{case}.nii.gz"))
        if name == "nnunet_lr_upsampled_nearest":
            result[case] = (sitk.Resample(segmentation, hr_reference(segmentation), sitk.Transform(),
                                          sitk.sitkNearestNeighbor, 0), segmentation)
        elif name == "nnunet_lr_upsampled_sdf":
            result[case] = (shape_based_label(segmentation), segmentation)
        else:
            result[case] = (segmentation, None)
    return result


# --- splits and methods -----------------------------------------------------------------------------------
def splits(args) -> list[tuple[str, list[str], list[str]]]:
    """(name, training cases, test cases) of each split: the fixed one, or the folds of --folds K."""
    if not args.folds:
        return [("fixed", args.train_cases, args.test_cases)]
    cases = sorted(set(args.train_cases) | set(args.test_cases))
    if not 2 <= args.folds <= len(cases):
        sys.exit(f"--folds {args.folds} needs between 2 and {len(cases)} folds for {len(cases)} cases.")
    folds = [cases[k::args.folds] for k in range(args.folds)]
    return [(f"fold{k}", [c for c in cases if c not in test], test) for k, test in enumerate(folds)]


#: REHRSeg and its ablations (result key -> trainer), each fine-tuned from the same LR nnU-Net checkpoint
REHRSEG_METHODS = {
    "rehrseg": "REHRSegTrainer",  # the default design of -tr REHRSegTrainer
    # the paper's network and the two designs of the SR-guided HR branch (DESIGN.md, "HR guidance")
    "rehrseg_paper": "REHRSegTrainer_paper", "rehrseg_hrStem": "REHRSegTrainer_hrStem",
    "rehrseg_hrLevel": "REHRSegTrainer_hrLevel",
    "rehrseg_noUASR": "REHRSegTrainer_noUASR",
    "rehrseg_noDistill": "REHRSegTrainer_noDistill", "rehrseg_noHRHead": "REHRSegTrainer_noHRHead",
    # issue 14's per-class questions: a Dice term in the LR loss, mirroring, all patches on foreground
    "rehrseg_lrDice": "REHRSegTrainer_lrDice", "rehrseg_mirror": "REHRSegTrainer_mirror",
    "rehrseg_fgOversample": "REHRSegTrainer_fgOversample",
    "rehrseg_lrCentre": "REHRSegTrainer_lrCentre",  # LR target: the centre slice of each group, not the majority
    "rehrseg_fineTuneLr1en2": "REHRSegTrainer_fineTuneLr1en2",  # fine-tuning at nnU-Net's lr 1e-2, not 1e-3
}


def methods_of_split(raw: str, pseudohr: str, args) -> list[Method]:
    total, lr_only, tune = args.lr_epochs + args.finetune_epochs, args.lr_epochs, args.finetune_epochs
    inputs = {key: os.path.join(raw, dataset_name(key), "imagesTs") for key in DATASETS}
    init = Method("nnunet_lr_init", dataset_name("lr"), "nnUNetTrainer", INIT_PLANS, lr_only, "nnUNetv2_predict",
                  inputs["lr"])
    checkpoint = os.path.join(model_folder(init), "fold_all", "checkpoint_final.pth")
    pseudohr_inputs = os.path.join(raw, pseudohr, "imagesTs")
    # cheapest first, so that a run cut short has REHRSeg and the LR baseline scored before the HR-grid baselines
    return [init,
            Method("nnunet_lr", dataset_name("lr"), "nnUNetTrainer", BENCH_PLANS, total, "nnUNetv2_predict",
                   inputs["lr"])] + [
        Method(name, pseudohr, trainer, "REHRSegPlans", tune, "rehrseg_predict", inputs["lr"], checkpoint)
        for name, trainer in REHRSEG_METHODS.items()] + [
        Method("interp_nnunet", dataset_name("interp"), "nnUNetTrainer", BENCH_PLANS, total, "nnUNetv2_predict",
               inputs["interp"]),
        Method("sr_nnunet", pseudohr, "nnUNetTrainer", BENCH_PLANS, total, "nnUNetv2_predict", pseudohr_inputs),
        Method("oracle_hr", dataset_name("hr"), "nnUNetTrainer", BENCH_PLANS, total, "nnUNetv2_predict", inputs["hr"])]


SCORED = {  # result key -> the method whose predictions it scores
    "nnunet_lr_upsampled_nearest": "nnunet_lr", "nnunet_lr_upsampled_sdf": "nnunet_lr",
    "interp_nnunet": "interp_nnunet", "sr_nnunet": "sr_nnunet", "oracle_hr": "oracle_hr",
    **{name: name for name in REHRSEG_METHODS}}


def methods_needed(keys: list[str]) -> set[str]:
    """The methods to train for the result ``keys``: their own, plus the LR nnU-Net that REHRSeg starts from."""
    needed = {SCORED[key] for key in keys}
    return needed | ({"nnunet_lr_init"} if needed & set(REHRSEG_METHODS) else set())


def run_split(name: str, train_cases: list[str], test_cases: list[str], data: str, args) -> dict:
    """Everything for one split; returns per result key: per-case scores, seconds and provenance."""
    work = os.path.join(os.path.abspath(args.work), name)
    env = {"nnUNet_raw": os.path.join(work, "nnUNet_raw"),
           "nnUNet_preprocessed": os.path.join(work, "nnUNet_preprocessed"),
           "nnUNet_results": os.path.join(work, "nnUNet_results"), "nnUNet_def_n_proc": "1", "nnUNet_compile": "0"}
    os.environ.update(env)
    references = os.path.join(work, "references")
    log(f"split {name}: train {', '.join(train_cases)}; test {', '.join(test_cases)}")
    if args.score_only:
        pseudohr = next(d for d in os.listdir(env["nnUNet_raw"]) if d.startswith(f"Dataset{PSEUDOHR_ID}_"))
        return score_split(work, methods_of_split(env["nnUNet_raw"], pseudohr, args), {}, test_cases, references, args)
    make_datasets(data, env["nnUNet_raw"], references, train_cases, test_cases)
    model = os.path.join(work, "sr_model")
    if not os.path.isfile(os.path.join(model, "stage_1c", "checkpoint_final.pth")):
        command = [script("rehrseg_train_sr"), "-d", str(DATASETS["lr"][0]), "-o", model, "-device", args.device,
                   "--steps", *map(str, args.sr_steps), "--seed", str(args.seed)]
        run(command + (["--continue"] if os.path.isfile(os.path.join(model, "config.json")) else []))
    run([script("rehrseg_make_pseudohr"), "-d", str(DATASETS["lr"][0]), "-o", str(PSEUDOHR_ID), "-m", model,
         "-device", args.device])
    pseudohr = next(d for d in os.listdir(env["nnUNet_raw"]) if d.startswith(f"Dataset{PSEUDOHR_ID}_"))
    methods = {m.name: m for m in methods_of_split(env["nnUNet_raw"], pseudohr, args)}
    needed = methods_needed(args.methods)
    stock = sorted({methods[name].dataset for name in needed})  # only the datasets the asked methods train on
    missing = [d for d in stock
               if not os.path.isdir(os.path.join(env["nnUNet_preprocessed"], d, "nnUNetPlans_3d_fullres"))]
    if missing:
        run([script("nnUNetv2_plan_and_preprocess"), "-d", *[d.split("_")[0][7:] for d in missing], "-c", "3d_fullres",
             "-np", "1", "-npfp", "1", "--verify_dataset_integrity"])
    lr_patch = [args.patch_size[0] // SCALE_FACTOR, *args.patch_size[1:]]
    for plans_name in (BENCH_PLANS, INIT_PLANS):
        write_bench_plans(env["nnUNet_preprocessed"], dataset_name("lr"), lr_patch, args, plans_name)
    for dataset in (d for d in (dataset_name("interp"), dataset_name("hr"), pseudohr) if d in stock):
        write_bench_plans(env["nnUNet_preprocessed"], dataset, args.patch_size, args)
    if args.device == "cpu":
        os.environ.setdefault("nnUNet_n_proc_DA", "0")  # 2 CPU cores: augmentation workers only compete

    seconds: dict[str, float | None] = {}
    for method in (m for m in methods.values() if m.name in needed):
        if method.initialised_from and not os.path.isfile(os.path.join(env["nnUNet_preprocessed"], pseudohr,
                                                                       "REHRSegPlans.json")):
            lr_plans = os.path.join(model_folder(methods["nnunet_lr_init"]), "plans.json")
            run([script("rehrseg_plan"), "-d", str(PSEUDOHR_ID), "--lr_plans", lr_plans, "-np", "1"])
        seconds[method.name] = train(method, args)
        if method.name != "nnunet_lr_init":
            predict(method, os.path.join(work, "predictions", method.name), args)
    return score_split(work, list(methods.values()), seconds, test_cases, references, args)


def score_split(work: str, methods: list[Method], seconds: dict, test_cases: list[str], references: str,
                args) -> dict:
    """Scores of every result key whose predictions are complete (a run cut short scores what it has)."""
    methods = {m.name: m for m in methods}
    results = {}
    for key, method_name in ((k, m) for k, m in SCORED.items() if k in args.methods):
        method = methods[method_name]
        output = os.path.join(work, "predictions", method_name)
        if not os.path.isfile(os.path.join(output, "benchmark_predict_complete.json")):
            log(f"{key}: no complete prediction yet, not scored")
            continue
        predictions = scored_predictions(key, output, test_cases)
        per_case = {case: score_case(hr, lr, case, references) for case, (hr, lr) in predictions.items()}
        with open(os.path.join(output, "benchmark_predict_complete.json")) as handle:
            predict_seconds = json.load(handle)["seconds"]
        record = train_record(method)
        trained = record["seconds"] if record else None
        results[key] = {"per_case": per_case, "train_seconds": seconds.get(method_name), "trainer": method.trainer,
                        "train_seconds_all_sittings": trained,
                        "train_seconds_per_iteration": trained / (method.epochs * args.iterations) if trained else None,
                        "predict_seconds_per_volume": predict_seconds / len(test_cases),
                        "plans": method.plans, "dataset": method.dataset, "epochs": method.epochs,
                        "total_iterations": (method.epochs + (args.lr_epochs if method.initialised_from else 0))
                        * args.iterations}
        if method.initialised_from:
            results[key]["initialised_from"] = os.path.relpath(method.initialised_from, work)
            results[key]["fine_tuning_iterations"] = method.epochs * args.iterations
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
        if not os.path.isfile(os.path.join(predictions, SCORED[key], "benchmark_predict_complete.json")):
            continue
        hr, _ = scored_predictions(key, os.path.join(predictions, SCORED[key]), [case])[case]
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


# --- main -------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "brats2013_subset"),
                        help="folder of case folders (t1c.nii.gz, labels.nii.gz)")
    parser.add_argument("--train-cases", nargs="+", default=["pat0001", "pat0002", "pat0003"])
    parser.add_argument("--test-cases", nargs="+", default=["pat0004"])
    parser.add_argument("--folds", type=int, default=0, help="K-fold cross-validation over train + test cases")
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
    parser.add_argument("--methods", nargs="+", choices=list(SCORED), default=list(SCORED), metavar="KEY",
                        help="result keys to train, predict and score (default: all of "
                             f"{', '.join(SCORED)}); a REHRSeg key also trains the LR nnU-Net it starts from")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "brats_4x.json"))
    parser.add_argument("--figure", default=os.path.join(HERE, "..", "docs", "brats_4x.png"))
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
    pooled: dict[str, dict] = {}
    for name, train_cases, test_cases in splits(args):
        for key, result in run_split(name, train_cases, test_cases, data, args).items():
            entry = pooled.setdefault(key, {k: v for k, v in result.items() if k != "per_case"})
            entry.setdefault("per_case", {}).update({f"{name}/{c}": s for c, s in result["per_case"].items()})
            entry.setdefault("train_seconds_per_split", {})[name] = result["train_seconds"]
            entry.pop("train_seconds", None)
    methods = {key: {**summarise(entry["per_case"]), **{k: v for k, v in entry.items() if k != "per_case"}}
               for key, entry in pooled.items()}
    complete = {key for key, entry in methods.items() if len(entry["per_case"]) == sum(len(s[2]) for s in splits(args))}
    pending = [key for key in args.methods if key not in complete]

    import torch
    results = {
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
        "device": f"{args.device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                  f"{torch.__version__})",
        "seconds_this_run": time.perf_counter() - started,
        "command": "python benchmarks/brats_4x.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json_atomically(args.output, results)
    save_figure(args.figure, data, args)
    print_table(methods)
    log(f"results: {args.output}; figure: {args.figure}; this run {results['seconds_this_run'] / 60:.1f} min")


if __name__ == "__main__":
    main()
