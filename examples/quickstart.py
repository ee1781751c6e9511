"""Quick start: HR segmentation from thick-slice MRI with thick-slice labels only, end to end.

The embedded example (MNI ICBM152 2009a T1 and its grey/white-matter maps, shipped in nilearn's wheel;
nothing is downloaded) stands in for your data. Every step below is a console command you would run on
your own nnU-Net raw dataset; replace step 1 by your dataset and drop the scoring against the 1 mm truth
(your data have none).

1. write ``Dataset990_MNIThick``: two 4 mm thick-slice acquisitions (slice phases 0 and 2 mm) with
   thick-slice tissue labels; a third acquisition (phase 1 mm) is kept aside as a test input;
2. ``rehrseg_train_sr -d 990``                    self-supervised SR from the thick slices alone;
3. ``rehrseg_make_pseudohr -d 990 -o 991``         pseudo-HR images, labels, uncertainty maps, QC PNGs;
4. ``nnUNetv2_plan_and_preprocess -d 990 991 --no_pp``; on a CPU, smaller plans for both stock nnU-Nets
   (``nnUNetPlansCPU``: patch 8 x 64 x 64 on the thick slices, 32 x 64 x 64 on the pseudo-HR grid, 8 -> 64
   features, z-score over the whole crop; on a GPU use ``nnUNetPlans`` as they are) and
   ``nnUNetv2_preprocess -plans_name nnUNetPlansCPU``;
5. the thick-slice nnU-Net REHRSeg starts from (``nnUNetv2_train 990 … -tr nnUNetTrainer_cpu``,
   8 x 15 iterations) and, as the comparison, the same nnU-Net trained for REHRSeg's whole budget
   (``-tr nnUNetTrainer_cpu16epochs``, 16 x 15 iterations);
6. ``rehrseg_plan -d 991 --lr_plans …`` (the inner U-Net gets the thick-slice model's topology), then
   ``nnUNetv2_train 991 3d_fullres all -tr REHRSegTrainer_cpu -p REHRSegPlans -pretrained_weights …``:
   REHRSeg fine-tuned from the thick-slice model (8 x 15 iterations at lr 1e-3, METHOD.md);
7. SR + stock nnU-Net: ``nnUNetv2_train 991 … -tr nnUNetTrainer_cpu16epochs -p nnUNetPlansCPU`` on the
   pseudo-HR images and labels (REHRSeg's whole budget);
8. the held-out thick-slice input segmented at 1 mm four ways: ``rehrseg_predict --save_probabilities``;
   ``rehrseg_super_resolve`` then ``nnUNetv2_predict --save_probabilities`` with the SR + stock nnU-Net;
   ``nnUNetv2_ensemble`` of the two (the decision run's best row, docs/BENCHMARKS.md); and the comparison's
   4 mm segmentation upsampled to 1 mm by shape-based interpolation (what a user would do without this package);
9. ``rehrseg_evaluate`` of all four against the 1 mm tissue labels no step saw, next to the test
   acquisition's own thick-slice labels upsampled (what thick-slice annotation alone gives).

    python examples/quickstart.py [--work demo_output] [-device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import SimpleITK as sitk

from rehrseg_nnunet.degradation import simulate_thick_slices
from rehrseg_nnunet.example_data import example_cases, write_example_dataset
from rehrseg_nnunet.geometry import Grid
from rehrseg_nnunet.resized_plans import write_resized_plans
from rehrseg_nnunet.shape_interpolation import shape_based_upsample_image
from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

SOURCE_ID, TARGET_ID = 990, 991
SOURCE, TARGET = "Dataset990_MNIThick", "Dataset991_MNIThickPseudoHR"
SCALE_FACTOR = 4
SLICE_AXIS = 2  # z
TRAINER = "REHRSegTrainer_cpu"
LR_TRAINER, BASELINE_TRAINER = "nnUNetTrainer_cpu", "nnUNetTrainer_cpu16epochs"
CPU_PLANS = "nnUNetPlansCPU"  # CPU-sized plans of both stock nnU-Nets
WORKERS = "2"  # processes for nnU-Net's fingerprinting and preprocessing: one per core of a 2-core machine


STARTED = time.monotonic()  # the steps print the time elapsed since the script started


def step(index: int, total: int, text: str) -> None:
    elapsed = int(time.monotonic() - STARTED)
    print(f"\n[{index}/{total}] {text}  ({elapsed // 60}:{elapsed % 60:02d} elapsed)", flush=True)


def run(*command: str, env: dict[str, str] | None = None) -> None:
    """Run one console command of the pipeline (echoed as a user would type it), with extra ``env`` variables."""
    print("      $ " + " ".join(f"{k}={v}" for k, v in (env or {}).items()) + (" " if env else "") + " ".join(command),
          flush=True)
    subprocess.run([shutil.which(command[0]) or command[0], *command[1:]], check=True,
                   env={**os.environ, **(env or {})})


def write_test_acquisition(folder: str, reference_folder: str) -> None:
    """A third acquisition of the template (slice phase 1 mm), not part of the training dataset: its thick
    slices are the test input, its 1 mm labels the reference, its own thick-slice labels the baseline."""
    case = example_cases(num_cases=4, scale_factor=SCALE_FACTOR)[1]  # phases 0, 1, 2, 3 mm: take 1 mm
    lr_image, lr_label = simulate_thick_slices(case.hr_image, 2, SCALE_FACTOR, label=case.hr_label)
    for sub in ("images", "lr_labels_upsampled"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    os.makedirs(reference_folder, exist_ok=True)
    sitk.WriteImage(lr_image, os.path.join(folder, "images", "mnitest_0000.nii.gz"))
    sitk.WriteImage(case.hr_label, os.path.join(reference_folder, "mnitest.nii.gz"))
    grid = Grid.from_image(lr_image).refine(2, SCALE_FACTOR)
    upsampled = grid.image_from_array(sitk.GetArrayFromImage(lr_label).repeat(SCALE_FACTOR, axis=0))  # nearest
    sitk.WriteImage(upsampled, os.path.join(folder, "lr_labels_upsampled", "mnitest.nii.gz"))


def model_folder(dataset: str, trainer: str, plans: str) -> str:
    return os.path.join(os.environ["nnUNet_results"], dataset, f"{trainer}__{plans}__3d_fullres", "fold_all")


def train(dataset_id: int, folder: str, trainer: str, plans: str, device: str, *extra: str) -> None:
    """``nnUNetv2_train`` unless ``folder`` already holds the final checkpoint (a re-run resumes the example)."""
    if os.path.isfile(os.path.join(folder, "checkpoint_final.pth")):
        print(f"      {trainer}: already trained ({folder})")
        return
    resume = ["--c"] if os.path.isfile(os.path.join(folder, "checkpoint_latest.pth")) else list(extra)
    # augmentation in the training process (2 cores)
    run("nnUNetv2_train", str(dataset_id), "3d_fullres", "all", "-tr", trainer, "-p", plans, "-device", device,
        *resume, env={"nnUNet_n_proc_DA": "0"})


def upsample_shape_based(lr_folder: str, hr_folder: str) -> None:
    """The thick-slice nnU-Net's segmentations on the 1 mm grid by shape-based interpolation along z."""
    os.makedirs(hr_folder, exist_ok=True)
    for name in sorted(os.listdir(lr_folder)):
        if name.endswith(".nii.gz"):
            hr = shape_based_upsample_image(sitk.ReadImage(os.path.join(lr_folder, name)), SLICE_AXIS, SCALE_FACTOR)
            sitk.WriteImage(hr, os.path.join(hr_folder, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="demo_output",
                        help="folder for nnUNet_raw/_preprocessed/_results and outputs")
    parser.add_argument("-device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--sr-steps", type=int, nargs=3, default=[200, 75, 200], help="SR training steps of 1a 1b 1c")
    parser.add_argument("-tr", dest="trainer", default=TRAINER, help=f"REHRSeg trainer (default {TRAINER})")
    parser.add_argument("--lr-trainers", nargs=2, default=[LR_TRAINER, BASELINE_TRAINER],
                        metavar=("START", "COMPARISON"),
                        help="thick-slice nnU-Net trainers: the one REHRSeg starts from, "
                             "and the comparison at REHRSeg's "
                             f"whole budget (default {LR_TRAINER} {BASELINE_TRAINER})")
    args = parser.parse_args()
    lr_trainer, baseline_trainer = args.lr_trainers
    work = os.path.abspath(args.work)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[variable] = os.path.join(work, variable)
    # 2 CPU cores: nnU-Net's worker count where no -np is given, and its cap on torch threads when predicting
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    os.environ.setdefault("nnUNet_compile", "0")         # torch.compile costs more than it saves on CPU
    os.environ["nnUNet_extTrainer"] = EXT_TRAINER_FOLDER  # lets nnUNetv2_train find REHRSegTrainer
    started = time.time()
    total = 9
    test_folder, reference = os.path.join(work, "test"), os.path.join(work, "reference_1mm")
    test_images = os.path.join(test_folder, "images")
    predictions = {"ensemble": os.path.join(work, "predictions_ensemble"),
                   "rehrseg": os.path.join(work, "predictions_hr"),
                   "sr_nnunet": os.path.join(work, "predictions_sr_nnunet"),
                   "super_resolved": os.path.join(test_folder, "images_super_resolved"),
                   "nnunet_lr": os.path.join(work, "predictions_lr_nnunet"),
                   "nnunet_lr_shape_based": os.path.join(work, "predictions_lr_nnunet_shape_based_1mm"),
                   "lr_labels_upsampled": os.path.join(test_folder, "lr_labels_upsampled")}

    step(1, total, "thick-slice example dataset (MNI ICBM152 2009a T1, 4 mm slices along z) and a test acquisition")
    write_example_dataset(os.environ["nnUNet_raw"], SOURCE_ID, num_cases=2, scale_factor=SCALE_FACTOR)
    write_test_acquisition(test_folder, reference)

    step(2, total, "self-supervised SR, learnt from the thick slices alone")
    model = os.path.join(os.environ["nnUNet_results"], SOURCE, "rehrseg_sr")
    resume = ["--continue"] if os.path.isfile(os.path.join(model, "config.json")) else []
    if not os.path.isfile(os.path.join(model, "stage_1c", "checkpoint_final.pth")):
        run("rehrseg_train_sr", "-d", str(SOURCE_ID), "-device", args.device, "--steps", *map(str, args.sr_steps),
            *resume)

    step(3, total, "pseudo-HR dataset: images, labels, uncertainty maps, QC pictures")
    run("rehrseg_make_pseudohr", "-d", str(SOURCE_ID), "-o", str(TARGET_ID), "-device", args.device)

    step(4, total, "nnU-Net planning and preprocessing of both datasets; smaller plans for the stock nnU-Nets")
    # --no_pp: both datasets are preprocessed below for the plans they train with (nnUNetPlansCPU, REHRSegPlans)
    run("nnUNetv2_plan_and_preprocess", "-d", str(SOURCE_ID), str(TARGET_ID), "-c", "3d_fullres", "-npfp", WORKERS,
        "--verify_dataset_integrity", "--no_pp")
    # on a GPU, train the stock nnU-Nets with nnUNetPlans as they are; on 2 CPU cores an 8 -> 64-feature U-Net
    # (2.3x faster per HR iteration than 16 -> 128) on 8 x 64 x 64 thick-slice patches (REHRSeg's patch:
    # 32 x 64 x 64 on the 1 mm grid, as the SR + nnU-Net's), z-scored over the whole cropped volume: inside
    # nnU-Net's non-zero mask the zero background becomes the mean tissue value, which a few hundred iterations
    # do not learn to tell from tissue (REHRSeg inherits this normalisation)
    for dataset_id, dataset, patch_size in ((SOURCE_ID, SOURCE, [8, 64, 64]), (TARGET_ID, TARGET, [32, 64, 64])):
        plans_file = write_resized_plans(os.path.join(os.environ["nnUNet_preprocessed"], dataset), patch_size,
                                         base_features=8, max_features=64, batch_size=2, plans_name=CPU_PLANS,
                                         use_mask_for_norm=False)
        print(f"      wrote {plans_file}")
        run("nnUNetv2_preprocess", "-d", str(dataset_id), "-plans_name", CPU_PLANS, "-c", "3d_fullres", "-np", WORKERS)

    step(5, total, "thick-slice nnU-Net: the model REHRSeg starts from, and the comparison at REHRSeg's whole budget")
    lr_model = model_folder(SOURCE, lr_trainer, CPU_PLANS)
    train(SOURCE_ID, lr_model, lr_trainer, CPU_PLANS, args.device)
    train(SOURCE_ID, model_folder(SOURCE, baseline_trainer, CPU_PLANS), baseline_trainer, CPU_PLANS, args.device)

    step(6, total, f"REHRSeg plans with the thick-slice model's U-Net, then {args.trainer} fine-tuned from it")
    run("rehrseg_plan", "-d", str(TARGET_ID), "--lr_plans", os.path.join(os.path.dirname(lr_model), "plans.json"),
        "-np", WORKERS)
    train(TARGET_ID, model_folder(TARGET, args.trainer, "REHRSegPlans"), args.trainer, "REHRSegPlans", args.device,
          "-pretrained_weights", os.path.join(lr_model, "checkpoint_final.pth"))

    step(7, total, f"SR + stock nnU-Net: {baseline_trainer} on the pseudo-HR dataset, REHRSeg's whole budget")
    train(TARGET_ID, model_folder(TARGET, baseline_trainer, CPU_PLANS), baseline_trainer, CPU_PLANS, args.device)

    step(8, total, "segmentations of the held-out thick-slice input: REHRSeg, SR + nnU-Net and their ensemble (1 mm), "
                   "the comparison (4 mm -> 1 mm)")
    no_tta = "--disable_tta"  # no mirroring at prediction: the CPU schedules train without it
    # windows overlapping by a quarter instead of half: about half the sliding-window passes on a CPU (on a GPU keep
    # the default 0.5)
    step_size = ("-step_size", "0.75")
    run("rehrseg_predict", "-i", test_images, "-o", predictions["rehrseg"], "-d", str(TARGET_ID),
        "-tr", args.trainer, "-f", "all", "-device", args.device, "-npp", "1", "-nps", "1", *step_size,
        "--save_probabilities")
    # a stock nnU-Net on the HR grid needs an HR input: the thick slices super-resolved by the dataset's SR model
    run("rehrseg_super_resolve", "-i", test_images, "-o", predictions["super_resolved"], "-d", str(SOURCE_ID),
        "-device", args.device)
    run("nnUNetv2_predict", "-i", predictions["super_resolved"], "-o", predictions["sr_nnunet"], "-d", str(TARGET_ID),
        "-tr", baseline_trainer, "-p", CPU_PLANS, "-c", "3d_fullres", "-f", "all", "-device", args.device,
        "-npp", "1", "-nps", "1", *step_size, no_tta, "--save_probabilities")
    # both models wrote HR class probabilities on the same grid: nnU-Net's ensembling averages them
    run("nnUNetv2_ensemble", "-i", predictions["rehrseg"], predictions["sr_nnunet"], "-o", predictions["ensemble"],
        "-np", "1")
    run("nnUNetv2_predict", "-i", test_images, "-o", predictions["nnunet_lr"], "-d", str(SOURCE_ID),
        "-tr", baseline_trainer, "-p", CPU_PLANS, "-c", "3d_fullres", "-f", "all", "-device", args.device,
        "-npp", "1", "-nps", "1", *step_size, no_tta)
    upsample_shape_based(predictions["nnunet_lr"], predictions["nnunet_lr_shape_based"])
    print(f"      shape-based interpolation to 1 mm -> {predictions['nnunet_lr_shape_based']}")

    step(9, total, "scores against the 1 mm tissue labels (never seen by any step)")
    dataset_json = os.path.join(os.environ["nnUNet_raw"], TARGET, "dataset.json")
    rows = (("ensemble", "ensemble: REHRSeg + SR nnU-Net"),
            ("rehrseg", f"REHRSeg ({args.trainer}, fine-tuned)"),
            ("sr_nnunet", f"SR + nnU-Net ({baseline_trainer})"),
            ("nnunet_lr_shape_based", f"nnU-Net 4 mm ({baseline_trainer}) + shape-based"),
            ("lr_labels_upsampled", "thick-slice labels upsampled (reference)"))
    summary = {}
    for key, text in rows:
        print(f"\n--- {text}")
        run("rehrseg_evaluate", "-ref", reference, "-pred", predictions[key], "-djfile", dataset_json,
            "--resample-to-reference")
        with open(os.path.join(predictions[key], "summary_rehrseg.json")) as handle:
            summary[key] = json.load(handle)["mean"]
    classes = [name for name in summary["rehrseg"] if name != "foreground"]
    print(f"\nHeld-out acquisition, 1 mm grid (training iterations: {lr_trainer} + {args.trainer} = {baseline_trainer} "
          f"for each stock nnU-Net; the ensemble costs both of its members):")
    width = max(len(text) for _, text in rows)
    print(f"{'':{width}s} {'tissue Dice':>11s} {'HD95 mm':>8s}"
          + "".join(f" {name + ' Dice':>18s}" for name in classes))
    for key, text in rows:
        scores = summary[key]
        print(f"{text:{width}s} {scores['foreground']['dice']:11.4f} {scores['foreground']['hd95']:8.2f}"
              + "".join(f" {scores[name]['dice']:18.4f}" for name in classes))
    print(f"\nQC pictures: {os.path.join(os.environ['nnUNet_raw'], TARGET, 'qc')}")
    print(f"HR segmentations: {predictions['ensemble']} (ensemble), {predictions['rehrseg']} (REHRSeg)")
    print(f"total time {time.time() - started:.0f} s")
    for key in ("ensemble", "rehrseg", "sr_nnunet"):
        if not summary[key]["foreground"]["dice"] > 0:
            sys.exit(f"the {key} prediction is empty")

if __name__ == "__main__":
    main()
