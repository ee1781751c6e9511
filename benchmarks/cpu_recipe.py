"""The CPU recipe of docs/recipe.md, end to end on two genuinely thick-slice brain MRI (2 CPU cores, <= 30 min).

Data: ../shared/data/thick_slice_real (pyradiomics test data: 256x256x23-25, 0.78 x 0.78 x 6.5 mm, int16,
binary tumour label). Every step is the console command a user runs; each is timed:

1. ``DatasetXXX_BrainThick`` (.nrrd as given) in nnUNet_raw;
2. ``rehrseg_train_sr -d XXX --steps 600 150 600`` (r = 8 from the spacing);
3. ``rehrseg_make_pseudohr``; 4. ``nnUNetv2_plan_and_preprocess``, ``rehrseg_plan`` with a small U-Net;
5. ``nnUNetv2_train … all -tr REHRSegTrainer_cpu50epochs`` (50 x 20 iterations) with ``nnUNet_n_proc_DA=0``;
6. ``rehrseg_predict`` on the thick-slice images (HR grid).

There is no HR truth: the check is that the HR segmentation, taken back to the thick-slice grid (the
label of each thick slice's middle HR slice, by nearest-neighbour resampling), agrees with the
thick-slice label (Dice). These are the training cases: the figure shows the recipe runs and fits,
not how it generalises.

    python benchmarks/cpu_recipe.py --data ../shared/data/thick_slice_real --repeats 2

``--repeats N`` runs the whole recipe N times from scratch (``--work``/run<i>) and reports each step's time in
every run and its spread (min, median, max). Writes benchmarks/results/cpu_recipe.json. Re-running resumes: a
finished run is read back, and in an unfinished one the finished steps are skipped (their times are then
missing from that run, which says so in ``all_steps_ran_in_this_run``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.file_writing import write_json_atomically
from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ID, TARGET_ID = 921, 922
SR_STEPS = ["600", "150", "600"]
# 50 x 20 iterations: 8 x 20 (REHRSegTrainer_cpu until 2026-12-07; 8 x 15 since) learnt no tumour
TRAINER = "REHRSegTrainer_cpu50epochs"


def script(name: str) -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.isfile(candidate) else name


def timed(times: dict, key: str, command: list[str], env: dict | None = None) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
    started = time.perf_counter()
    subprocess.run([script(command[0]), *command[1:]], check=True, env={**os.environ, **(env or {})})
    times[key] = round(time.perf_counter() - started, 1)


def write_raw_dataset(data: str, raw_root: str) -> tuple[str, list[str]]:
    cases = sorted(f[:-len("_image.nrrd")] for f in os.listdir(data) if f.endswith("_image.nrrd"))
    folder = os.path.join(raw_root, f"Dataset{SOURCE_ID}_BrainThick")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for case in cases:
        shutil.copy(os.path.join(data, f"{case}_image.nrrd"), os.path.join(folder, "imagesTr", f"{case}_0000.nrrd"))
        label = sitk.ReadImage(os.path.join(data, f"{case}_label.nrrd"))
        sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), os.path.join(folder, "labelsTr", f"{case}.nrrd"))
    with open(os.path.join(folder, "dataset.json"), "w") as handle:
        json.dump({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "tumour": 1},
                   "numTraining": len(cases), "file_ending": ".nrrd"}, handle, indent=2)
    return folder, cases


def agreement_with_thick_slice_labels(raw_folder: str, predictions: str, cases: list[str]) -> dict:
    """Dice of the HR segmentation taken back to each thick-slice grid against that grid's label."""
    scores = {}
    for case in cases:
        label = sitk.ReadImage(os.path.join(raw_folder, "labelsTr", f"{case}.nrrd"))
        hr = sitk.ReadImage(os.path.join(predictions, f"{case}.nrrd"))
        back = sitk.GetArrayFromImage(sitk.Resample(hr, label, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
        truth = sitk.GetArrayFromImage(label) > 0
        scores[case] = {"dice": float(2 * (back & truth).sum() / max(back.sum() + truth.sum(), 1)),
                        "hr_size_xyz": list(hr.GetSize()), "hr_spacing_xyz": [round(s, 4) for s in hr.GetSpacing()],
                        "label_voxels": int(truth.sum())}
    return scores


STEPS = ("train_sr", "make_pseudohr", "plan_and_preprocess", "rehrseg_plan", "train", "predict")


def run_recipe(data: str, work: str) -> dict:
    """The recipe once, in ``work``; returns its step times and agreement scores."""
    env = {name: os.path.join(work, name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    env.update(nnUNet_def_n_proc="1", nnUNet_compile="0", nnUNet_extTrainer=EXT_TRAINER_FOLDER)
    os.environ.update(env)
    times: dict[str, float] = {}
    started = time.perf_counter()
    raw_folder, cases = write_raw_dataset(data, env["nnUNet_raw"])
    model = os.path.join(env["nnUNet_results"], f"Dataset{SOURCE_ID}_BrainThick", "rehrseg_sr")
    if not os.path.isfile(os.path.join(model, "stage_1c", "checkpoint_final.pth")):
        resume = ["--continue"] if os.path.isfile(os.path.join(model, "config.json")) else []
        timed(times, "train_sr", ["rehrseg_train_sr", "-d", str(SOURCE_ID), "-device", "cpu", "--steps", *SR_STEPS,
                                  *resume])
    timed(times, "make_pseudohr", ["rehrseg_make_pseudohr", "-d", str(SOURCE_ID), "-o", str(TARGET_ID),
                                   "-device", "cpu"])
    timed(times, "plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(TARGET_ID), "-c", "3d_fullres",
                                         "-np", "1", "-npfp", "1"])
    timed(times, "rehrseg_plan", ["rehrseg_plan", "-d", str(TARGET_ID), "--patch_size", "32", "64", "64",
                                  "--base_features", "16", "--max_features", "128", "--batch_size", "2", "-np", "1"])
    checkpoint = os.path.join(env["nnUNet_results"], f"Dataset{TARGET_ID}_BrainThickPseudoHR",
                              f"{TRAINER}__REHRSegPlans__3d_fullres", "fold_all", "checkpoint_final.pth")
    if not os.path.isfile(checkpoint):
        resume = ["--c"] if os.path.isdir(os.path.dirname(checkpoint)) else []
        timed(times, "train", ["nnUNetv2_train", str(TARGET_ID), "3d_fullres", "all", "-tr", TRAINER, "-p",
                               "REHRSegPlans", "-device", "cpu", *resume], {"nnUNet_n_proc_DA": "0"})
    predictions = os.path.join(work, "predictions_hr")
    timed(times, "predict", ["rehrseg_predict", "-i", os.path.join(raw_folder, "imagesTr"), "-o", predictions,
                             "-d", str(TARGET_ID), "-tr", TRAINER, "-f", "all", "-device", "cpu", "-npp", "1",
                             "-nps", "1"])
    scores = agreement_with_thick_slice_labels(raw_folder, predictions, cases)
    return {"seconds_total_this_run": round(time.perf_counter() - started, 1), "seconds_by_step": times,
            "all_steps_ran_in_this_run": set(times) == set(STEPS), "cases": cases,
            "dice_hr_back_on_thick_slice_grid": scores,
            "mean_dice": float(np.mean([s["dice"] for s in scores.values()]))}


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": float(np.median(values)), "max": max(values), "runs": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "thick_slice_real"))
    parser.add_argument("--work", default=os.path.join(HERE, "work", "cpu_recipe"))
    parser.add_argument("--repeats", type=int, default=1, help="run the recipe this many times, each from scratch")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "cpu_recipe.json"))
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        sys.exit(f"{args.data} does not exist; "
                 f"pass --data with the thick_slice_real folder (../shared/data/thick_slice_real).")
    runs = []
    for index in range(args.repeats):
        work = os.path.join(os.path.abspath(args.work), f"run{index}")
        record = os.path.join(work, "recipe_result.json")
        if os.path.isfile(record):
            with open(record) as handle:
                runs.append(json.load(handle))
            continue
        print(f"--- recipe run {index + 1} of {args.repeats} in {work}", flush=True)
        runs.append(run_recipe(os.path.abspath(args.data), work))
        write_json_atomically(record, runs[-1])
    complete = [run for run in runs if run["all_steps_ran_in_this_run"]]
    results = {
        "command": "python benchmarks/cpu_recipe.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "sr_steps": SR_STEPS, "trainer": TRAINER, "cpu_cores": os.cpu_count(),
        "seconds_by_step_spread": {step: spread([run["seconds_by_step"][step] for run in complete])
                                   for step in STEPS} if complete else None,
        "seconds_total_spread": spread([run["seconds_total_this_run"] for run in complete]) if complete else None,
        "mean_dice_spread": spread([run["mean_dice"] for run in runs]),
        "runs": runs,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    write_json_atomically(args.output, results)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
