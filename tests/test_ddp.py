"""REHRSeg under nnU-Net's DistributedDataParallel path (``nnUNetv2_train ... -num_gpus N``), run on CPU: two
processes, gloo backend, world size 2, fine-tuned from a stock LR checkpoint through ``-pretrained_weights``.

Each rank runs nnU-Net's ``run_ddp`` steps (setup_ddp, get_trainer_from_args, maybe_load_checkpoint, run_training,
perform_actual_validation, cleanup_ddp) with two substitutions only, made here and not in the product: the gloo
backend instead of nccl, and the CPU instead of ``cuda:<rank>`` (nnUNetTrainer.__init__ forces the GPU under DDP
and wraps the network with ``device_ids=[rank]``, so the device is set back after construction and the DDP name in
nnU-Net's trainer module drops ``device_ids``).

The first run is interrupted after epoch 0 (as a crash would), the second continues it with ``--c``, trains the
last epoch and validates with the cases split over the ranks. This file is also the ranks' program:
``python tests/test_ddp.py SPEC.json RANK`` (and ``python tests/test_ddp.py SPEC.json load`` for the
single-process checks).
"""

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

WORLD_SIZE = 2
TRAINER = "REHRSegTrainer_hrStem_debug"  # 2 epochs of 3 iterations, final validation kept; guided: it carries SR
PLANS = "REHRSegPlans"
DATASET = "618"
RANK_TIMEOUT = 600  # seconds: a hung collective fails the test instead of blocking CI


# --- the ranks' program --------------------------------------------------------------------------------------------
class Interrupted(Exception):
    """Raised after the epoch the spec stops at, as a crash would stop the training."""


def _audit_writes(fold_folder: str, events: list) -> None:
    """Record every write, rename, link and removal of this process below the fold folder (validation exports
    aside: both ranks write those, from their export pools)."""
    fold_folder = os.path.realpath(fold_folder)
    validation = os.path.join(fold_folder, "validation")

    def below(path) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return None
        path = os.path.realpath(os.fspath(path))
        if path.startswith(fold_folder + os.sep) and not path.startswith(validation + os.sep):
            return os.path.relpath(path, fold_folder)
        return None

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and (name := below(path)):
                events.append(("open", name))
        elif event in ("os.rename", "os.link", "shutil.copyfile"):
            for path in args[:2]:
                if name := below(path):
                    events.append((event, name))
        elif event == "os.remove":
            if name := below(args[0]):
                events.append((event, name))

    sys.addaudithook(hook)


