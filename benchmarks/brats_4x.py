"""REHRSeg against the baselines on BRATS T1c with simulated 4 mm slices, all methods in one run.

Data: ``../shared/data/brats2013_subset`` (4 cases, 1 mm). Thick slices are simulated at r = 4 along z
(Gaussian slice profile; LR labels by the majority rule). Training sees the LR images and LR labels
of the training cases only; the untouched 1 mm labels of the test case are used for scoring only.
Fixed split: pat0001-pat0003 train, pat0004 test (4 cases do not allow more within the CPU budget).

Methods, all with the same budget (epochs x iterations, patch covering the same field of view,
U-Net widths, batch size, no test-time mirroring):
- ``nnunet_lr_upsampled_{nearest,linear}``: stock nnU-Net on the LR data (patch 8x64x64 at 4x1x1 mm);
  its LR prediction upsampled to 1 mm by nearest neighbour / by linear interpolation of the probabilities;
- ``interp_nnunet``: images cubic-B-spline- and labels nearest-upsampled to 1 mm, stock nnU-Net there;
- ``sr_nnunet``: the pseudo-HR dataset (``rehrseg_make_pseudohr``) with the stock nnUNetTrainer, test
  image super-resolved by the same SR model;
- ``rehrseg``, ``rehrseg_noUASR``, ``rehrseg_noDistill``: REHRSegTrainer variants on the pseudo-HR
  dataset, predicted from the LR test image with ``rehrseg_predict``.
The self-SR model is trained (``rehrseg_train_sr``) on the LR training cases only.

Scores: Dice and HD95 (mm) of the whole tumour (labels > 0) and per label, on the HR grid (1 mm
reference) and on the LR grid (the test case's LR labels; HR predictions brought down by the majority
rule the trainer uses).

    python benchmarks/brats_4x.py --data ../shared/data/brats2013_subset --device cpu          # quick CPU mode
    python benchmarks/brats_4x.py --data ../shared/data/brats2013_subset --device cuda --full   # nnU-Net schedules

Writes benchmarks/results/brats_4x.json (``--output``) and a figure of the test case
(``docs/brats_4x.png``, ``--figure``). Every stage resumes: a re-run skips what is complete.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.dataset_io import write_json_atomically
from rehrseg_nnunet.degradation import labels_to_lr, simulate_thick_slices
from rehrseg_nnunet.geometry import Grid
from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing": 3, "enhancing": 4}
SCALE_FACTOR = 4
SLICE_AXIS = 2  # z, SimpleITK order
TRAIN_CASES = ["pat0001", "pat0002", "pat0003"]
TEST_CASES = ["pat0004"]
DATASETS = {"lr": (911, "BratsLR4x"), "interp": (912, "BratsInterp4x")}
PSEUDOHR_ID = 913
BENCH_PLANS = "BenchPlans"
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


# --- data -------------------------------------------------------------------------------------------------
def make_datasets(data: str, raw: str, references: str) -> None:
    """The LR dataset (911), the interpolated HR dataset (912) and the scoring references."""
    lr_folder, interp_folder = (os.path.join(raw, dataset_name(k)) for k in ("lr", "interp"))
    if all(os.path.isfile(os.path.join(f, "dataset.json")) for f in (lr_folder, interp_folder)):
        return
    for folder in (lr_folder, interp_folder):
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for sub in ("hr", "lr"):
        os.makedirs(os.path.join(references, sub), exist_ok=True)
    for case in TRAIN_CASES + TEST_CASES:
        image = sitk.ReadImage(os.path.join(data, case, "t1c.nii.gz"), sitk.sitkFloat32)
        label = sitk.Cast(sitk.ReadImage(os.path.join(data, case, "labels.nii.gz")), sitk.sitkUInt8)
        lr_image, lr_label = simulate_thick_slices(image, SLICE_AXIS, SCALE_FACTOR, label=label)
        reference = hr_reference(lr_image)
        if not np.allclose(reference.GetOrigin(), image.GetOrigin(), atol=1e-4):
            raise RuntimeError(f"{case}: the HR grid of the simulated LR image does not start at the 1 mm origin.")
        cubic = sitk.Resample(lr_image, reference, sitk.Transform(), sitk.sitkBSpline, 0.0)
        nearest_label = sitk.Resample(lr_label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        if case in TEST_CASES:
            sitk.WriteImage(lr_image, os.path.join(lr_folder, "imagesTs", f"{case}_0000.nii.gz"))
            sitk.WriteImage(cubic, os.path.join(interp_folder, "imagesTs", f"{case}_0000.nii.gz"))
            sitk.WriteImage(label, os.path.join(references, "hr", f"{case}.nii.gz"))
            sitk.WriteImage(lr_label, os.path.join(references, "lr", f"{case}.nii.gz"))
        else:
            sitk.WriteImage(lr_image, os.path.join(lr_folder, "imagesTr", f"{case}_0000.nii.gz"))
            sitk.WriteImage(lr_label, os.path.join(lr_folder, "labelsTr", f"{case}.nii.gz"))
            sitk.WriteImage(cubic, os.path.join(interp_folder, "imagesTr", f"{case}_0000.nii.gz"))
            sitk.WriteImage(nearest_label, os.path.join(interp_folder, "labelsTr", f"{case}.nii.gz"))
    for key, folder in (("lr", lr_folder), ("interp", interp_folder)):
        write_json_atomically(os.path.join(folder, "dataset.json"), {
            "channel_names": {"0": "T1c"}, "labels": LABELS, "numTraining": len(TRAIN_CASES), "file_ending": ".nii.gz",
            "name": DATASETS[key][1], "description": "BRATS T1c, 4 mm slices simulated along z (benchmarks/brats_4x.py)"})


# --- plans ------------------------------------------------------------------------------------------------
def fixed_budget_plans(plans: dict, patch_size: list[int], base_features: int, max_features: int,
                       batch_size: int) -> dict:
    """Stock nnU-Net plans with the benchmark's patch, widths and batch (nnU-Net's topology for that patch)."""
    from rehrseg_nnunet.planning import features_per_stage, lr_topology
    out = copy.deepcopy(plans)
    out["plans_name"] = BENCH_PLANS
    config = out["configurations"]["3d_fullres"]
    topology = lr_topology(config["spacing"], patch_size, 1)
    n_stages = len(topology["strides"])
    config["architecture"]["arch_kwargs"].update(
        n_stages=n_stages, features_per_stage=features_per_stage(n_stages, base_features, max_features),
        kernel_sizes=topology["kernel_sizes"], strides=topology["strides"], n_conv_per_stage=[2] * n_stages,
        n_conv_per_stage_decoder=[2] * (n_stages - 1))
    config["patch_size"] = topology["hr_patch_size"]
    config["batch_size"] = batch_size
    out["configurations"] = {"3d_fullres": config}
    return out


def write_bench_plans(preprocessed: str, name: str, patch_size: list[int] | None, args) -> str:
    """Plans name to train with: BenchPlans (quick mode) or nnUNetPlans untouched (--full)."""
    if patch_size is None:
        return "nnUNetPlans"
    folder = os.path.join(preprocessed, name)
    with open(os.path.join(folder, "nnUNetPlans.json")) as handle:
        plans = json.load(handle)
    write_json_atomically(os.path.join(folder, f"{BENCH_PLANS}.json"),
               fixed_budget_plans(plans, patch_size, args.base_features, args.max_features, args.batch_size))
    return BENCH_PLANS


# --- training and prediction ------------------------------------------------------------------------------
def train(trainer_name: str, dataset: str, plans_name: str, args) -> tuple[str, float | None]:
    """Train in this process with the benchmark's schedule; returns (model folder, seconds)."""
    import nnunetv2
    import torch
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    if trainer_name.startswith("REHRSeg"):
        from rehrseg_nnunet.training import trainer as rehrseg_trainers
        trainer_class = getattr(rehrseg_trainers, trainer_name)
    else:
        trainer_class = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"),
                                                    trainer_name, "nnunetv2.training.nnUNetTrainer")
    folder = os.path.join(os.environ["nnUNet_preprocessed"], dataset)
    with open(os.path.join(folder, f"{plans_name}.json")) as handle:
        plans = json.load(handle)
    with open(os.path.join(folder, "dataset.json")) as handle:
        dataset_json = json.load(handle)
    model = os.path.join(os.environ["nnUNet_results"], dataset, f"{trainer_name}__{plans_name}__3d_fullres")
    timing_file = os.path.join(model, "benchmark_train_seconds.json")
    if os.path.isfile(os.path.join(model, "fold_all", "checkpoint_final.pth")):
        log(f"{trainer_name} on {dataset}: already trained, skipped")
        return model, json.load(open(timing_file))["seconds"] if os.path.isfile(timing_file) else None
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    trainer = trainer_class({**plans, "continue_training": False}, "3d_fullres", "all", dataset_json,
                            torch.device(args.device))
    if not args.full:
        trainer.num_epochs = args.epochs
        trainer.num_iterations_per_epoch = args.iterations
        trainer.num_val_iterations_per_epoch = args.val_iterations
    log(f"training {trainer_name} on {dataset} with {plans_name}: {trainer.num_epochs} epochs x "
        f"{trainer.num_iterations_per_epoch} iterations")
    started = time.perf_counter()
    trainer.run_training()
    seconds = time.perf_counter() - started
    del trainer
    write_json_atomically(timing_file, {"seconds": seconds})
    return model, seconds


