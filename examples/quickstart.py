"""Quick start: HR segmentation from thick-slice MRI with thick-slice labels only, end to end.

The embedded example (MNI ICBM152 2009a T1 and its grey/white-matter maps, shipped in nilearn's wheel;
nothing is downloaded) stands in for your data. Every step below is a console command you would run on
your own nnU-Net raw dataset; replace step 1 by your dataset and drop the scoring against the 1 mm truth
(your data have none).

1. write ``Dataset990_MNIThick``: two 4 mm thick-slice acquisitions (slice phases 0 and 2 mm) with
   thick-slice tissue labels; a third acquisition (phase 1 mm) is kept aside as a test input;
2. ``rehrseg_train_sr -d 990``                    self-supervised SR from the thick slices alone;
3. ``rehrseg_make_pseudohr -d 990 -o 991``         pseudo-HR images, labels, uncertainty maps, QC PNGs;
4. ``nnUNetv2_plan_and_preprocess -d 991``, ``rehrseg_plan -d 991``;
5. ``nnUNetv2_train 991 3d_fullres all -tr REHRSegTrainer_cpu -p REHRSegPlans`` (short CPU schedule);
6. ``rehrseg_predict`` on the held-out thick-slice input  -> 1 mm segmentation;
7. ``rehrseg_evaluate`` against the 1 mm tissue labels the pipeline never saw, next to the test
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
from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

SOURCE_ID, TARGET_ID = 990, 991
SCALE_FACTOR = 4
TRAINER = "REHRSegTrainer_cpu"


def step(index: int, total: int, text: str) -> None:
    print(f"\n[{index}/{total}] {text}", flush=True)


def run(*command: str, env: dict[str, str] | None = None) -> None:
    """Run one console command of the pipeline (echoed as a user would type it), with extra ``env`` variables."""
    print("      $ " + " ".join(f"{k}={v}" for k, v in (env or {}).items()) + (" " if env else "") + " ".join(command),
          flush=True)
    subprocess.run([shutil.which(command[0]) or command[0], *command[1:]], check=True, env={**os.environ, **(env or {})})


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="demo_output", help="folder for nnUNet_raw/_preprocessed/_results and outputs")
    parser.add_argument("-device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--sr-steps", type=int, nargs=3, default=[600, 150, 600], help="SR training steps of 1a 1b 1c")
    parser.add_argument("-tr", dest="trainer", default=TRAINER, help=f"REHRSeg trainer (default {TRAINER})")
    args = parser.parse_args()
    work = os.path.abspath(args.work)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[variable] = os.path.join(work, variable)
    os.environ.setdefault("nnUNet_def_n_proc", "1")      # 2 CPU cores: one worker per nnU-Net stage
    os.environ.setdefault("nnUNet_compile", "0")         # torch.compile costs more than it saves on CPU
    os.environ["nnUNet_extTrainer"] = EXT_TRAINER_FOLDER  # lets nnUNetv2_train find REHRSegTrainer
    started = time.time()
    total = 7
    test_folder, reference = os.path.join(work, "test"), os.path.join(work, "reference_1mm")
    predictions = os.path.join(work, "predictions_hr")

    step(1, total, "thick-slice example dataset (MNI ICBM152 2009a T1, 4 mm slices along z) and a test acquisition")
    write_example_dataset(os.environ["nnUNet_raw"], SOURCE_ID, num_cases=2, scale_factor=SCALE_FACTOR)
    write_test_acquisition(test_folder, reference)

    step(2, total, "self-supervised SR, learnt from the thick slices alone")
    model = os.path.join(os.environ["nnUNet_results"], "Dataset990_MNIThick", "rehrseg_sr")
    resume = ["--continue"] if os.path.isfile(os.path.join(model, "config.json")) else []
    if not os.path.isfile(os.path.join(model, "stage_1c", "checkpoint_final.pth")):
        run("rehrseg_train_sr", "-d", str(SOURCE_ID), "-device", args.device, "--steps", *map(str, args.sr_steps), *resume)

    step(3, total, "pseudo-HR dataset: images, labels, uncertainty maps, QC pictures")
    run("rehrseg_make_pseudohr", "-d", str(SOURCE_ID), "-o", str(TARGET_ID), "-device", args.device)

    step(4, total, "nnU-Net planning and preprocessing, then REHRSeg plans (small U-Net and patch for a CPU)")
    run("nnUNetv2_plan_and_preprocess", "-d", str(TARGET_ID), "-c", "3d_fullres", "-np", "1", "-npfp", "1",
        "--verify_dataset_integrity")
    run("rehrseg_plan", "-d", str(TARGET_ID), "--patch_size", "32", "64", "64", "--base_features", "16",
        "--max_features", "128", "--batch_size", "2", "-np", "1")

    step(5, total, f"training the REHRSeg nnU-Net ({args.trainer}; the default is a short schedule for 2 CPU cores)")
    trainer = args.trainer
    results = os.path.join(os.environ["nnUNet_results"], "Dataset991_MNIThickPseudoHR",
                           f"{trainer}__REHRSegPlans__3d_fullres", "fold_all", "checkpoint_final.pth")
    if not os.path.isfile(results):
        # augmentation in the training process (2 cores)
        run("nnUNetv2_train", str(TARGET_ID), "3d_fullres", "all", "-tr", trainer, "-p", "REHRSegPlans",
            "-device", args.device, env={"nnUNet_n_proc_DA": "0"})

    step(6, total, "HR segmentation of the held-out thick-slice input")
    run("rehrseg_predict", "-i", os.path.join(test_folder, "images"), "-o", predictions, "-d", str(TARGET_ID),
        "-tr", trainer, "-f", "all", "-device", args.device, "-npp", "1", "-nps", "1")

    step(7, total, "scores against the 1 mm tissue labels (never seen by any step)")
    dataset_json = os.path.join(os.environ["nnUNet_raw"], "Dataset991_MNIThickPseudoHR", "dataset.json")
    for name, folder in (("REHRSeg (rehrseg_predict)", predictions),
                         ("thick-slice labels, nearest-upsampled", os.path.join(test_folder, "lr_labels_upsampled"))):
        print(f"\n--- {name}")
        run("rehrseg_evaluate", "-ref", reference, "-pred", folder, "-djfile", dataset_json, "--resample-to-reference")

    summary = {}
    for name, folder in (("rehrseg", predictions), ("lr_labels_upsampled", os.path.join(test_folder, "lr_labels_upsampled"))):
        with open(os.path.join(folder, "summary_rehrseg.json")) as handle:
            summary[name] = json.load(handle)["mean"]
    print("\nWhole-brain tissue (grey + white matter), held-out acquisition, 1 mm grid:")
    print(f"{'':40s} {'Dice':>7s} {'HD95 mm':>8s}")
    for name, text in (("rehrseg", "REHRSeg HR prediction"), ("lr_labels_upsampled", "thick-slice labels upsampled")):
        foreground = summary[name]["foreground"]
        print(f"{text:40s} {foreground['dice']:7.4f} {foreground['hd95']:8.2f}")
    print(f"\nQC pictures: {os.path.join(os.environ['nnUNet_raw'], 'Dataset991_MNIThickPseudoHR', 'qc')}")
    print(f"HR segmentation: {predictions}")
    print(f"total time {time.time() - started:.0f} s")
    if not summary["rehrseg"]["foreground"]["dice"] > 0:
        sys.exit("the REHRSeg prediction is empty")


if __name__ == "__main__":
    main()
