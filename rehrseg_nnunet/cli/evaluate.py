"""rehrseg_evaluate — Dice and HD95 of predicted segmentations against references, on the reference grid."""

from __future__ import annotations

import argparse
import json
import os

from rehrseg_nnunet.cli.common import run_cli
from rehrseg_nnunet.errors import RehrsegInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rehrseg_evaluate",
        description="Score predictions against references (nnU-Net naming: CASE + file ending): Dice and HD95 (mm) "
                    "per label and for the whole foreground (label > 0), per case and mean ± std, on the reference "
                    "grid (an LR reference scores on the LR grid, an HR one on the HR grid).")
    parser.add_argument("-ref", dest="reference", required=True, help="folder of reference segmentations")
    parser.add_argument("-pred", dest="prediction", required=True, help="folder of predicted segmentations")
    parser.add_argument("-o", dest="output", default=None, help="summary JSON (default: PRED/summary_rehrseg.json)")
    parser.add_argument("-djfile", default=None, help="dataset.json whose 'labels' and 'file_ending' to use")
    parser.add_argument("-l", dest="labels", type=int, nargs="+", default=None,
                        help="label values to score (default: those in -djfile, else every value in the references)")
    parser.add_argument("--resample-to-reference", action="store_true",
                        help="resample predictions on another grid onto the reference grid (nearest neighbour) "
                             "instead of refusing them")
    return parser


def labels_and_ending(args: argparse.Namespace) -> tuple[dict[str, int] | None, str | None]:
    if args.djfile:
        if not os.path.isfile(args.djfile):
            raise RehrsegInputError(f"{args.djfile} does not exist; pass the dataset.json of the dataset with -djfile.")
        with open(args.djfile) as handle:
            dataset_json = json.load(handle)
        labels = {name: int(value) for name, value in dataset_json.get("labels", {}).items() if isinstance(value, int)}
        if args.labels:
            labels = {name: value for name, value in labels.items() if value in args.labels}
        return labels or None, dataset_json.get("file_ending")
    return ({f"label_{v}": v for v in args.labels} if args.labels else None), None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def body() -> None:
        from rehrseg_nnunet.evaluation import evaluate_folders, format_table
        labels, file_ending = labels_and_ending(args)
        summary = evaluate_folders(args.reference, args.prediction, labels, file_ending, args.resample_to_reference)
        output = args.output or os.path.join(args.prediction, "summary_rehrseg.json")
        with open(output + ".tmp", "w") as handle:
            json.dump(summary, handle, indent=2)
        os.replace(output + ".tmp", output)
        print(format_table(summary))
        print(f"summary: {output}")

    run_cli("rehrseg_evaluate", body)


if __name__ == "__main__":
    main()
