"""Self-SR quality on real MRI: BRATS T1c as HR truth, thick slices simulated at r = 4 along z.

The SR model sees only the simulated LR volumes and LR labels. Scores (inside the brain mask):
PSNR/SSIM against the 1 mm truth for cubic B-spline interpolation and each SR stage; Dice of the
pseudo-HR labels against the 1 mm labels next to nearest and linear label interpolation; SR
inference time and peak RSS. The uncertainty (stage 1c), per case and mean: the spread of the raw
sigma (p99 - p1 over the volume, and inside the brain), the mean written uncertainty outside and
inside the brain mask, its Spearman correlation with |pseudo-HR - HR| inside the mask, its AUROC for
the pseudo-HR label errors (voxels whose pseudo-HR label differs from the 1 mm label, inside the
mask) and for the top 10 % image errors, and its mean by position within each group of r HR slices.

    python benchmarks/sr_quality.py --data ../shared/data/brats2013_subset --device cpu

Writes benchmarks/results/sr_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk
from scipy.stats import spearmanr

from rehrseg_nnunet.degradation import simulate_thick_slices
from rehrseg_nnunet.geometry import Grid
from rehrseg_nnunet.image_quality import auroc, label_dice, linear_label_interpolation, psnr, resample_like, ssim
from rehrseg_nnunet.sr.infer import SuperResolver

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing": 3, "enhancing": 4}
SCALE_FACTOR = 4
SLICE_AXIS = 2  # z


def make_lr_dataset(data: str, raw_root: str, dataset_id: int = 901) -> tuple[str, list[str]]:
    """Simulate 4 mm slices from each BRATS case and write an nnU-Net raw dataset of LR T1c + LR labels."""
    cases = sorted(d for d in os.listdir(data) if d.startswith("pat"))
    name = f"Dataset{dataset_id}_BratsLR4x"
    folder = os.path.join(raw_root, name)
    os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(folder, "labelsTr"), exist_ok=True)
    for case in cases:
        image = sitk.ReadImage(os.path.join(data, case, "t1c.nii.gz"), sitk.sitkFloat32)
        label = sitk.Cast(sitk.ReadImage(os.path.join(data, case, "labels.nii.gz")), sitk.sitkUInt8)
        lr_image, lr_label = simulate_thick_slices(image, SLICE_AXIS, SCALE_FACTOR, label=label)
        sitk.WriteImage(lr_image, os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
        sitk.WriteImage(lr_label, os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as handle:
        json.dump({"channel_names": {"0": "T1c"}, "labels": LABELS, "numTraining": len(cases),
                   "file_ending": ".nii.gz"}, handle, indent=2)
    return name, cases


def uncertainty_scores(result, estimate: np.ndarray, truth: np.ndarray, truth_labels: np.ndarray, mask: np.ndarray,
                       n: int) -> dict:
    """How much the uncertainty map says: spread of sigma, background level, rank agreement with errors."""
    uncertainty = sitk.GetArrayFromImage(result.uncertainty)[:n]
    sigma = sitk.GetArrayFromImage(result.raw_uncertainty)[:n]
    error = np.abs(estimate - truth)
    label_error = sitk.GetArrayFromImage(result.label)[:n] != truth_labels
    p1, p99 = np.percentile(sigma, (1, 99))
    b1, b99 = np.percentile(sigma[mask], (1, 99))
    edge = (error[mask] > np.percentile(error[mask], 90))
    return {
        "uncertainty_raw_spread": float(p99 - p1), "uncertainty_raw_spread_brain": float(b99 - b1),
        "uncertainty_background_mean": float(uncertainty[~mask].mean()),
        "uncertainty_brain_mean": float(uncertainty[mask].mean()),
        "uncertainty_spearman": float(spearmanr(uncertainty[mask], error[mask]).statistic),
        "uncertainty_label_error_auroc": auroc(uncertainty[mask], label_error[mask]),
        "uncertainty_top_error_auroc": auroc(uncertainty[mask], edge),
        "label_error_voxels": int(label_error[mask].sum()),
        "uncertainty_by_slice_phase": [float(uncertainty[phase::SCALE_FACTOR][mask[phase::SCALE_FACTOR]].mean())
                                       for phase in range(SCALE_FACTOR)],
    }


def evaluate(data: str, raw_folder: str, cases: list[str], model: str, device: str) -> dict:
    per_case = []
    resolvers = {stage: SuperResolver(model, device, stage) for stage in ("1a", "1b", "1c")}
    sr_seconds = []
    for case in cases:
        truth_image = sitk.ReadImage(os.path.join(data, case, "t1c.nii.gz"), sitk.sitkFloat32)
        truth = sitk.GetArrayFromImage(truth_image)
        truth_labels = sitk.GetArrayFromImage(
            sitk.ReadImage(os.path.join(data, case, "labels.nii.gz"))).astype(np.uint8)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(data, case, "brainmask.nii.gz"))) > 0
        n = truth.shape[0]
        lr_image = sitk.ReadImage(os.path.join(raw_folder, "imagesTr", f"{case}_0000.nii.gz"))
        lr_label = sitk.ReadImage(os.path.join(raw_folder, "labelsTr", f"{case}.nii.gz"))
        hr_reference = Grid.from_image(lr_image).refine(SLICE_AXIS, SCALE_FACTOR).image_from_array(
            np.zeros(tuple(reversed(Grid.from_image(lr_image).refine(SLICE_AXIS, SCALE_FACTOR).size)), np.float32))
        assert np.allclose(hr_reference.GetOrigin(), truth_image.GetOrigin(), atol=1e-4), "HR grid misaligned"
        cubic = resample_like(lr_image, hr_reference, sitk.sitkBSpline)[:n]
        scores = {"case": case, "lr_shape": list(reversed(lr_image.GetSize())),
                  "psnr_cubic_db": psnr(truth, cubic, mask), "ssim_cubic": ssim(truth, cubic, mask),
                  "label_dice_nearest": label_dice(
                      truth_labels, resample_like(lr_label, hr_reference, sitk.sitkNearestNeighbor)[:n], LABELS),
                  "label_dice_linear": label_dice(
                      truth_labels, linear_label_interpolation(lr_label, hr_reference, list(LABELS.values()))[:n],
                      LABELS)}
        for stage, resolver in resolvers.items():
            started = time.perf_counter()
            result = resolver([lr_image], lr_label)
            seconds = time.perf_counter() - started
            estimate = sitk.GetArrayFromImage(result.images[0])[:n]
            scores[f"psnr_{stage}_db"] = psnr(truth, estimate, mask)
            scores[f"ssim_{stage}"] = ssim(truth, estimate, mask)
            scores[f"label_dice_{stage}"] = label_dice(truth_labels, sitk.GetArrayFromImage(result.label)[:n], LABELS)
            if stage == "1c":
                sr_seconds.append(seconds)
                scores.update(uncertainty_scores(result, estimate, truth, truth_labels, mask, n))
        print(json.dumps(scores), flush=True)
        per_case.append(scores)

    def mean(key: str, sub: str | None = None) -> float:
        values = [c[key][sub] if sub else c[key] for c in per_case]
        return float(np.mean(values))

    return {
        "psnr_cubic_db": mean("psnr_cubic_db"), "psnr_sr_db": mean("psnr_1c_db"),
        "psnr_1a_db": mean("psnr_1a_db"), "psnr_1b_db": mean("psnr_1b_db"), "psnr_1c_db": mean("psnr_1c_db"),
        "ssim_cubic": mean("ssim_cubic"), "ssim_sr": mean("ssim_1c"),
        "ssim_1a": mean("ssim_1a"), "ssim_1b": mean("ssim_1b"),
        "label_dice_nearest": mean("label_dice_nearest", "foreground"),
        "label_dice_linear": mean("label_dice_linear", "foreground"),
        "label_dice_sr": mean("label_dice_1c", "foreground"),
        "label_dice_1a": mean("label_dice_1a", "foreground"), "label_dice_1b": mean("label_dice_1b", "foreground"),
        **{key: mean(key) for key in ("uncertainty_spearman", "uncertainty_raw_spread", "uncertainty_raw_spread_brain",
                                      "uncertainty_background_mean", "uncertainty_brain_mean",
                                      "uncertainty_label_error_auroc", "uncertainty_top_error_auroc")},
        "sr_inference_seconds_per_volume": float(np.mean(sr_seconds)),
        "per_case": per_case,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "brats2013_subset"))
    parser.add_argument("--work", default=os.path.join(HERE, "work", "sr_quality"))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, nargs="+", default=None)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "sr_quality.json"))
    parser.add_argument("--skip-training", action="store_true", help="reuse the model in --work")
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        sys.exit(f"{args.data} does not exist; "
                 f"pass --data with the BRATS subset folder (../shared/data/brats2013_subset).")
    raw_root = os.path.join(args.work, "nnUNet_raw")
    name, cases = make_lr_dataset(args.data, raw_root)
    model = os.path.join(args.work, "sr_model")
    env = dict(os.environ, nnUNet_raw=raw_root)
    train_seconds = None
    if not args.skip_training:
        script = os.path.join(os.path.dirname(sys.executable), "rehrseg_train_sr")  # works without an activated venv
        command = [script if os.path.isfile(script) else "rehrseg_train_sr", "-d", name, "-o", model,
                   "-device", args.device, "--preset", args.preset]
        if args.steps:
            command += ["--steps", *map(str, args.steps)]
        if os.path.isdir(model):
            command.append("--continue")
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True)
        train_seconds = time.perf_counter() - started
    results = evaluate(args.data, os.path.join(raw_root, name), cases, model, args.device)
    results.update({
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
        "train_seconds": train_seconds, "preset": args.preset, "device": args.device,
        "cases": cases, "lr_shape_zyx": results["per_case"][0]["lr_shape"],
        "command": "python benchmarks/sr_quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    })
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k != "per_case"}, indent=2))


if __name__ == "__main__":
    main()
