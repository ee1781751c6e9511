"""rehrseg_export_model — nnUNetv2_export_model_to_zip for REHRSeg models: its zip, REHRSeg's defaults, and no
partial zip left behind."""

from __future__ import annotations

import argparse
import os

from rehrseg_nnunet.cli.common import run_cli
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import HASH_SUFFIX, hash_file, hash_mismatch, process_alive

#: ending of the zip nnU-Net writes before it is renamed to ``-o`` (``NAME.zip.PID.partial``)
PARTIAL_SUFFIX = ".partial"

DESCRIPTION = """\
Export a trained REHRSeg model as nnU-Net's model zip (install it elsewhere with
nnUNetv2_install_pretrained_model_from_zip). The same zip as nnUNetv2_export_model_to_zip, with REHRSeg's
defaults (-c 3d_fullres, -tr REHRSegTrainer, -p REHRSegPlans, -f all); every requested fold is checked first, and the
zip is written under a temporary name and renamed when complete, so a failed export leaves no zip. An SR-guided
model carries its SR model inside its checkpoints: the zip is all a user needs to predict."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rehrseg_export_model", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="dataset id or name the model was trained on")
    parser.add_argument("-o", required=True, help="output zip file")
    parser.add_argument("-c", nargs="+", default=["3d_fullres"], help="configurations (default 3d_fullres)")
    parser.add_argument("-tr", default="REHRSegTrainer", help="trainer class (default REHRSegTrainer)")
    parser.add_argument("-p", default="REHRSegPlans", help="plans identifier (default REHRSegPlans)")
    parser.add_argument("-f", nargs="+", default=["all"], help="folds (default all)")
    parser.add_argument("-chk", nargs="+", default=["checkpoint_final.pth"], help="checkpoints to export")
    parser.add_argument("--exp_cv_preds", action="store_true", help="also export the validation predictions")
    return parser


def check_exportable(dataset: str, configurations: list[str], trainer: str, plans: str, folds: list[str],
                     checkpoints: list[str]) -> None:
    """Every file nnU-Net's export packs must exist; one line naming the first missing one and the fix."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    for configuration in configurations:
        folder = get_output_folder(dataset, trainer, plans, configuration)
        if not os.path.isdir(folder):
            raise RehrsegInputError(f"no trained model in {folder}; train it, or name it with -d/-tr/-p/-c.")
        needed = [os.path.join(folder, n) for n in ("plans.json", "dataset.json", "dataset_fingerprint.json")]
        for fold in folds:
            fold_folder = os.path.join(folder, f"fold_{fold}")
            needed += [os.path.join(fold_folder, c) for c in checkpoints]
            needed += [os.path.join(fold_folder, "progress.png"), os.path.join(fold_folder, "validation",
                                                                                "summary.json")]
        missing = [path for path in needed if not os.path.isfile(path)]
        if missing:
            hint = ("finish the training (nnUNetv2_train ... --c), or run nnUNetv2_train ... --val for the "
                    "validation summary" if missing[0].endswith(".json") and "validation" in missing[0]
                    else "train the requested folds (or pass the trained ones with -f)")
            raise RehrsegInputError(f"{missing[0]} is missing, so the export would be incomplete; {hint}.")
        for path in needed:
            mismatch = hash_mismatch(path, print) if path.endswith(".pth") else None
            if mismatch:
                raise RehrsegInputError(f"{path} is damaged ({mismatch}), so it is not exported; train that fold "
                                        "again (or resume it with nnUNetv2_train ... --c) and export then.")


def remove_stale_partial_zips(output: str) -> int:
    """Delete the ``NAME.zip.PID.partial`` files that killed exports to ``output`` left (those of live
    processes stay).

    Args:
        output: the export's ``-o`` zip file.

    Returns:
        How many were deleted.
    """
    folder, name = os.path.split(os.path.abspath(output))
    removed = 0
    for entry in os.listdir(folder) if os.path.isdir(folder) else []:
        pid = entry[len(name) + 1: -len(PARTIAL_SUFFIX)]
        if entry.startswith(name + ".") and entry.endswith(PARTIAL_SUFFIX) and pid.isdigit() \
                and not process_alive(int(pid)):
            os.remove(os.path.join(folder, entry))
            removed += 1
    return removed


def add_checkpoint_hashes(zip_file: str, results: str, checkpoints: list[str]) -> None:
    """Put the SHA-256 record of every exported checkpoint into the zip beside it, so an installed model is
    verified as the trained one is.

    Args:
        zip_file: the exported zip.
        results: nnUNet_results (the zip's paths are relative to it).
        checkpoints: checkpoint file names that were exported.
    """
    import zipfile

    with zipfile.ZipFile(zip_file, "a", zipfile.ZIP_DEFLATED) as archive:
        for member in archive.namelist():
            record = hash_file(os.path.join(results, member))
            if os.path.basename(member) in checkpoints and os.path.isfile(record):
                archive.write(record, member + HASH_SUFFIX)


def run(args: argparse.Namespace) -> None:
    """rehrseg_export_model with parsed arguments."""
    if not os.environ.get("nnUNet_results"):
        raise RehrsegInputError("the environment variable nnUNet_results is not set; export it (the folder "
                                "nnUNetv2_train wrote to).")
    removed = remove_stale_partial_zips(args.o)  # first: even a re-run that fails removes what a killed one left
    if removed:
        print(f"removed {removed} partial zip(s) that an interrupted export to {args.o} left")
    from nnunetv2.model_sharing.model_export import export_pretrained_model
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        dataset = maybe_convert_to_dataset_name(args.d)
    except RuntimeError:
        raise RehrsegInputError(f"dataset {args.d} was not found under nnUNet_raw, nnUNet_preprocessed or "
                                "nnUNet_results; pass the id or name the model was trained on.") from None
    check_exportable(dataset, args.c, args.tr, args.p, args.f, args.chk)
    partial = f"{args.o}.{os.getpid()}{PARTIAL_SUFFIX}"
    try:
        export_pretrained_model(dataset, partial, configurations=args.c, trainer=args.tr, plans_identifier=args.p,
                                folds=[f if f == "all" else int(f) for f in args.f], strict=True,
                                save_checkpoints=args.chk, export_crossval_predictions=args.exp_cv_preds)
        add_checkpoint_hashes(partial, os.environ["nnUNet_results"], args.chk)
        os.replace(partial, args.o)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    print(f"exported {dataset} ({args.tr}__{args.p}, folds {' '.join(args.f)}) to {args.o}")


def main(argv: list[str] | None = None) -> None:
    run_cli("rehrseg_export_model", lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
