"""rehrseg_predict — HR segmentations of thick-slice inputs with a REHRSeg model (nnUNetv2_predict's flags).

The parser is REHRSeg's own (its defaults, its help, no option that cannot apply); the work is nnU-Net's
own entry point (``nnUNetv2_predict``, or ``nnUNetv2_predict_from_modelfolder`` with ``-m``) with the
REHRSeg predictor and HR export swapped in.
"""

from __future__ import annotations

import argparse
import os
import sys

from rehrseg_nnunet.cli.common import add_thick_slice_folders, new_parser, run_cli
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.sr.config import select_device

DESCRIPTION = """\
HR segmentation of thick-slice images with a model trained by nnUNetv2_train -tr REHRSegTrainer -p REHRSegPlans.
Each input of n slices of thickness s is written as n*r slices of spacing s/r along its slice axis (r from the
model's plans), the HR slices tiling each thick slice (origin moved by -(r-1)/(2r) of a thick slice along the slice
direction); in-plane grid, direction and file names as nnUNetv2_predict. Give the model as -d/-tr/-p/-c (as
nnUNetv2_predict) or as -m MODEL_FOLDER (as nnUNetv2_predict_from_modelfolder). Sliding windows start at
thick-slice boundaries: along the slice axis each window start is rounded to a multiple of r HR slices, so the
step there can differ from -step_size by up to r/2 slices. No test-time mirroring (REHRSeg trains without it).
An SR-guided model (REHRSegTrainer and its guided variants; not REHRSegTrainer_paper) first super-resolves each
input with the SR model it carries (one case at a time), then predicts from the super-resolved image.
For the input-grid (LR) segmentation use stock nnUNetv2_predict with the same model."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("rehrseg_predict", DESCRIPTION, raw=True)
    add_thick_slice_folders(parser, "output folder for the HR segmentations (created if missing)")
    model = parser.add_argument_group("model (either -d with -tr/-p/-c, or -m)")
    model.add_argument("-d", default=None, help="dataset id or name the model was trained on (the pseudo-HR dataset)")
    model.add_argument("-tr", default="REHRSegTrainer", help="trainer class (default REHRSegTrainer)")
    model.add_argument("-p", default="REHRSegPlans", help="plans identifier (default REHRSegPlans)")
    model.add_argument("-c", default="3d_fullres",
                       help="configuration (default 3d_fullres, the only one REHRSeg plans)")
    model.add_argument("-m", default=None, metavar="MODEL_FOLDER",
                       help="trained model folder (TRAINER__PLANS__CONFIG, holding fold_X/), instead of -d/-tr/-p/-c")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds to ensemble (default 0 1 2 3 "
                        "4; 'all' for a model trained on fold all)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch "
                        "(default 0.5; along the slice axis rounded to whole thick slices, see above)")
    parser.add_argument("--save_probabilities", action="store_true", help="also write HR class probabilities (.npz)")
    parser.add_argument("--continue_prediction", "--c", action="store_true", help="skip cases already predicted")
    parser.add_argument("-npp", type=int, default=None, help="preprocessing processes (default nnU-Net's, 3)")
    parser.add_argument("-nps", type=int, default=None, help="export processes (default nnU-Net's, 3)")
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (with -d)")
    parser.add_argument("-part_id", type=int, default=0, help="which part this process predicts (with -d)")
    parser.add_argument("-device", default=None, choices=("cuda", "cpu", "mps"),
                        help="torch device (default: cuda > mps > cpu, whichever is available)")
    parser.add_argument("--verbose", action="store_true", help="nnU-Net's verbose output")
    parser.add_argument("--disable_progress_bar", action="store_true", help="no progress bar")
    return parser


def nnunet_argv(args: argparse.Namespace) -> list[str]:
    """The nnU-Net command line (without the program name) that does what ``args`` ask."""
    argv = ["-i", args.i, "-o", args.o, "-f", *args.f, "-chk", args.chk, "-step_size", str(args.step_size),
            "-device", args.device or select_device().type]
    if args.m:
        argv += ["-m", args.m]
    else:
        argv += ["-d", args.d, "-tr", args.tr, "-p", args.p, "-c", args.c, "-num_parts", str(args.num_parts),
                 "-part_id", str(args.part_id)]
    for flag in ("npp", "nps"):
        if getattr(args, flag) is not None:
            argv += [f"-{flag}", str(getattr(args, flag))]
    for flag in ("save_probabilities", "continue_prediction", "verbose", "disable_progress_bar"):
        if getattr(args, flag):
            argv.append(f"--{flag}")
    return argv


def model_folder(args: argparse.Namespace) -> str:
    """The trained model folder the arguments name; one line when it does not exist."""
    if args.m:
        folder = args.m
    else:
        if not os.environ.get("nnUNet_results"):
            raise RehrsegInputError("the environment variable nnUNet_results is not set; export it (the folder "
                                    "nnUNetv2_train wrote to) or pass -m MODEL_FOLDER.")
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        try:
            maybe_convert_to_dataset_name(args.d)
        except RuntimeError:
            raise RehrsegInputError(f"dataset {args.d} was not found under nnUNet_raw, nnUNet_preprocessed or "
                                    f"nnUNet_results; pass the id or name the model was trained on.") from None
        folder = get_output_folder(args.d, args.tr, args.p, args.c)
    if not os.path.isdir(folder):
        raise RehrsegInputError(f"no trained model in {folder}; train it with nnUNetv2_train ... -tr {args.tr} -p "
                                f"{args.p}, or name the right one with -d/-tr/-p/-c or -m.")
    missing = [f for f in args.f if not os.path.isfile(os.path.join(folder, f"fold_{f}", args.chk))]
    if missing:
        raise RehrsegInputError(f"{folder} has no {args.chk} for fold(s) {', '.join(missing)}; pass the trained folds "
                                f"with -f (e.g. -f all) or train them.")
    return folder


def run(args: argparse.Namespace) -> None:
    """rehrseg_predict with parsed arguments."""
    if args.m and args.d:
        build_parser().error("pass the model either as -m MODEL_FOLDER or as -d/-tr/-p/-c, not both")
    if not args.m and not args.d:
        build_parser().error("name the model: -d DATASET (with -tr/-p/-c when not the defaults) or -m MODEL_FOLDER")
    from rehrseg_nnunet.predict import (
        check_carried_sr_model,
        check_prediction_inputs,
        check_rehrseg_model,
        run_nnunet_prediction,
    )

    chosen = "" if args.device else " (the first available of cuda, mps, cpu; -device picks one)"
    args.device = select_device(args.device).type  # one line for an absent GPU, before anything is written
    print(f"rehrseg_predict: predicting on {args.device}{chosen}", flush=True)
    folder = model_folder(args)
    check_rehrseg_model(folder)
    check_prediction_inputs(args.i, folder, args.c)
    check_carried_sr_model(folder, args.f, args.chk)
    existed = os.path.isdir(args.o)
    before = set(os.listdir(args.o)) if existed else set()
    # parts (-num_parts/-part_id, which reach nnU-Net with -d only) predict into one -o side by side: a lock each
    part = (args.part_id, args.num_parts) if not args.m else (0, 1)
    lock = claim_output_folder(args.o, *part)
    try:
        run_nnunet_prediction(nnunet_argv(args), from_model_folder=bool(args.m))
    except BaseException:
        if not other_runs(args.o, lock):  # parts beside it may have written (or still need) those files
            remove_bookkeeping_files(args.o, existed, before)
        os.remove(lock)
        raise
    os.remove(lock)


#: hidden file in -o holding the PID of the rehrseg_predict run that predicts into it
OUTPUT_LOCK = ".rehrseg_predict.lock"


def output_lock_name(part_id: int = 0, num_parts: int = 1) -> str:
    """The lock of a whole run, or of part ``part_id`` of ``num_parts`` (parts share -o, each predicting its cases)."""
    return OUTPUT_LOCK if num_parts <= 1 else f".rehrseg_predict.part{part_id}of{num_parts}.lock"


def claim_output_folder(output: str, part_id: int = 0, num_parts: int = 1) -> str:
    """One rehrseg_predict per output folder (per part of it) at a time (so a run's clean-up never meets another
    run's files); the lock of a killed run does not block.

    Args:
        output: the -o folder (created).
        part_id, num_parts: the part this run predicts (-part_id/-num_parts; 0, 1 for a whole run).

    Returns:
        The lock file, to remove when the run ends.

    Raises:
        RehrsegInputError: a live process predicts into ``output``.
    """
    from rehrseg_nnunet.file_writing import claim_lock

    os.makedirs(output, exist_ok=True)
    lock = os.path.join(output, output_lock_name(part_id, num_parts))
    owner = claim_lock(lock)
    clash = [] if owner else [p for p in other_runs(output, lock)
                              if num_parts <= 1 or os.path.basename(p) == OUTPUT_LOCK]  # a whole run and parts
    if clash:
        os.remove(lock)
        lock = clash[0]
    if owner or clash:
        raise RehrsegInputError(f"{output} is being predicted into by "
                                f"{f'process {owner}' if owner > 0 else 'another process'} (lock {lock}); wait for it "
                                "to finish, or predict into another -o folder.")
    return lock


def other_runs(output: str, own_lock: str) -> list[str]:
    """The locks of the other live rehrseg_predict runs (or parts of one) in ``output``.

    Args:
        output: the -o folder.
        own_lock: this run's lock (left out).

    Returns:
        Their lock files.
    """
    from rehrseg_nnunet.file_writing import process_alive

    found = []
    for name in sorted(os.listdir(output)) if os.path.isdir(output) else []:
        path = os.path.join(output, name)
        if not (name.startswith(".rehrseg_predict") and name.endswith(".lock")) or path == own_lock:
            continue
        try:
            with open(path) as handle:
                owner = int(handle.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if owner and owner != os.getpid() and process_alive(owner):
            found.append(path)
    return found


#: what nnU-Net's prediction writes into -o besides the segmentations
BOOKKEEPING_FILES = ("dataset.json", "plans.json", "predict_from_raw_data_args.json")


def remove_bookkeeping_files(output: str, existed: bool, before: set[str]) -> None:
    """After a failed prediction: the files nnU-Net wrote for itself go (finished segmentations stay, for
    --continue_prediction), and so does the -o folder when it is new and left empty."""
    if not os.path.isdir(output):
        return
    for name in BOOKKEEPING_FILES:
        if name not in before and os.path.isfile(os.path.join(output, name)):
            os.remove(os.path.join(output, name))
    if not existed and not os.listdir(output):
        os.rmdir(output)


def main(argv: list[str] | None = None) -> None:
    run_cli("rehrseg_predict", lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
