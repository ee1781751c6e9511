"""Quick start: self-supervised SR of thick-slice MRI on the embedded MNI example (no data to download).

What it does, as you would do it on your own nnU-Net raw dataset:
1. writes an nnU-Net raw dataset of 4 mm thick-slice T1 cases with tissue labels
   (``rehrseg_nnunet.example_data``; replace this step by your own dataset);
2. ``rehrseg_train_sr -d 990`` — trains the self-SR model from the thick slices alone;
3. applies it (the SR inference API) and scores it against the 1 mm template that the model
   never saw: PSNR/SSIM vs cubic interpolation, label Dice vs linear label interpolation;
4. writes pseudo-HR images, labels, uncertainty maps and a QC picture per case.

    python examples/sr_quickstart.py [--work demo_output] [--steps 1500 500 400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.example_data import LABELS, write_example_dataset
from rehrseg_nnunet.image_quality import label_dice, linear_label_interpolation, psnr, resample_like, ssim
from rehrseg_nnunet.qc import Panel, save_qc_png
from rehrseg_nnunet.sr.infer import SuperResolver

DATASET_ID = 990


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="demo_output", help="folder for nnUNet_raw, nnUNet_results and outputs")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="SR training steps of stages 1a 1b 1c")
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args()

    work = os.path.abspath(args.work)
    os.environ.setdefault("nnUNet_raw", os.path.join(work, "nnUNet_raw"))
    os.environ.setdefault("nnUNet_results", os.path.join(work, "nnUNet_results"))
    started = time.time()

    print("[1/4] writing the thick-slice example dataset (MNI ICBM152 2009a, 4 mm slices along z)")
    folder, cases = write_example_dataset(os.environ["nnUNet_raw"], DATASET_ID)
    dataset_name = os.path.basename(folder)

    print("[2/4] rehrseg_train_sr: self-supervised SR from the thick slices alone")
    model = os.path.join(os.environ["nnUNet_results"], dataset_name, "rehrseg_sr")
    command = [shutil.which("rehrseg_train_sr") or "rehrseg_train_sr", "-d", str(DATASET_ID), "-device", args.device]
    if args.steps:
        command += ["--steps", *map(str, args.steps)]
    if os.path.isfile(os.path.join(model, "config.json")):
        command.append("--continue")
    print("      " + " ".join(["rehrseg_train_sr"] + command[1:]))
    subprocess.run(command, check=True)

    print("[3/4] super-resolving each case and scoring it against the 1 mm template")
    resolver = SuperResolver(model, args.device)
    out_folder = os.path.join(work, "pseudohr")
    os.makedirs(out_folder, exist_ok=True)
    rows = []
    for case in cases:
        lr_image = sitk.ReadImage(os.path.join(folder, "imagesTr", f"{case.identifier}_0000.nii.gz"))
        lr_label = sitk.ReadImage(os.path.join(folder, "labelsTr", f"{case.identifier}.nii.gz"))
        t0 = time.perf_counter()
        result = resolver([lr_image], lr_label, source=case.identifier)
        seconds = time.perf_counter() - t0
        sitk.WriteImage(result.images[0], os.path.join(out_folder, f"{case.identifier}_0000.nii.gz"))
        sitk.WriteImage(result.label, os.path.join(out_folder, f"{case.identifier}_label.nii.gz"))
        sitk.WriteImage(result.uncertainty, os.path.join(out_folder, f"{case.identifier}_uncertainty.nii.gz"))

        n = case.hr_image.GetSize()[2]  # the HR grid of the padded LR volume starts at the truth's origin
        truth = sitk.GetArrayFromImage(case.hr_image)
        truth_labels = sitk.GetArrayFromImage(case.hr_label)
        mask = truth > 0.05
        cubic = resample_like(lr_image, result.images[0], sitk.sitkBSpline)[:n]
        sr = sitk.GetArrayFromImage(result.images[0])[:n]
        linear = linear_label_interpolation(lr_label, result.label, list(LABELS.values()))[:n]
        rows.append({
            "case": case.identifier, "seconds": seconds,
            "psnr_cubic": psnr(truth, cubic, mask), "psnr_sr": psnr(truth, sr, mask),
            "ssim_cubic": ssim(truth, cubic, mask), "ssim_sr": ssim(truth, sr, mask),
            "dice_linear": label_dice(truth_labels, linear, LABELS)["foreground"],
            "dice_sr": label_dice(truth_labels, sitk.GetArrayFromImage(result.label)[:n], LABELS)["foreground"],
        })
        cubic_image = sitk.GetImageFromArray(resample_like(lr_image, result.images[0], sitk.sitkBSpline))
        cubic_image.CopyInformation(result.images[0])
        save_qc_png(os.path.join(out_folder, f"{case.identifier}_qc.png"), [
            Panel("LR (4 mm)", lr_image, lr_label), Panel("cubic", cubic_image),
            Panel("pseudo-HR", result.images[0], result.label),
            Panel("uncertainty", result.uncertainty, cmap="magma", value_range=(0.0, 1.0), colorbar=True),
            Panel("1 mm truth", sitk.Resample(case.hr_image, result.images[0]),
                  sitk.Resample(case.hr_label, result.images[0], sitk.Transform(), sitk.sitkNearestNeighbor)),
        ], slice_axis=2)

    print("[4/4] results (inside the head; Dice = grey + white matter vs the 1 mm tissue labels)\n")
    header = f"{'case':8s} {'PSNR cubic':>10s} {'PSNR SR':>8s} {'SSIM cubic':>10s} {'SSIM SR':>8s} " \
             f"{'Dice linear':>11s} {'Dice SR':>8s} {'SR s':>6s}"
    print(header)
    for row in rows:
        print(f"{row['case']:8s} {row['psnr_cubic']:10.2f} {row['psnr_sr']:8.2f} {row['ssim_cubic']:10.4f} "
              f"{row['ssim_sr']:8.4f} {row['dice_linear']:11.4f} {row['dice_sr']:8.4f} {row['seconds']:6.1f}")
    print(f"\npseudo-HR images, labels, uncertainty maps and QC PNGs: {out_folder}")
    print(f"total time {time.time() - started:.0f} s")
    if any(not np.isfinite(row["psnr_sr"]) for row in rows):
        sys.exit("SR produced non-finite output")


if __name__ == "__main__":
    main()
