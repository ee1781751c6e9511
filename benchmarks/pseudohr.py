"""rehrseg_make_pseudohr on the BRATS subset at r = 4 (LR simulated from ../shared/data).

Reuses the LR dataset and SR model of benchmarks/sr_quality.py (run that first, or pass
--train to train the SR model here). Measures seconds per case against SR inference alone, peak
RSS (absolute and above the process's state after imports and model loading), LR consistency
(pseudo-HR labels brought back to the LR grid with the trainer's rule vs the source LR labels,
Dice per class present) and whether nnUNetv2_plan_and_preprocess --verify_dataset_integrity
accepts the output.

    python benchmarks/pseudohr.py --data ../shared/data/brats2013_subset --device cpu

Writes benchmarks/results/pseudohr.json.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from sr_quality import SCALE_FACTOR, SLICE_AXIS, make_lr_dataset  # noqa: E402

from rehrseg_nnunet.degradation import labels_to_lr  # noqa: E402
from rehrseg_nnunet.evaluation import dice  # noqa: E402
from rehrseg_nnunet.geometry import numpy_axis  # noqa: E402
from rehrseg_nnunet.pseudohr import make_pseudohr  # noqa: E402
from rehrseg_nnunet.sr.infer import SuperResolver  # noqa: E402

TARGET_ID = 902


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "brats2013_subset"))
    parser.add_argument("--work", default=os.path.join(HERE, "work", "sr_quality"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train", action="store_true", help="train the SR model if --work has none")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "pseudohr.json"))
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        sys.exit(f"{args.data} does not exist; "
                 f"pass --data with the BRATS subset folder (../shared/data/brats2013_subset).")
    raw_root = os.path.join(args.work, "nnUNet_raw")
    os.environ["nnUNet_raw"] = raw_root
    os.environ["nnUNet_preprocessed"] = os.path.join(args.work, "nnUNet_preprocessed")
    os.environ["nnUNet_results"] = os.path.join(args.work, "nnUNet_results")
    name, cases = make_lr_dataset(args.data, raw_root)
    model = os.path.join(args.work, "sr_model")
    if not os.path.isfile(os.path.join(model, "stage_1c", "checkpoint_final.pth")):
        if not args.train:
            sys.exit(f"{model} holds no trained SR model; run benchmarks/sr_quality.py first or pass --train.")
        subprocess.run(["rehrseg_train_sr", "-d", name, "-o", model, "-device", args.device], check=True)

    # baseline: everything imported and an SR model loaded (make_pseudohr loads its own copy)
    SuperResolver(model, args.device)
    baseline = peak_rss_gb()
    started = time.perf_counter()
    summary = make_pseudohr(name, TARGET_ID, model, args.device, overwrite=True)
    seconds_per_case = (time.perf_counter() - started) / len(cases)
    peak = peak_rss_gb()

    resolver = SuperResolver(model, args.device)
    source = os.path.join(raw_root, name)
    sr_seconds, consistency = [], {}
    for case in cases:
        lr_image = sitk.ReadImage(os.path.join(source, "imagesTr", f"{case}_0000.nii.gz"))
        lr_label = sitk.ReadImage(os.path.join(source, "labelsTr", f"{case}.nii.gz"))
        t0 = time.perf_counter()
        resolver([lr_image], lr_label)
        sr_seconds.append(time.perf_counter() - t0)
        pseudo = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(summary["folder"], "labelsTr", f"{case}.nii.gz")))
        back = labels_to_lr(pseudo, numpy_axis(SLICE_AXIS), SCALE_FACTOR)
        lr = sitk.GetArrayFromImage(lr_label)
        consistency[case] = {int(v): dice(lr == v, back == v) for v in np.unique(lr) if v}
        print(case, f"SR only {sr_seconds[-1]:.1f} s", "LR consistency", consistency[case], flush=True)

    check = subprocess.run([os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess"),
                            "-d", str(TARGET_ID), "--verify_dataset_integrity",
                            "--no_pp", "-np", "1", "-npfp", "1"], capture_output=True, text=True)
    first_label = sitk.ReadImage(os.path.join(summary["folder"], "labelsTr", f"{cases[0]}.nii.gz"))
    hr_volume_gb = float(np.prod(first_label.GetSize())) * 4 / 1024 ** 3
    model_gb = sum(os.path.getsize(os.path.join(model, s, "checkpoint_final.pth"))
                   for s in ("stage_1a", "stage_1c")) / 1024 ** 3
    results = {
        "cases": len(cases),
        "lr_consistency_dice_min": float(min(min(d.values()) for d in consistency.values())),
        "lr_consistency_dice": consistency,
        "seconds_per_case": seconds_per_case,
        "sr_only_seconds_per_case": float(np.mean(sr_seconds)),
        "peak_rss_gb": peak,
        "peak_rss_above_baseline_gb": peak - baseline,
        "hr_volume_float32_gb": hr_volume_gb,
        "model_gb": model_gb,
        "verify_dataset_integrity": check.returncode == 0,
        "verify_output_tail": (check.stdout + check.stderr)[-600:],
        "device": args.device,
        "command": "python benchmarks/pseudohr.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k not in ("lr_consistency_dice", "verify_output_tail")},
                     indent=2))


if __name__ == "__main__":
    main()
