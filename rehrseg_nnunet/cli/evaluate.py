"""rehrseg_evaluate — Dice and HD95 of predicted segmentations against references, on the reference grid."""

from __future__ import annotations

import argparse
import json
import os

from rehrseg_nnunet.cli.common import new_parser, run_cli
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import write_json_atomically

DESCRIPTION = (
    "Score predictions against references (nnU-Net naming: CASE + file ending): Dice and HD95 (mm) "
    "per label and for the whole foreground (label > 0), per case and mean ± std, on the reference "
    "grid (an LR reference scores on the LR grid, an HR one on the HR grid). Writes a JSON summary "
    "and prints a table."
)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("rehrseg_evaluate", DESCRIPTION)
    parser.add_argument("-ref", dest="reference", metavar="REF_FOLDER", required=True,
                        help="folder of reference segmentations")
    parser.add_argument("-pred", dest="prediction", metavar="PRED_FOLDER", required=True,
                        help="folder of predicted segmentations")
    parser.add_argument("-o", dest="output", metavar="OUTPUT_JSON", default=None,
                        help="summary JSON (default: PRED_FOLDER/summary_rehrseg.json)")
    parser.add_argument("-djfile", metavar="DATASET_JSON", default=None,
                        help="dataset.json whose 'labels' (name -> value) and 'file_ending' to use")
    parser.add_argument("-l", dest="labels", metavar="VALUE", type=int, nargs="+", default=None,
                        help="label values to score (with -djfile: a subset of its labels, keeping their names; "
                             "default: the labels of -djfile, else every non-zero value in the references)")
    parser.add_argument("--resample-to-reference", action="store_true",
                        help="resample predictions on another grid onto the reference grid (nearest neighbour) "
                             "instead of refusing them")
    return parser


def labels_and_ending(args: argparse.Namespace) -> tuple[dict[str, int] | None, str | None]:
    """Labels (name -> value) and file ending from -djfile and -l; (None, None) leaves both to the references."""
    if not args.djfile:
        return ({f"label_{v}": v for v in dict.fromkeys(args.labels)} if args.labels else None), None
    if not os.path.isfile(args.djfile):
        raise RehrsegInputError(f"{args.djfile} does not exist; pass the dataset.json of the dataset with -djfile.")
    try:
        with open(args.djfile) as handle:
            dataset_json = json.load(handle)
    except (OSError, ValueError) as error:
        raise RehrsegInputError(f"{args.djfile} is not a readable JSON file ({error}); pass an nnU-Net dataset.json "
                                f"with -djfile.") from None
    # region-based labels (lists of values) are not scored: only name -> int entries
    labels = {name: int(value) for name, value in dataset_json.get("labels", {}).items()
              if isinstance(value, int) and not isinstance(value, bool)}
    if args.labels:
        unknown = sorted(set(args.labels) - set(labels.values()))
        if unknown:
            raise RehrsegInputError(f"-l {' '.join(map(str, unknown))} is not among the labels of {args.djfile} "
                                    f"({labels}); pass values from its 'labels', or leave out -djfile.")
        labels = {name: value for name, value in labels.items() if value in args.labels}
    if not any(labels.values()):
        raise RehrsegInputError(f"{args.djfile} has no non-zero integer labels to score; leave out -djfile and "
                                f"pass the values with -l 1 2 …")
    return labels, dataset_json.get("file_ending")


def write_json(summary: dict, output: str) -> None:
    """Write ``summary`` to ``output`` through a temporary file, so a failed run leaves no partial JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    write_json_atomically(output, summary)


def run(args: argparse.Namespace) -> None:
    """rehrseg_evaluate with parsed arguments."""
    from rehrseg_nnunet.evaluation import evaluate_folders, format_table
    labels, file_ending = labels_and_ending(args)
    summary = evaluate_folders(reference_folder=args.reference, prediction_folder=args.prediction, labels=labels,
                               file_ending=file_ending, resample_to_reference=args.resample_to_reference)
    output = args.output or os.path.join(args.prediction, "summary_rehrseg.json")
    write_json(summary, output)
    print(format_table(summary))
    print(f"summary: {output}")


def main(argv: list[str] | None = None) -> None:
    run_cli("rehrseg_evaluate", lambda: run(build_parser().parse_args(argv)), "run it again (nothing was written)")


if __name__ == "__main__":
    main()
