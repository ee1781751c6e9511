"""rehrseg_plan — write REHRSegPlans.json for a preprocessed pseudo-HR dataset."""

from __future__ import annotations

import argparse

from rehrseg_nnunet.cli.common import new_parser, run_cli

DESCRIPTION = (
    "Derive REHRSegPlans (REHRSegUNet, LR topology, separate-z nearest resampling along the slice "
    "axis) from nnUNetPlans of a pseudo-HR dataset, and preprocess its uncertainty maps. Run after "
    "nnUNetv2_plan_and_preprocess; then nnUNetv2_train D 3d_fullres F -tr REHRSegTrainer -p "
    "REHRSegPlans (pip install put REHRSeg's trainer folder on nnUNet_extTrainer; REHRSEG_NO_EXT_TRAINER=1 "
    "turns that off). The SR model folder is needed the first time only (its feature width sets the "
    "network's distillation projection); re-planning keeps the width already recorded. The uncertainty maps "
    "go beside the preprocessed data folder, where re-running nnUNetv2_plan_and_preprocess leaves them."
)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("rehrseg_plan", DESCRIPTION)
    parser.add_argument("-d", dest="dataset", required=True, help="pseudo-HR dataset id or name")
    parser.add_argument("-pl", dest="source_plans", default="nnUNetPlans",
                        help="plans to start from (default nnUNetPlans)")
    parser.add_argument("--patch_size", type=int, nargs=3, default=None,
                        help="HR patch, slice axis first (default: nnU-Net's 3d_fullres patch, adapted to r)")
    parser.add_argument("--lr_plans", default=None, metavar="PLANS_JSON",
                        help="plans.json of the nnU-Net trained on the thick-slice dataset (its results folder): the "
                             "inner U-Net gets exactly its topology and patch, so nnUNetv2_train -pretrained_weights "
                             "can fine-tune from its checkpoint (--patch_size and the feature options then do not "
                             "apply)")
    parser.add_argument("--use_mask_for_norm", action="store_true",
                        help="z-score inside the non-zero mask where nnU-Net would (its stock choice); by default "
                             "REHRSeg plans z-score over the whole cropped volume, so the background keeps its own "
                             "value (with --lr_plans the LR model's normalisation is used)")
    parser.add_argument("--base_features", type=int, default=32, help="U-Net features at full resolution (nnU-Net: 32)")
    parser.add_argument("--max_features", type=int, default=320, help="U-Net feature cap (nnU-Net: 320)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: nnU-Net's")
    parser.add_argument("-np", dest="num_processes", type=int, default=4,
                        help="processes if data must be re-preprocessed")
    parser.add_argument("--overwrite", action="store_true", help="redo the preprocessed uncertainty maps")
    return parser


def run(args: argparse.Namespace) -> None:
    """rehrseg_plan with parsed arguments."""
    from rehrseg_nnunet.planning import plan_dataset
    plan_dataset(dataset=args.dataset, source_plans=args.source_plans, patch_size=args.patch_size,
                 base_features=args.base_features, max_features=args.max_features, batch_size=args.batch_size,
                 num_processes=args.num_processes, overwrite=args.overwrite, lr_plans=args.lr_plans,
                 use_mask_for_norm=args.use_mask_for_norm)


def main(argv: list[str] | None = None) -> None:
    run_cli("rehrseg_plan", lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
