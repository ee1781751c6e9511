"""rehrseg_train_sr — train the self-supervised SR model (stages 1a, 1b, 1c) of an nnU-Net raw dataset."""

from __future__ import annotations

import argparse

from rehrseg_nnunet.cli.common import run_cli
from rehrseg_nnunet.geometry import parse_slice_axis
from rehrseg_nnunet.sr.config import PRESETS

DESCRIPTION = (
    "Learn, from thick-slice images and labels alone, to super-resolve the slice axis of both "
    "(REHRSeg stage 1). Reads nnUNet_raw/DatasetXXX_Name; writes a model folder."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rehrseg_train_sr", description=DESCRIPTION)
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name under nnUNet_raw")
    parser.add_argument("-o", "--output", default=None,
                        help="model folder (default: nnUNet_results/DatasetXXX_Name/rehrseg_sr)")
    parser.add_argument("-device", default=None, choices=["cuda", "mps", "cpu"],
                        help="torch device (default: cuda > mps > cpu, whichever is available)")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS),
                        help="network size and schedule: small trains on 2 CPU cores in minutes; paper = the authors' "
                             "sizes")
    parser.add_argument("--scale-factor", type=int, default=None,
                        help="r, the number of HR slices per thick slice (default: r = round(slice spacing / mean "
                             "in-plane spacing), e.g. 4 mm slices of 0.5 x 1.0 mm pixels give r = round(4 / 0.75) = "
                             "5; the HR slices are then slice spacing / r = 0.8 mm, not the in-plane spacing); this "
                             "option overrides it")
    parser.add_argument("--slice-axis", default=None,
                        help="x, y or z (SimpleITK index order); default: the axis with the largest spacing")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="training steps of stages 1a 1b 1c (one value for all stages)")
    parser.add_argument("--attention-maps", type=int, default=None, metavar="M",
                        help="M, the number of reconstructions/attention maps of the uncertainty head "
                             "(default: the preset's, small 4, paper 16)")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="resume an interrupted training from its last checkpoint")
    parser.add_argument("--init-flavr", default=None,
                        help="FLAVR 4x video-interpolation checkpoint to initialise stage 1b (stem/output "
                             "re-initialised)")
    parser.add_argument("--profile", default="gaussian", choices=["gaussian", "box"],
                        help="slice profile used to simulate thick slices in training pairs")
    parser.add_argument("--save-every", type=int, default=100, help="checkpoint interval in steps")
    return parser


def run(args: argparse.Namespace) -> None:
    """rehrseg_train_sr with parsed arguments."""
    from rehrseg_nnunet.sr.train import SRTrainingOptions, train_sr
    options = SRTrainingOptions(
        output=args.output, device=args.device, preset=args.preset, scale_factor=args.scale_factor,
        slice_axis=parse_slice_axis(args.slice_axis), steps=tuple(args.steps) if args.steps else None,
        seed=args.seed, resume=args.resume, init_flavr=args.init_flavr, profile=args.profile,
        save_every=args.save_every, attention_maps=args.attention_maps)
    train_sr(args.dataset, options)


def main(argv: list[str] | None = None) -> None:
    run_cli("rehrseg_train_sr", lambda: run(build_parser().parse_args(argv)), "run it again with --continue to resume")


if __name__ == "__main__":
    main()