def predict(entry: str, inputs: str, output: str, dataset: str, trainer_name: str, plans_name: str, args,
            save_probabilities: bool = False) -> float | None:
    marker = os.path.join(output, "benchmark_predict_complete.json")  # a killed run may leave truncated files
    if os.path.isfile(marker):
        return None
    command = [script(entry), "-i", inputs, "-o", output, "-d", dataset, "-tr", trainer_name, "-p", plans_name,
               "-device", args.device, *PREDICT_FLAGS] + (["--save_probabilities"] if save_probabilities else [])
    if entry == "nnUNetv2_predict":
        command.append("--disable_tta")  # stock baselines: no mirroring, as REHRSeg (rehrseg_predict has no TTA)
    started = time.perf_counter()
    run(command, {"nnUNet_extTrainer": EXT_TRAINER_FOLDER})
    seconds = time.perf_counter() - started
    write_json_atomically(marker, {"seconds": seconds})
    return seconds


def upsample_lr_prediction(lr_folder: str, case: str, mode: str) -> sitk.Image:
    """The LR nnU-Net's prediction on the HR grid: nearest label, or argmax of linearly resampled probabilities."""
    lr_seg = sitk.ReadImage(os.path.join(lr_folder, f"{case}.nii.gz"))
    reference = hr_reference(lr_seg)
    if mode == "nearest":
        return sitk.Resample(lr_seg, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    probabilities = np.load(os.path.join(lr_folder, f"{case}.npz"))["probabilities"]  # (c, z, y, x), input grid
    resampled = []
    for channel in probabilities:
        image = sitk.GetImageFromArray(channel.astype(np.float32))
        image.CopyInformation(lr_seg)
        resampled.append(sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)))
    label = sitk.GetImageFromArray(np.argmax(resampled, axis=0).astype(np.uint8))
    label.CopyInformation(reference)
    return label


