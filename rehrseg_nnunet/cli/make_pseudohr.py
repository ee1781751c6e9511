"""rehrseg_make_pseudohr — rewrite a thick-slice raw dataset into a pseudo-HR raw dataset."""

from __future__ import annotations

import argparse

from rehrseg_nnunet.cli.common import run_cli

DESCRIPTION = (
    "Apply a trained self-SR model to every case of an nnU-Net raw dataset and write "
    "nnUNet_raw/DatasetTTT_<Source>PseudoHR (images, labels, uncertainty maps, QC pictures)."
)

def dataset_id(text: str) -> int:
    """An nnU-Net dataset id: an integer 1-999 (DatasetXXX_ has three digits)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a dataset id; give an integer from 1 to 999") from None
    if not 1 <= value <= 999:
        raise argparse.ArgumentTypeError(f"{value} is not a dataset id; nnU-Net ids run from 1 to 999")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rehrseg_make_pseudohr", description=DESCRIPTION)
    parser.add_argument("-d", dest="dataset", required=True, help="source dataset id or name under nnUNet_raw")
    parser.add_argument("-o", dest="target_id", required=True, type=dataset_id,
                        help="id of the new pseudo-HR dataset (1-999)")
    parser.add_argument("-m", dest="model", default=None,
                        help="SR model folder (default: nnUNet_results/DatasetXXX_Name/rehrseg_sr)")
    parser.add_argument("-device", default=None, choices=["cuda", "mps", "cpu"], help="torch device (default: auto)")
    parser.add_argument("-part_id", type=int, default=0, help="this process handles cases part_id::num_parts")
    parser.add_argument("-num_parts", type=int, default=1, help="number of processes/machines sharing the work")
    parser.add_argument("-np", dest="num_processes", type=int, default=1, help="worker processes")
    parser.add_argument("--overwrite", action="store_true", help="redo cases that are already complete")
    return parser


def run(args: argparse.Namespace) -> None:
    """rehrseg_make_pseudohr with parsed arguments."""
    from rehrseg_nnunet.pseudohr import make_pseudohr
    make_pseudohr(source_dataset=args.dataset, target_id=args.target_id, model_folder=args.model,
                  device=args.device, part_id=args.part_id, num_parts=args.num_parts,
                  num_processes=args.num_processes, overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> None:
    run_cli("rehrseg_make_pseudohr", lambda: run(build_parser().parse_args(argv)),
            "run it again: complete cases are skipped")


if __name__ == "__main__":
    main()