def _run_rank(spec: dict, rank: int) -> None:
    """nnunetv2.run.run_training.run_ddp for one rank, with gloo and the CPU."""
    events: list = []
    _audit_writes(spec["fold_folder"], events)
    import torch
    import torch.distributed as dist
    from nnunetv2.run.run_training import cleanup_ddp, get_trainer_from_args, maybe_load_checkpoint
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
    from torch.nn.parallel import DistributedDataParallel

    from rehrseg_nnunet.training.fine_tuning import unwrap

    class CpuDDP(DistributedDataParallel):
        """nnU-Net's DDP(network, device_ids=[local_rank]) without the GPU id."""

        def __init__(self, module, device_ids=None, **kwargs):
            super().__init__(module, **kwargs)

    trainer_module.DDP = CpuDDP
    torch.set_num_threads(1)
    # setup_ddp(rank, world_size) with gloo; torch.cuda.set_device is skipped (no GPU)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{spec['port']}", rank=rank,
                            world_size=WORLD_SIZE)
    trainer = get_trainer_from_args(DATASET, "3d_fullres", "all", TRAINER, PLANS, spec["c"])
    assert trainer.is_ddp and trainer.device == torch.device("cuda", rank)  # what nnU-Net chose: substituted
    trainer.device = torch.device("cpu")
    trainer.grad_scaler = None  # nnU-Net made a CUDA GradScaler for cuda:rank
    record = {"rank": rank, "pid": os.getpid(), "local_losses": [], "messages": []}

    original_step, original_print, original_epoch_end = trainer.train_step, trainer.print_to_log_file, \
        trainer.on_epoch_end

    def train_step(batch):
        out = original_step(batch)
        record["local_losses"].append(float(out["loss"]))
        return out

    def print_to_log_file(*args, **kwargs):
        record["messages"].append(" ".join(str(a) for a in args))
        return original_print(*args, **kwargs)

    def on_epoch_end():
        original_epoch_end()
        if spec.get("stop_after_epoch") is not None and trainer.current_epoch > spec["stop_after_epoch"]:
            raise Interrupted

    trainer.train_step, trainer.print_to_log_file, trainer.on_epoch_end = train_step, print_to_log_file, on_epoch_end
    maybe_load_checkpoint(trainer, spec["c"], False, spec.get("pretrained_weights"))
    try:
        trainer.run_training()
        # with the threads nnUNetv2_train gives a CPU run (run_training_entry), so that the single-process --val of
        # the test sums in the same order; probabilities too (.npz), as --val --npz writes them
        torch.set_num_threads(multiprocessing.cpu_count())
        trainer.perform_actual_validation(True)
        record["finished"] = True
    except Interrupted:
        record["finished"] = False
    record["lr"] = trainer.optimizer.param_groups[0]["lr"]
    record["initial_lr"] = trainer.initial_lr
    record["network_is_ddp"] = isinstance(trainer.network, DistributedDataParallel)
    torch.save({k: v.detach().cpu() for k, v in unwrap(trainer.network).state_dict().items()},
               os.path.join(spec["record_folder"], f"weights_rank{rank}.pt"))
    dist.barrier()
    cleanup_ddp()
    record["events"] = sorted(set(events))
    with open(os.path.join(spec["record_folder"], f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)


def _load_single_process(spec: dict) -> None:
    """Each checkpoint into a single-process REHRSegTrainer on the CPU; its carried SR model decoded."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from rehrseg_nnunet.training.trainer import REHRSegTrainer

    results = {}
    for path in spec["checkpoints"]:
        trainer = get_trainer_from_args(DATASET, "3d_fullres", "all", TRAINER, PLANS, False, torch.device("cpu"))
        assert isinstance(trainer, REHRSegTrainer) and not trainer.is_ddp
        trainer.load_checkpoint(path)
        stored = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]
        own = trainer._unwrapped().state_dict()
        payload = trainer._unwrapped().carried_sr.payload(path)
        results[path] = {"same_keys": sorted(own) == sorted(stored),
                         "equal": all(torch.equal(own[k].cpu(), stored[k].cpu()) for k in stored),
                         "carried_sha256": payload["sha256"], "stage": payload["stage"],
                         "initial_lr": trainer.initial_lr, "epoch": trainer.current_epoch}
    with open(os.path.join(spec["record_folder"], "single.json"), "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    with open(sys.argv[1]) as spec_file:
        _spec = json.load(spec_file)
    if sys.argv[2] == "load":
        _load_single_process(_spec)
    else:
        _run_rank(_spec, int(sys.argv[2]))
    sys.exit(0)


# --- the test ------------------------------------------------------------------------------------------------------
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from conftest import assert_ok, copy_pseudohr, phantom_workspace, run_script  # noqa: E402
from test_fine_tuning import logged_learning_rates, stock_lr_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(spec: dict, env: dict, record_folder) -> list[dict]:
    """Both ranks side by side; each must exit 0 within RANK_TIMEOUT."""
    os.makedirs(record_folder, exist_ok=True)
    spec = {**spec, "port": free_port(), "record_folder": str(record_folder)}
    spec_file = os.path.join(record_folder, "spec.json")
    with open(spec_file, "w") as handle:
        json.dump(spec, handle)
    processes = [subprocess.Popen([sys.executable, __file__, spec_file, str(rank)], env={**os.environ, **env},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in range(WORLD_SIZE)]
    deadline, outputs = time.monotonic() + RANK_TIMEOUT, []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"a rank did not finish within {RANK_TIMEOUT} s")
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank}:\n{output[-4000:]}"
    records = []
    for rank in range(WORLD_SIZE):
        with open(os.path.join(record_folder, f"rank{rank}.json")) as handle:
            records.append(json.load(handle))
    return records


def rank_weights(record_folder, rank: int) -> dict:
    return torch.load(os.path.join(record_folder, f"weights_rank{rank}.pt"), weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing[:5]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, trained_sr_model, pseudohr_template):
    root = tmp_path_factory.mktemp("ddp")
    workspace = phantom_workspace(root, trained_sr_model)
    results, env, train_env = workspace["results"], workspace["env"], workspace["train_env"]
    copy_pseudohr(pseudohr_template, workspace, DATASET)  # made, planned and preprocessed with the source's plans
    checkpoint = stock_lr_checkpoint(env, results)
    lr_plans = os.path.join(os.path.dirname(os.path.dirname(checkpoint)), "plans.json")
    assert_ok(run_script("rehrseg_plan", ["-d", DATASET, "--lr_plans", lr_plans, "-np", "1"], env))
    model = results / "Dataset618_PhantomPseudoHR" / f"{TRAINER}__{PLANS}__3d_fullres"
    fold = model / "fold_all"
    common = {"fold_folder": str(fold)}
    ddp_env = {**train_env, "OMP_NUM_THREADS": "1"}
    out = {"root": root, "env": env, "train_env": train_env, "checkpoint": checkpoint, "model": model, "fold": fold,
           "sr_model": workspace["sr_model"]}
    # run 1: fine-tuning from the LR checkpoint, interrupted after epoch 0
    out["first"] = run_ranks({**common, "c": False, "pretrained_weights": checkpoint, "stop_after_epoch": 0}, ddp_env,
                             root / "records_first")
    out["first_weights"] = [rank_weights(root / "records_first", r) for r in range(WORLD_SIZE)]
    out["after_first"] = sorted(os.listdir(fold))
    out["lock_after_first"] = (fold / ".rehrseg_training.lock").read_text() if (
        fold / ".rehrseg_training.lock").is_file() else None
    out["log_first"] = "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    kept = root / "kept_checkpoints"
    kept.mkdir()
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth"):
        if (fold / name).is_file():
            shutil.copy(fold / name, kept / f"first_{name}")
    for log in fold.glob("training_log_*.txt"):
        log.rename(kept / log.name)
    # run 2: --c, the last epoch and the final validation split over the ranks
    out["second"] = run_ranks({**common, "c": True}, ddp_env, root / "records_second")
    out["second_weights"] = [rank_weights(root / "records_second", r) for r in range(WORLD_SIZE)]
    out["after_second"] = sorted(os.listdir(fold))
    out["log_second"] = "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    out["kept"] = kept
    return out


def test_lr_weights_saved_by_a_wrapped_network_fine_tune_as_plain_ones(tmp_path):
    """-pretrained_weights from an LR model saved with DDP's ``module.`` or torch.compile's ``_orig_mod.`` names
    (a training outside nnU-Net's save_checkpoint): every inner U-Net tensor arrives."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from test_rehrseg_network import UNET_KWARGS, build

    from rehrseg_nnunet.training.fine_tuning import inner_unet_keys, load_lr_weights

    torch.manual_seed(1)
    stock = PlainConvUNet(**UNET_KWARGS, deep_supervision=True).state_dict()
    checkpoint = tmp_path / "checkpoint_final.pth"
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):
        torch.save({"network_weights": {prefix + k: v for k, v in stock.items()}}, checkpoint)
        network = build(4)
        assert not all(torch.equal(network.state_dict()[k], stock[k]) for k in inner_unet_keys(stock))
        loaded, total = load_lr_weights(network, str(checkpoint))
        assert loaded == total == len(inner_unet_keys(stock))
        state = network.state_dict()
        assert all(torch.equal(state[k], stock[k]) for k in inner_unet_keys(stock)), prefix


def test_ranks_hold_identical_weights_after_different_batches(ddp):
    for run in ("first", "second"):
        records, weights = ddp[run], ddp[f"{run}_weights"]
        assert all(r["network_is_ddp"] for r in records)
        assert_same_weights(weights[0], weights[1])
        # the ranks saw different batches (their local losses differ), so equal weights need synchronised gradients
        losses = [r["local_losses"] for r in records]
        assert len(losses[0]) == len(losses[1]) > 0
        assert any(a != b for a, b in zip(*losses, strict=True)), losses
    assert len(ddp["first"][0]["local_losses"]) == 3 and len(ddp["second"][0]["local_losses"]) == 3
    # training moved the fine-tuned weights away from the LR checkpoint's
    stock = torch.load(ddp["checkpoint"], weights_only=False)["network_weights"]
    tuned = ddp["second_weights"][0]
    shared = [k for k in stock if k in tuned and ".seg_layers." not in k and stock[k].dtype.is_floating_point]
    assert shared and any(not torch.equal(stock[k], tuned[k]) for k in shared)
    # the interrupted run's weights are its checkpoint_latest's
    latest = torch.load(ddp["kept"] / "first_checkpoint_latest.pth", weights_only=False)
    assert latest["current_epoch"] == 1
    assert_same_weights(latest["network_weights"], ddp["first_weights"][0])
    final = torch.load(ddp["fold"] / "checkpoint_final.pth", weights_only=False)
    assert_same_weights(final["network_weights"], ddp["second_weights"][1])


def test_rank_0_alone_writes_checkpoints_log_and_lock(ddp):
    first, second = ddp["first"], ddp["second"]
    for run in (first, second):
        assert run[1]["events"] == [], run[1]["events"]  # rank 1 wrote, renamed, linked and removed nothing
    written = {name for _, name in first[0]["events"]}
    assert ".rehrseg_training.lock" in written
    assert {"checkpoint_latest.pth", "checkpoint_best.pth"} <= written
    assert any(name.startswith("training_log_") for name in written)
    # the crashed run left its lock, naming rank 0's process (gone now: --c took the fold over)
    assert ddp["lock_after_first"] == str(first[0]["pid"])
    assert "checkpoint_latest.pth" in ddp["after_first"]
    written = {name for _, name in second[0]["events"]}
    assert {".rehrseg_training.lock", "checkpoint_final.pth"} <= written
    # a finished training removes its lock, checkpoint_previous and (nnU-Net) checkpoint_latest
    after = ddp["after_second"]
    assert "checkpoint_final.pth" in after and "checkpoint_best.pth" in after
    for gone in (".rehrseg_training.lock", "checkpoint_previous.pth", "checkpoint_latest.pth"):
        assert gone not in after
    assert not [name for name in after if "tmp" in name or name.endswith(".partial")], after
    # one log per run, by rank 0 (rank 1 logs nothing, but its trainer says the same things)
    assert len(list(ddp["kept"].glob("training_log_*.txt"))) == 1
    assert len(list(ddp["fold"].glob("training_log_*.txt"))) == 1
    assert any("predicting" in m for m in second[1]["messages"])


def test_every_checkpoint_loads_single_process_carrying_the_checked_sr_model(ddp):
    from rehrseg_nnunet.sr.carried import encode_bundle, sr_model_payload

    checkpoints = [str(ddp["kept"] / "first_checkpoint_latest.pth"), str(ddp["kept"] / "first_checkpoint_best.pth"),
                   str(ddp["fold"] / "checkpoint_final.pth"), str(ddp["fold"] / "checkpoint_best.pth")]
    records = ddp["root"] / "records_single"
    records.mkdir(exist_ok=True)
    spec_file = records / "spec.json"
    spec_file.write_text(json.dumps({"checkpoints": checkpoints, "record_folder": str(records)}))
    result = subprocess.run([sys.executable, __file__, str(spec_file), "load"], env={**os.environ, **ddp["env"]},
                            capture_output=True, text=True, timeout=RANK_TIMEOUT)
    assert_ok(result)
    loaded = json.loads((records / "single.json").read_text())
    dataset_json = json.loads((ddp["root"] / "raw" / "Dataset618_PhantomPseudoHR" / "dataset.json").read_text())
    contract = dataset_json["rehrseg"]
    stage = contract.get("sr_stage") or "1c"
    assert contract["sr_checkpoint_sha256"]
    single_process_bundle = encode_bundle(sr_model_payload(str(ddp["sr_model"]), stage,
                                                           contract["sr_checkpoint_sha256"]))
    for path in checkpoints:
        entry = loaded[path]
        assert entry["same_keys"] and entry["equal"], path
        assert entry["stage"] == stage and entry["carried_sha256"][stage] == contract["sr_checkpoint_sha256"]
        assert entry["initial_lr"] == 0.001  # the fine-tuning rate, restored from init_args
        stored = torch.load(path, weights_only=False)
        assert not any(k.startswith("module.") for k in stored["network_weights"])
        # the bytes a single-process training carries
        assert torch.equal(stored["network_weights"]["carried_sr.bundle"], single_process_bundle)
    assert loaded[checkpoints[0]]["epoch"] == 1 and loaded[checkpoints[2]]["epoch"] == 2


def test_continue_keeps_the_fine_tuning_rate(ddp):
    first_rates = logged_learning_rates(ddp["log_first"])
    second_rates = logged_learning_rates(ddp["log_second"])
    assert first_rates == [0.001]
    assert "loaded" in ddp["log_first"] and "inner U-Net tensors" in ddp["log_first"]
    # epoch 1 of the 1e-3 poly schedule over 2 epochs (nnU-Net logs 5 decimals), not epoch 1 of nnU-Net's 1e-2 one
    assert len(second_rates) == 1 and np.isclose(second_rates[0], 1e-3 * 0.5 ** 0.9, rtol=0, atol=1e-5)
    for record in ddp["second"]:
        assert record["initial_lr"] == 0.001 and record["finished"]
    final = torch.load(ddp["fold"] / "checkpoint_final.pth", weights_only=False)
    assert final["init_args"]["rehrseg_fine_tuning"]["initial_lr"] == 0.001
    assert final["current_epoch"] == 2


def test_validation_splits_the_cases_and_matches_a_single_process_prediction(ddp):
    """The two ranks' HR exports against nnU-Net's single-process validation (``nnUNetv2_train … --val --npz``) of
    the same checkpoint_final: the same pseudo-HR inputs (label-guided SR for training cases, which rehrseg_predict
    cannot use on unlabelled inputs), the same predictor and the same number of threads (with one thread against
    two, 0.4 % of the probabilities differed, by up to 1.2e-3), so the same probabilities and labels on the exact HR
    grid."""
    predicted = [sorted(m.split()[1] for m in record["messages"] if m.startswith("predicting "))
                 for record in ddp["second"]]
    assert predicted == [["case000"], ["case001"]]  # val_keys[rank::world_size]
    validation = ddp["fold"] / "validation"
    by_ranks = ddp["root"] / "validation_by_two_ranks"
    shutil.copytree(validation, by_ranks)
    assert len(json.loads((by_ranks / "summary.json").read_text())["metric_per_case"]) == 2
    shutil.rmtree(validation)
    assert_ok(run_script("nnUNetv2_train", [DATASET, "3d_fullres", "all", "-tr", TRAINER, "-p", PLANS, "-device", "cpu",
                                            "--val", "--npz"], ddp["train_env"]))
    lr_images = ddp["root"] / "raw" / "Dataset502_Phantom" / "imagesTr"
    for case in ("case000", "case001"):
        ours = sitk.ReadImage(str(by_ranks / f"{case}.nii.gz"))
        theirs = sitk.ReadImage(str(validation / f"{case}.nii.gz"))
        lr = sitk.ReadImage(str(lr_images / f"{case}_0000.nii.gz"))
        assert ours.GetSize() == theirs.GetSize() and ours.GetSize()[2] == 4 * lr.GetSize()[2]  # the HR grid
        assert ours.GetSpacing() == theirs.GetSpacing() and ours.GetOrigin() == theirs.GetOrigin()
        assert ours.GetDirection() == theirs.GetDirection()
        probabilities = [np.load(folder / f"{case}.npz")["probabilities"] for folder in (by_ranks, validation)]
        assert probabilities[0].shape == (3, *sitk.GetArrayViewFromImage(ours).shape)
        assert np.array_equal(*probabilities)
        assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
