"""Seconds per training iteration, REHRSegTrainer vs nnUNetTrainer, and prediction seconds per case,
rehrseg_predict vs nnUNetv2_predict, on the same plans and patch.

Builds a phantom thick-slice dataset (r = 4), trains a tiny SR model, makes the pseudo-HR dataset,
plans it (stock + REHRSegPlans with the same HR patch and widths), then times in-process:
- ``--iterations`` train steps of each trainer (after 2 warm-up steps), same batch size and patch;
- prediction of the LR inputs with nnUNetPredictor (stock network = the stock plans' PlainConvUNet)
  and with REHRSegPredictor + HR export (REHRSegUNet), both without TTA, untrained weights (timing only).

    python benchmarks/trainer_speed.py --device cpu

Writes benchmarks/results/trainer_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def script(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def start_first_epoch(trainer) -> None:
    """Take a built trainer into its first epoch, after 2 warm-up steps."""
    trainer.num_epochs = 1
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    for _ in range(2):  # warm-up
        trainer.train_step(next(trainer.dataloader_train))


def started_trainer(trainer_class, plans, dataset_json, device):
    """A trainer inside its first epoch, after 2 warm-up steps."""
    import torch
    trainer = trainer_class({**plans, "continue_training": False}, "3d_fullres", "all", dataset_json,
                            torch.device(device))
    start_first_epoch(trainer)
    return trainer


def time_training(trainer_class, plans, dataset_json, device, iterations: int) -> float:
    trainer = started_trainer(trainer_class, plans, dataset_json, device)
    batches = [next(trainer.dataloader_train) for _ in range(iterations)]
    started = time.perf_counter()
    for batch in batches:
        trainer.train_step(batch)
    seconds = (time.perf_counter() - started) / iterations
    trainer.on_train_end()
    return seconds


# the parts REHRSegTrainer.train_step names with torch.profiler.record_function
STEP_PARTS = ("rehrseg.targets", "rehrseg.teacher", "rehrseg.network_forward", "rehrseg.losses", "rehrseg.backward",
              "rehrseg.optimizer", "rehrseg.hr_head")


def profile_training(trainer_class, plans, dataset_json, device, iterations: int) -> tuple[dict, str]:
    """torch.profiler over ``iterations`` REHRSeg steps (batches fetched before): seconds per step of each
    named part, its share of the step, and the profiler's table."""
    from torch.profiler import ProfilerActivity, profile, record_function
    trainer = started_trainer(trainer_class, plans, dataset_json, device)
    batches = [next(trainer.dataloader_train) for _ in range(iterations)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as profiler:
        for batch in batches:
            with record_function("rehrseg.step"):
                trainer.train_step(batch)
    trainer.on_train_end()
    events = {e.key: e for e in profiler.key_averages()}
    step = events["rehrseg.step"].cpu_time_total
    parts = {name: events[name].cpu_time_total / step for name in STEP_PARTS if name in events}
    # the network's own forward and backward; everything else in the step is overhead of the method's step
    parts["outside_forward_backward"] = 1 - parts["rehrseg.network_forward"] - parts["rehrseg.backward"]
    parts["step_seconds"] = step / iterations / 1e6
    table = profiler.key_averages().table(sort_by="cpu_time_total", row_limit=25)
    return parts, table


def time_prediction(trainer_class, predictor_class, plans, dataset_json, device, inputs, output) -> float:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from rehrseg_nnunet.predict import model_contract
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("3d_fullres")
    network = trainer_class.build_network_architecture(plans_manager, configuration, len(dataset_json["channel_names"]),
                                                       len(dataset_json["labels"]), enable_deep_supervision=False)
    predictor = predictor_class(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device(device),
                                perform_everything_on_device=device == "cuda", allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration, [network.state_dict()], dataset_json,
                                    trainer_class.__name__, None)
    if predictor_class is not nnUNetPredictor:  # manual_initialization skips REHRSegPredictor's own setup
        predictor.scale_factor = model_contract(plans_manager, configuration).scale_factor
    files = sorted(f for f in os.listdir(inputs) if f.endswith(".nii.gz"))
    started = time.perf_counter()
    predictor.predict_from_files(inputs, output, save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    return (time.perf_counter() - started) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join(HERE, "work", "trainer_speed"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--patch_size", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--base_features", type=int, default=16)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "trainer_speed.json"))
    args = parser.parse_args()
    work = os.path.abspath(args.work)
    env = {"nnUNet_raw": os.path.join(work, "raw"), "nnUNet_preprocessed": os.path.join(work, "preprocessed"),
           "nnUNet_results": os.path.join(work, "results"), "nnUNet_def_n_proc": "1", "nnUNet_compile": "0"}
    os.environ.update(env)
    from phantoms import write_thick_slice_dataset
    if not os.path.isdir(os.path.join(env["nnUNet_raw"], "Dataset701_Speed")):
        write_thick_slice_dataset(env["nnUNet_raw"], 701, "Speed", num_cases=4, shape=(64, 96, 96))
    run = lambda *cmd: subprocess.run(list(cmd), check=True, env={**os.environ, **env})  # noqa: E731
    model = os.path.join(work, "sr_model")
    if not os.path.isfile(os.path.join(model, "stage_1c", "checkpoint_final.pth")):
        run(script("rehrseg_train_sr"), "-d", "701", "-o", model, "--steps", "20", "-device", args.device)
    run(script("rehrseg_make_pseudohr"), "-d", "701", "-o", "702", "-m", model, "-device", args.device)
    run(script("nnUNetv2_plan_and_preprocess"), "-d", "702", "-c", "3d_fullres", "-np", "1", "-npfp", "1")
    run(script("rehrseg_plan"), "-d", "702", "--patch_size", *map(str, args.patch_size),
        "--base_features", str(args.base_features), "--max_features", str(8 * args.base_features), "-np", "1")
    os.environ["nnUNet_n_proc_DA"] = "0"

    from brats_methods import recommended_key  # benchmarks/ is this script's folder, first on sys.path
    from nnunetv2.inference import predict_from_raw_data
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from rehrseg_nnunet.contract import CONTRACT_KEY
    from rehrseg_nnunet.predict import REHRSegPredictor, export_hr_prediction
    from rehrseg_nnunet.training.trainer import REHRSegTrainer
    from rehrseg_nnunet.training.variants import REHRSegTrainer_noHRHead

    folder = os.path.join(env["nnUNet_preprocessed"], "Dataset702_SpeedPseudoHR")
    with open(os.path.join(folder, "REHRSegPlans.json")) as handle:
        rehrseg_plans = json.load(handle)
    with open(os.path.join(folder, "nnUNetPlans.json")) as handle:
        stock_plans = json.load(handle)
    with open(os.path.join(folder, "dataset.json")) as handle:
        dataset_json = json.load(handle)
    # stock nnU-Net on the same HR patch, widths and batch (its own topology for that patch)
    stock_config = stock_plans["configurations"]["3d_fullres"]
    rehrseg_config = rehrseg_plans["configurations"]["3d_fullres"]
    from rehrseg_nnunet.planning import features_per_stage, lr_topology
    topology = lr_topology(stock_config["spacing"], args.patch_size, 1)
    stock_arch = stock_config["architecture"]["arch_kwargs"]
    stock_arch.update(strides=topology["strides"], kernel_sizes=topology["kernel_sizes"],
                      n_stages=len(topology["strides"]), n_conv_per_stage=[2] * len(topology["strides"]),
                      n_conv_per_stage_decoder=[2] * (len(topology["strides"]) - 1),
                      features_per_stage=features_per_stage(len(topology["strides"]), args.base_features,
                                                            8 * args.base_features))
    stock_config["patch_size"] = topology["hr_patch_size"]
    stock_config["batch_size"] = rehrseg_config["batch_size"]

    results = {"patch_size": rehrseg_config["patch_size"], "stock_patch_size": stock_config["patch_size"],
               "lr_patch_size": rehrseg_config[CONTRACT_KEY]["lr_patch_size"],
               "batch_size": rehrseg_config["batch_size"],
               "device": args.device, "iterations": args.iterations,
               # the class `-tr REHRSegTrainer` trains, as shipped: its design (hr_guidance) is what these times are of
               "rehrseg_trainer": {"class": f"{REHRSegTrainer.__module__}.{REHRSegTrainer.__qualname__}",
                                   "hr_guidance": REHRSegTrainer.hr_guidance, "design": recommended_key()}}
    results["iteration_seconds_nnunet"] = time_training(nnUNetTrainer, stock_plans, dataset_json, args.device,
                                                        args.iterations)
    results["iteration_seconds_rehrseg"] = time_training(REHRSegTrainer, rehrseg_plans, dataset_json, args.device,
                                                         args.iterations)
    results["iteration_ratio"] = results["iteration_seconds_rehrseg"] / results["iteration_seconds_nnunet"]
    # the HR head's cost, forward and backward: the same step without it (LR logits upsampled instead)
    results["iteration_seconds_rehrseg_no_hr_head"] = time_training(REHRSegTrainer_noHRHead, rehrseg_plans,
                                                                    dataset_json, args.device, args.iterations)
    results["hr_head_share_of_iteration"] = 1 - (results["iteration_seconds_rehrseg_no_hr_head"]
                                                 / results["iteration_seconds_rehrseg"])
    shares, table = profile_training(REHRSegTrainer, rehrseg_plans, dataset_json, args.device, args.iterations)
    results["profile_share_of_step"] = shares
    profile_path = os.path.splitext(args.output)[0] + "_profile.txt"
    with open(profile_path, "w") as handle:
        handle.write(f"{results['patch_size']} patch, batch {results['batch_size']}, {args.device}, "
                     f"{args.iterations} steps\n{table}\n")
    print(table)
    inputs = os.path.join(env["nnUNet_raw"], "Dataset701_Speed", "imagesTr")
    results["predict_seconds_nnunet"] = time_prediction(nnUNetTrainer, nnUNetPredictor, stock_plans, dataset_json,
                                                        args.device, inputs, os.path.join(work, "pred_nnunet"))
    predict_from_raw_data.export_prediction_from_logits = export_hr_prediction
    results["predict_seconds_rehrseg"] = time_prediction(REHRSegTrainer, REHRSegPredictor, rehrseg_plans, dataset_json,
                                                         args.device, inputs, os.path.join(work, "pred_rehrseg"))
    results["predict_ratio"] = results["predict_seconds_rehrseg"] / results["predict_seconds_nnunet"]
    results["command"] = "python benchmarks/trainer_speed.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
