"""rehrseg_super_resolve — pseudo-HR images of new thick-slice images with a trained SR model."""

from __future__ import annotations

import argparse
import os

from rehrseg_nnunet.cli.common import add_thick_slice_folders, new_parser, run_cli
from rehrseg_nnunet.errors import RehrsegInputError

DESCRIPTION = """\
Super-resolve thick-slice images with the SR model of rehrseg_train_sr: each input CASE_XXXX.ext of n slices of
thickness s is written to -o under the same name as n*r slices of spacing s/r along its slice axis (the HR grid of
rehrseg_make_pseudohr and rehrseg_predict; in-plane grid and direction unchanged). With a pseudo-HR dataset
(rehrseg_make_pseudohr) and stock nnU-Net trained on it, this makes the inputs that model predicts from:
"SR + stock nnU-Net". Inputs must have the SR model's slice axis and slice spacing. Cases already written to -o
are skipped (re-run to resume); --overwrite redoes them."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("rehrseg_super_resolve", DESCRIPTION, raw=True)
    add_thick_slice_folders(parser, "output folder for the pseudo-HR images (created if missing)")
    model = parser.add_argument_group("SR model (either -d or -m)")
    model.add_argument("-d", default=None, help="thick-slice dataset id or name whose SR model to use "
                       "(nnUNet_results/DatasetXXX_Name/rehrseg_sr)")
    model.add_argument("-m", default=None, metavar="SR_MODEL_FOLDER", help="SR model folder (rehrseg_train_sr -o)")
    parser.add_argument("--save_uncertainty", action="store_true",
                        help="also write the uncertainty maps (values in [0, 1]) to -o/uncertainty/CASE.ext")
    parser.add_argument("--overwrite", action="store_true", help="redo cases that are already written")
    parser.add_argument("-device", default=None, choices=("cuda", "mps", "cpu"),
                        help="torch device (default: cuda > mps > cpu, whichever is available)")
    parser.add_argument("--disable_progress_bar", action="store_true", help="no progress bar")
    return parser


def sr_model_folder(args: argparse.Namespace) -> str:
    """The SR model folder named by -m, or the default one of dataset -d."""
    if args.m:
        return args.m
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from rehrseg_nnunet.contract import default_sr_model_folder

    try:
        name = maybe_convert_to_dataset_name(args.d)
    except RuntimeError:
        raise RehrsegInputError(f"dataset {args.d} was not found under nnUNet_raw, nnUNet_preprocessed or "
                                "nnUNet_results; pass the thick-slice dataset's id or name, or -m SR_MODEL_FOLDER."
                                ) from None
    return default_sr_model_folder(name, "-m SR_MODEL_FOLDER")


def run(args: argparse.Namespace) -> None:
    """rehrseg_super_resolve with parsed arguments."""
    if bool(args.m) == bool(args.d):
        build_parser().error("name the SR model: -d DATASET or -m SR_MODEL_FOLDER (one of them)")
    from rehrseg_nnunet.sr.infer import SuperResolver
    from rehrseg_nnunet.super_resolve import check_cases_fit, detect_file_ending, input_cases, super_resolve_cases

    folder = sr_model_folder(args)
    if not os.path.isdir(folder):
        raise RehrsegInputError(f"no SR model in {folder}; train it with rehrseg_train_sr or name it with -m.")
    ending = detect_file_ending(args.i)
    resolver = SuperResolver(folder, args.device)
    cases = input_cases(args.i, ending, resolver.config.image_channels)
    check_cases_fit(cases, resolver, f"the SR model in {folder}")
    if os.path.abspath(args.o) == os.path.abspath(args.i):
        raise RehrsegInputError(f"-o {args.o} is the input folder; write the pseudo-HR images to another folder.")
    before = output_stamps(cases, args.o)
    super_resolve_cases(cases, args.o, resolver, uncertainty=args.save_uncertainty, overwrite=args.overwrite,
                        progress=not args.disable_progress_bar)
    after = output_stamps(cases, args.o)
    kept = sum(1 for old, new in zip(before, after, strict=True) if None not in old and old == new)
    done = f"{len(cases) - kept} case(s) super-resolved into {args.o} (r = {resolver.config.scale_factor})"
    if kept:
        done += (f"; {kept} of {len(cases)} case(s) were already super-resolved there and were kept (pass "
                 f"--overwrite to redo them)")
    print(done)


def output_stamps(cases: list[list[str]], output: str) -> list[tuple[int | None, ...]]:
    """Modification times of each case's pseudo-HR files in ``output`` (None for a missing one)."""
    def stamp(path: str) -> int | None:
        return os.stat(path).st_mtime_ns if os.path.isfile(path) else None

    return [tuple(stamp(os.path.join(output, os.path.basename(f))) for f in files) for files in cases]


def main(argv: list[str] | None = None) -> None:
    run_cli("rehrseg_super_resolve", lambda: run(build_parser().parse_args(argv)),
            "run it again: finished cases are skipped")


if __name__ == "__main__":
    main()