# --- scoring ----------------------------------------------------------------------------------------------
def score(prediction_hr: sitk.Image | None, prediction_lr: sitk.Image | None, case: str, references: str) -> dict:
    """HR and LR scores of one case; an HR prediction also gives the LR one (majority rule along z)."""
    from rehrseg_nnunet.evaluation import segmentation_scores
    hr_truth = sitk.ReadImage(os.path.join(references, "hr", f"{case}.nii.gz"))
    lr_truth = sitk.ReadImage(os.path.join(references, "lr", f"{case}.nii.gz"))
    result = {}
    if prediction_hr is not None:
        hr_on_truth = sitk.Resample(prediction_hr, hr_truth, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        result["hr"] = segmentation_scores(sitk.GetArrayFromImage(hr_truth), sitk.GetArrayFromImage(hr_on_truth),
                                           list(reversed(hr_truth.GetSpacing())), LABELS)
        if prediction_lr is None:
            array = sitk.GetArrayFromImage(prediction_hr)
            prediction_lr = sitk.GetImageFromArray(labels_to_lr(array, 0, SCALE_FACTOR))
            prediction_lr.CopyInformation(lr_truth)
    result["lr"] = segmentation_scores(sitk.GetArrayFromImage(lr_truth), sitk.GetArrayFromImage(prediction_lr),
                                       list(reversed(lr_truth.GetSpacing())), LABELS)
    return result


def summarise(per_case: dict[str, dict]) -> dict:
    """Mean over test cases: whole tumour at the top level, per label under ``per_label``."""
    out: dict = {"per_label": {}}
    for grid in ("hr", "lr"):
        for key in ("dice", "hd95"):
            out[f"{grid}_{key}"] = float(np.mean([c[grid]["foreground"][key] for c in per_case.values()]))
            for name in LABELS:
                if name == "background":
                    continue
                values = [c[grid][name][key] for c in per_case.values() if c[grid][name]["present"]]
                if values:
                    out["per_label"].setdefault(name, {})[f"{grid}_{key}"] = float(np.mean(values))
    out["per_case"] = per_case
    return out


def save_figure(path: str, data: str, work: str, lr_variant: str) -> None:
    """The test case in a through-plane view: LR input, each method's HR segmentation, the 1 mm truth."""
    from rehrseg_nnunet.qc import Panel, save_qc_png
    case = TEST_CASES[0]
    predictions = os.path.join(work, "predictions")
    truth_image = sitk.ReadImage(os.path.join(data, case, "t1c.nii.gz"), sitk.sitkFloat32)
    truth_label = sitk.Cast(sitk.ReadImage(os.path.join(data, case, "labels.nii.gz")), sitk.sitkUInt8)
    lr_image = sitk.ReadImage(os.path.join(work, "nnUNet_raw", dataset_name("lr"), "imagesTs", f"{case}_0000.nii.gz"))
    panels = [Panel("LR input (4 mm)", lr_image),
              Panel(lr_variant, truth_image, upsample_lr_prediction(os.path.join(predictions, "nnunet_lr"), case,
                                                                   lr_variant.rsplit("_", 1)[1]))]
    for method in ("interp_nnunet", "sr_nnunet", "rehrseg", "rehrseg_noUASR", "rehrseg_noDistill"):
        panels.append(Panel(method, truth_image, sitk.ReadImage(os.path.join(predictions, method, f"{case}.nii.gz"))))
    panels.append(Panel("1 mm truth", truth_image, truth_label))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_qc_png(path, panels, SLICE_AXIS, columns=4)


# --- main -------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "brats2013_subset"))
    parser.add_argument("--work", default=os.path.join(HERE, "work", "brats_4x"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true",
                        help="nnU-Net's own plans and schedule (1000 x 250) for every method; SR preset steps (GPU)")
    parser.add_argument("--sr-steps", type=int, nargs=3, default=[1000, 300, 600], help="quick mode: SR steps 1a 1b 1c")
    parser.add_argument("--epochs", type=int, default=10, help="quick mode")
    parser.add_argument("--iterations", type=int, default=25, help="quick mode: iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=2, help="quick mode: validation iterations per epoch")
    parser.add_argument("--patch-size", type=int, nargs=3, default=[32, 64, 64], help="quick mode: HR patch (z y x)")
    parser.add_argument("--base-features", type=int, default=16)
    parser.add_argument("--max-features", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "brats_4x.json"))
    parser.add_argument("--figure", default=os.path.join(HERE, "..", "docs", "brats_4x.png"))
    parser.add_argument("--figure-only", action="store_true",
                        help="redraw the figure from the predictions and results of a finished run")
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        sys.exit(f"{args.data} does not exist; pass --data with the BRATS subset folder (../shared/data/brats2013_subset).")
    data = os.path.abspath(args.data)
    work = os.path.abspath(args.work)
    env = {"nnUNet_raw": os.path.join(work, "nnUNet_raw"), "nnUNet_preprocessed": os.path.join(work, "nnUNet_preprocessed"),
           "nnUNet_results": os.path.join(work, "nnUNet_results"), "nnUNet_def_n_proc": "1", "nnUNet_compile": "0"}
    os.environ.update(env)
    references = os.path.join(work, "references")
    if args.figure_only:
        with open(args.output) as handle:
            save_figure(args.figure, data, work, json.load(handle)["methods"]["nnunet_lr_upsampled"]["variant"])
        return
    started = time.perf_counter()
    timings: dict[str, float] = {}

    log("simulating 4 mm slices; LR and interpolated datasets")
    make_datasets(data, env["nnUNet_raw"], references)

    model = os.path.join(work, "sr_model")
    if not os.path.isfile(os.path.join(model, "stage_1c", "checkpoint_final.pth")):
        command = [script("rehrseg_train_sr"), "-d", str(DATASETS["lr"][0]), "-o", model, "-device", args.device]
        if not args.full:
            command += ["--steps", *map(str, args.sr_steps)]
        if os.path.isfile(os.path.join(model, "config.json")):
            command.append("--continue")
        t0 = time.perf_counter()
        run(command)
        timings["sr_training"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run([script("rehrseg_make_pseudohr"), "-d", str(DATASETS["lr"][0]), "-o", str(PSEUDOHR_ID), "-m", model,
         "-device", args.device])
    timings["make_pseudohr"] = time.perf_counter() - t0
    pseudohr = next(d for d in os.listdir(env["nnUNet_raw"]) if d.startswith(f"Dataset{PSEUDOHR_ID}_"))

    stock_datasets = [dataset_name("lr"), dataset_name("interp"), pseudohr]
    t0 = time.perf_counter()
    missing = [d for d in stock_datasets if not os.path.isfile(os.path.join(env["nnUNet_preprocessed"], d, "nnUNetPlans.json"))
               or not os.path.isdir(os.path.join(env["nnUNet_preprocessed"], d, "nnUNetPlans_3d_fullres"))]
    if missing:
        run([script("nnUNetv2_plan_and_preprocess"), "-d", *[d.split("_")[0][7:] for d in missing], "-c", "3d_fullres",
             "-np", "1", "-npfp", "1", "--verify_dataset_integrity"])
    rehrseg_patch = [] if args.full else ["--patch_size", *map(str, args.patch_size), "--base_features",
                                          str(args.base_features), "--max_features", str(args.max_features),
                                          "--batch_size", str(args.batch_size)]
    run([script("rehrseg_plan"), "-d", str(PSEUDOHR_ID), *rehrseg_patch, "-np", "1"])
    hr_patch = None if args.full else args.patch_size
    lr_patch = None if args.full else [args.patch_size[0] // SCALE_FACTOR, *args.patch_size[1:]]
    plans = {dataset_name("lr"): write_bench_plans(env["nnUNet_preprocessed"], dataset_name("lr"), lr_patch, args),
             dataset_name("interp"): write_bench_plans(env["nnUNet_preprocessed"], dataset_name("interp"), hr_patch, args),
             pseudohr: write_bench_plans(env["nnUNet_preprocessed"], pseudohr, hr_patch, args)}
    timings["plan_and_preprocess"] = time.perf_counter() - t0
    os.environ["nnUNet_n_proc_DA"] = "0"  # data augmentation in the training process: 2 CPU cores, no gain from workers

    predictions_root = os.path.join(work, "predictions")
    lr_inputs = os.path.join(env["nnUNet_raw"], dataset_name("lr"), "imagesTs")
    runs = [  # method, dataset, trainer, plans, prediction entry point, inputs
        ("nnunet_lr", dataset_name("lr"), "nnUNetTrainer", plans[dataset_name("lr")], "nnUNetv2_predict", lr_inputs),
        ("interp_nnunet", dataset_name("interp"), "nnUNetTrainer", plans[dataset_name("interp")], "nnUNetv2_predict",
         os.path.join(env["nnUNet_raw"], dataset_name("interp"), "imagesTs")),
        ("sr_nnunet", pseudohr, "nnUNetTrainer", plans[pseudohr], "nnUNetv2_predict",
         os.path.join(env["nnUNet_raw"], pseudohr, "imagesTs")),
        ("rehrseg", pseudohr, "REHRSegTrainer", "REHRSegPlans", "rehrseg_predict", lr_inputs),
        ("rehrseg_noUASR", pseudohr, "REHRSegTrainer_noUASR", "REHRSegPlans", "rehrseg_predict", lr_inputs),
        ("rehrseg_noDistill", pseudohr, "REHRSegTrainer_noDistill", "REHRSegPlans", "rehrseg_predict", lr_inputs),
    ]
    methods: dict[str, dict] = {}
    seconds: dict[str, tuple[float, float]] = {}
    for method, dataset, trainer_name, plans_name, entry, inputs in runs:
        _, train_seconds = train(trainer_name, dataset, plans_name, args)
        predict_seconds = predict(entry, inputs, os.path.join(predictions_root, method), dataset, trainer_name,
                                  plans_name, args, save_probabilities=method == "nnunet_lr")
        seconds[method] = train_seconds, predict_seconds
    for method, dataset, trainer_name, plans_name, _, _ in runs:
        output = os.path.join(predictions_root, method)
        train_seconds, predict_seconds = seconds[method]
        variants = {"nnunet_lr_upsampled_nearest": "nearest", "nnunet_lr_upsampled_linear": "linear"} \
            if method == "nnunet_lr" else {method: None}
        for name, mode in variants.items():
            per_case = {}
            for case in TEST_CASES:
                if mode:
                    prediction_lr = sitk.ReadImage(os.path.join(output, f"{case}.nii.gz"))
                    prediction_hr = upsample_lr_prediction(output, case, mode)
                else:
                    prediction_lr, prediction_hr = None, sitk.ReadImage(os.path.join(output, f"{case}.nii.gz"))
                per_case[case] = score(prediction_hr, prediction_lr, case, references)
            methods[name] = {**summarise(per_case), "train_seconds": train_seconds, "predict_seconds": predict_seconds,
                             "trainer": trainer_name, "plans": plans_name, "dataset": dataset}
            log(f"{name}: HR Dice {methods[name]['hr_dice']:.4f}, HR HD95 {methods[name]['hr_hd95']:.2f} mm, "
                f"LR Dice {methods[name]['lr_dice']:.4f}, LR HD95 {methods[name]['lr_hd95']:.2f} mm")
    nearest, linear = methods["nnunet_lr_upsampled_nearest"], methods["nnunet_lr_upsampled_linear"]
    best = "nnunet_lr_upsampled_linear" if linear["hr_dice"] >= nearest["hr_dice"] else "nnunet_lr_upsampled_nearest"
    methods["nnunet_lr_upsampled"] = {**copy.deepcopy(methods[best]), "variant": best}

    import torch
    results = {
        "methods": methods,
        "split": {"train": TRAIN_CASES, "test": TEST_CASES, "kind": "fixed split"},
        "budget": {"mode": "full (nnU-Net plans and schedule)" if args.full else "quick",
                   "epochs": None if args.full else args.epochs,
                   "iterations_per_epoch": None if args.full else args.iterations,
                   "val_iterations_per_epoch": None if args.full else args.val_iterations,
                   "hr_patch_size": hr_patch, "lr_patch_size": lr_patch, "base_features": args.base_features,
                   "max_features": args.max_features, "batch_size": args.batch_size,
                   "sr_steps": None if args.full else args.sr_steps, "test_time_mirroring": False, "seed": args.seed},
        "device": f"{args.device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                  f"{torch.__version__})",
        "timings_seconds": {**timings, "total": time.perf_counter() - started},
        "command": "python benchmarks/brats_4x.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json_atomically(args.output, results)
    save_figure(args.figure, data, work, best)
    print(f"\n{'method':30s} {'HR Dice':>8s} {'HR HD95':>8s} {'LR Dice':>8s} {'LR HD95':>8s}")
    for name, row in methods.items():
        print(f"{name:30s} {row['hr_dice']:8.4f} {row['hr_hd95']:8.2f} {row['lr_dice']:8.4f} {row['lr_hd95']:8.2f}")
    log(f"results: {args.output}; figure: {args.figure}; total {results['timings_seconds']['total'] / 60:.1f} min")


if __name__ == "__main__":
    main()
