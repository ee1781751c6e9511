"""How much can the stage 1b network learn beyond its prior? (training-pair level, no inference)

Trains fresh stage-1b networks (the preset's size) on the training pairs of a finished SR model
and reports their held-out L1 next to the L1 of the prior they refine:

- ``stage1a_prior``: the product's set-up, refining the stage 1a estimate;
- ``stage1a_prior_image_x10``: the same with the image L1 weighted x10 against the label loss;
- ``cubic_prior``: refining cubic interpolation of the frames instead (how strong the network is alone).

    python benchmarks/sr_1b_headroom.py --model benchmarks/work/sr_quality/sr_model \\
        --raw benchmarks/work/sr_quality/nnUNet_raw -d 901

Writes benchmarks/results/sr_1b_headroom.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import torch

from rehrseg_nnunet.dataset_io import load_raw_dataset
from rehrseg_nnunet.sr.config import SRConfig
from rehrseg_nnunet.sr.networks import SliceInterpolationNet
from rehrseg_nnunet.sr.pairs import DegradedVolume, FramePairSampler
from rehrseg_nnunet.sr.stage_1a_outputs import attach_stage_1a_priors, pseudohr_training_volumes
from rehrseg_nnunet.sr.stage_trainer import sr_loss
from rehrseg_nnunet.sr.train import load_training_cases

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {"stage1a_prior": {}, "stage1a_prior_image_x10": {"image_weight": 10.0}, "cubic_prior": {"cubic": True}}


def image_prior(net: SliceInterpolationNet, frames: torch.Tensor, prior: torch.Tensor, cubic: bool) -> torch.Tensor:
    """The prior the network refines; for ``cubic`` its image channels are cubic interpolation of the frames."""
    if not cubic:
        return prior
    prior = prior.clone()
    prior[:, :net.image_channels] = net.interpolation_prior(frames)[:, :net.image_channels]
    return prior


def run_variant(config: SRConfig, sampler: FramePairSampler, held_out: list, steps: int, learning_rate: float,
                batch_size: int, image_weight: float = 1.0, cubic: bool = False) -> dict:
    torch.manual_seed(0)
    net = SliceInterpolationNet(**config.slice_net_kwargs(uncertainty_head=False))
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    c = config.image_channels
    started = time.perf_counter()
    for step in range(steps):
        frames, prior, image, labels, known = [torch.from_numpy(a) for a in
                                               sampler.sample(np.random.default_rng((5, step)), batch_size)]
        output = net(frames, image_prior(net, frames, prior, cubic))["output"]
        loss, _ = sr_loss(output, image, labels, known, c)
        loss = loss + (image_weight - 1.0) * (output[:, :c] - image).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    net.eval()
    prior_l1, output_l1 = [], []
    with torch.no_grad():
        for frames, prior, image, _, _ in held_out:
            prior = image_prior(net, frames, prior, cubic)
            prior_l1.append(float((prior[:, :c] - image).abs().mean()))
            output_l1.append(float((net(frames, prior)["output"][:, :c] - image).abs().mean()))
    return {"prior_l1": float(np.mean(prior_l1)), "output_l1": float(np.mean(output_l1)),
            "ratio": float(np.mean(output_l1) / np.mean(prior_l1)), "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a finished SR model folder (its stage 1a caches are reused)")
    parser.add_argument("--raw", required=True, help="nnUNet_raw holding the model's dataset")
    parser.add_argument("-d", dest="dataset", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "sr_1b_headroom.json"))
    args = parser.parse_args()
    os.environ["nnUNet_raw"] = args.raw
    config = SRConfig.load(args.model)
    cases, _, _ = load_training_cases(load_raw_dataset(args.dataset), config.slice_axis, config.scale_factor)
    device = torch.device("cpu")
    pseudo = pseudohr_training_volumes(args.model, cases, config, device, print)
    volumes = [DegradedVolume.build(image, labels, config.scale_factor, config.profile_fwhm, config.profile)
               for image, labels in pseudo]
    attach_stage_1a_priors(args.model, [case.identifier for case in cases], volumes, config, device)
    patch, batch_size = config.settings["patch_size"]["1b"], config.settings["batch_size"]["1b"]
    sampler = FramePairSampler(volumes, config.num_classes, config.scale_factor, patch)
    held_out = [[torch.from_numpy(a) for a in sampler.sample(np.random.default_rng((777, i)), batch_size)]
                for i in range(40)]
    results = {"command": "python benchmarks/sr_1b_headroom.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
               "steps": args.steps, "learning_rate": args.learning_rate, "held_out_batches": len(held_out)}
    for name, options in VARIANTS.items():
        results[name] = run_variant(config, sampler, held_out, args.steps, args.learning_rate, batch_size, **options)
        print(name, json.dumps(results[name]), flush=True)
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
