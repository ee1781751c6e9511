"""Every checkpoint carries its SHA-256 (``NAME.pth.sha256``) and every load checks it (issue 36).

SR stages: a flipped byte or a truncation of checkpoint_latest.pth makes ``--continue`` resume from a verified
checkpoint_previous.pth (one line saying so); with both damaged it stops in one line and writes nothing.
REHRSeg folds (REHRSegTrainer.save_checkpoint / _readable_checkpoint, in-process on a tiny network): the same
for ``--c``, a damaged final checkpoint is refused, a checkpoint from before records loads unverified (said
once), and a full disk while a checkpoint is written is one line that keeps the last complete checkpoint.
The end-to-end ``--c`` / rehrseg_predict / export runs on a trained REHRSeg model are in test_guided.py.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch
from conftest import assert_ok, assert_one_line_error, run_script, tree_digest

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import file_sha256, hash_file, recorded_hash
from rehrseg_nnunet.sr.config import SRConfig, final_checkpoint, latest_checkpoint, previous_checkpoint
from rehrseg_nnunet.sr.stage_trainer import StageTrainer


def record_start(data: bytes, record: zipfile.ZipInfo) -> int:
    """Where the (stored, uncompressed) bytes of a zip record begin: after its local header."""
    name_length = int.from_bytes(data[record.header_offset + 26: record.header_offset + 28], "little")
    extra_length = int.from_bytes(data[record.header_offset + 28: record.header_offset + 30], "little")
    return record.header_offset + 30 + name_length + extra_length


def flip_a_tensor_byte(path: str) -> None:
    """Flip one byte inside the largest tensor record of a torch checkpoint: the file still loads (torch does
    not check the zip's CRC), only a value changes, which nothing but the SHA-256 can notice."""
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(open(path, "rb").read())
    data[record_start(data, record) + record.file_size // 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    torch.load(path, map_location="cpu", weights_only=False)  # still readable: only the hash tells


def flip_a_pickle_byte(path: str) -> None:
    """Flip the first byte of the checkpoint's pickle (``data.pkl``) whose flip makes unpickling raise what is no
    I/O or pickle error (MemoryError or OverflowError: a length read as gigabytes): bytes a reader must refuse
    unread, or at least catch whatever their unpickling raises."""
    with zipfile.ZipFile(path) as archive:
        record = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    data = open(path, "rb").read()
    start = record_start(data, record)
    for position in range(start, start + record.file_size):
        flipped = bytearray(data)
        flipped[position] ^= 0xFF
        try:
            torch.load(io.BytesIO(bytes(flipped)), map_location="cpu", weights_only=False)
        except (MemoryError, OverflowError):
            open(path, "wb").write(bytes(flipped))
            return
        except Exception:  # noqa: BLE001 - an ordinary unpickling error: try the next byte
            continue
    raise AssertionError(f"no byte of {path}'s data.pkl unpickles into MemoryError or OverflowError when flipped")


def truncate(path: str) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


DAMAGES = {"flipped": flip_a_tensor_byte, "flipped_pickle": flip_a_pickle_byte, "truncated": truncate}


# --- SR stages ---------------------------------------------------------------------------------------------
class _Sampler:
    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray]:
        return (rng.standard_normal((batch_size, 3)).astype(np.float32),)


def _config() -> SRConfig:
    return SRConfig(dataset="Dataset001_X", fingerprint="0" * 16, slice_axis=2, scale_factor=4,
                    lr_spacing=[1.0, 1.0, 4.0], hr_spacing=[1.0, 1.0, 1.0], channel_names={"0": "T1"},
                    label_values=[0, 1], preset="small", profile="gaussian", profile_fwhm=4.0, steps={"1a": 4}, seed=0)


def _tiny_trainer(folder: str, log) -> StageTrainer:
    torch.manual_seed(0)
    return StageTrainer(folder, "1a", torch.nn.Linear(3, 1), "plane", {}, _Sampler(), steps=4, batch_size=2,
                        learning_rate=1e-3, device=torch.device("cpu"), seed=0, save_every=2, log=log,
                        config=_config())


def _loss(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    return net(x).pow(2).mean(), {}


def test_sr_latest_and_previous_checkpoints_carry_their_sha256(tmp_path):
    folder = str(tmp_path)
    _tiny_trainer(folder, lambda _: None).run(_loss)
    for path in (latest_checkpoint(folder, "1a"), previous_checkpoint(folder, "1a")):
        assert recorded_hash(path) == file_sha256(path)
        assert open(hash_file(path)).read() == f"{file_sha256(path)}  {os.path.basename(path)}\n"  # sha256sum -c
    assert torch.load(previous_checkpoint(folder, "1a"), weights_only=False)["step"] == 2


@pytest.mark.bad_input
@pytest.mark.parametrize("damage", DAMAGES)
def test_sr_continue_uses_the_verified_previous_checkpoint_or_stops_in_one_line(tmp_path, damage):
    folder = str(tmp_path)
    _tiny_trainer(folder, lambda _: None).run(_loss)
    latest, previous = latest_checkpoint(folder, "1a"), previous_checkpoint(folder, "1a")
    good_previous = open(previous, "rb").read()
    DAMAGES[damage](latest)
    messages: list[str] = []
    trainer = _tiny_trainer(folder, messages.append)
    trainer.resume()
    assert trainer.step == 2, "resumed from the damaged latest checkpoint"
    why = "damaged (its SHA-256 differs from its record)" if damage != "truncated" else "truncated or unreadable"
    assert [m for m in messages if "resuming from" in m] == [
        f"stage 1a: {latest} is {why}; resuming from {previous} (step 2) instead"]
    # the verified previous checkpoint replaced the damaged latest one, record and all
    assert open(latest, "rb").read() == good_previous and recorded_hash(latest) == file_sha256(latest)
    assert not os.path.exists(previous) and not os.path.exists(hash_file(previous))
    # both damaged: one line naming the file and the fix, nothing written
    shutil.copyfile(latest, previous)
    shutil.copyfile(hash_file(latest), hash_file(previous))
    DAMAGES[damage](latest)
    DAMAGES[damage](previous)
    before = tree_digest(folder)
    with pytest.raises(RehrsegInputError) as error:
        _tiny_trainer(folder, messages.append).resume()
    message = str(error.value)
    assert "\n" not in message and "checkpoint_latest.pth" in message and "restart stage 1a" in message
    assert ("is damaged" if damage != "truncated" else "truncated or unreadable") in message
    assert tree_digest(folder) == before


@pytest.mark.bad_input
def test_sr_checkpoints_without_a_record_resume_unverified_said_once(tmp_path):
    folder = str(tmp_path)
    _tiny_trainer(folder, lambda _: None).run(_loss)
    latest = latest_checkpoint(folder, "1a")
    for path in (latest, previous_checkpoint(folder, "1a")):
        os.remove(hash_file(path))  # as written before checkpoints carried one
    messages: list[str] = []
    trainer = _tiny_trainer(folder, messages.append)
    trainer.resume()
    trainer.resume()
    assert trainer.step == 4
    assert [m for m in messages if "no SHA-256 record" in m] == [
        f"{latest} has no SHA-256 record (checkpoint_latest.pth.sha256; written before checkpoints carried one): "
        "loading it unverified"]


@pytest.mark.bad_input
def test_train_sr_continue_with_a_flipped_latest_checkpoint_never_trains_on_it(trained_sr_model, tmp_path):
    """Stage 1c of a copy unfinished again, its latest checkpoint (the last step's) byte-flipped: --continue
    stops in one line while there is no previous one, then resumes from a verified previous one."""
    model = str(tmp_path / "model")
    shutil.copytree(trained_sr_model["model"], model)
    os.remove(final_checkpoint(model, "1c"))
    latest, previous = latest_checkpoint(model, "1c"), previous_checkpoint(model, "1c")
    for path in (previous, hash_file(previous)):
        if os.path.exists(path):
            os.remove(path)
    good = latest + ".good"
    shutil.copyfile(latest, good)
    flip_a_tensor_byte(latest)
    args = ["-d", "502", "-o", model, "--steps", "4", "-device", "cpu", "--continue"]
    env = {"nnUNet_raw": trained_sr_model["raw"]}
    before = tree_digest(model)
    refused = run_script("rehrseg_train_sr", args, env)
    assert_one_line_error(refused, "rehrseg_train_sr: error:", "stage_1c/checkpoint_latest.pth", "is damaged",
                          "SHA-256", "--continue")
    assert tree_digest(model) == before, "a refused --continue wrote into the model folder"
    os.replace(good, previous)  # as keep_as_previous leaves it: the file and its SHA-256 record
    shutil.copyfile(hash_file(latest), hash_file(previous))
    step = torch.load(previous, weights_only=False)["step"]
    resumed = run_script("rehrseg_train_sr", args, env)
    assert_ok(resumed)
    log = open(os.path.join(model, "training_log.txt")).read()
    assert f"checkpoint_latest.pth is damaged (its SHA-256 differs from its record); resuming from {previous} " \
           f"(step {step}) instead" in log
    assert f"stage 1c: resumed from step {step} of 4" in log
    assert SRConfig.load(model).checkpoint_sha256["1c"] == file_sha256(final_checkpoint(model, "1c"))
    assert recorded_hash(latest) == file_sha256(latest)


# --- REHRSeg folds -----------------------------------------------------------------------------------------
def _rehrseg_trainer(folder, messages: list[str]):
    """A REHRSegTrainer with just what nnU-Net's save_checkpoint reads (a tiny network, no dataset)."""
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    from rehrseg_nnunet.training.trainer import REHRSegTrainer

    trainer = REHRSegTrainer.__new__(REHRSegTrainer)
    torch.manual_seed(0)
    trainer.network = torch.nn.Linear(3, 2)
    trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=0.1, momentum=0.9)
    trainer.local_rank, trainer.disable_checkpointing, trainer.is_ddp, trainer.grad_scaler = 0, False, False, None
    trainer.logger, trainer._best_ema, trainer.current_epoch = LocalLogger(), None, 0
    trainer.my_init_kwargs, trainer.inference_allowed_mirroring_axes = {}, None
    trainer.output_folder = str(folder)
    trainer.print_to_log_file = lambda *args, **kwargs: messages.append(" ".join(str(a) for a in args))
    return trainer


def _train_epochs(trainer, epochs: int) -> None:
    for _ in range(epochs):
        trainer.network.weight.data += 1
        trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_latest.pth"))
        trainer.current_epoch += 1


def test_rehrseg_checkpoints_carry_their_sha256_and_the_end_of_training_removes_latest_and_previous(tmp_path):
    trainer = _rehrseg_trainer(tmp_path, [])
    _train_epochs(trainer, 2)
    for name in ("checkpoint_best.pth", "checkpoint_final.pth"):
        trainer.save_checkpoint(str(tmp_path / name))
    for name in ("checkpoint_latest.pth", "checkpoint_previous.pth", "checkpoint_best.pth", "checkpoint_final.pth"):
        assert recorded_hash(str(tmp_path / name)) == file_sha256(str(tmp_path / name)), name
    assert torch.load(tmp_path / "checkpoint_previous.pth", weights_only=False)["current_epoch"] == 1
    os.remove(tmp_path / "checkpoint_latest.pth")  # as nnU-Net's on_train_end does
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    original, nnUNetTrainer.on_train_end = nnUNetTrainer.on_train_end, lambda self: None
    try:
        trainer.on_train_end()
    finally:
        nnUNetTrainer.on_train_end = original
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_best.pth", "checkpoint_best.pth.sha256",
                                            "checkpoint_final.pth", "checkpoint_final.pth.sha256"]


def assert_latest_refused_in_one_line(trainer, latest: str, problem: str, capsys) -> None:
    """``--c`` with a bad checkpoint_latest.pth and no verified previous or best one: exit 2, one line naming the
    file (``is {problem}...``) and the fix, nothing written in the fold."""
    fold = os.path.dirname(latest)
    before = tree_digest(fold)
    with pytest.raises(SystemExit) as stop:
        trainer._readable_checkpoint(latest)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"REHRSegTrainer: error: {latest} is {problem}")
    assert lines[0].endswith("train the fold again without --c.")
    assert tree_digest(fold) == before


@pytest.mark.bad_input
@pytest.mark.parametrize("damage", DAMAGES)
def test_rehrseg_continue_uses_the_verified_previous_checkpoint_or_stops_in_one_line(tmp_path, capsys, damage):
    messages: list[str] = []
    trainer = _rehrseg_trainer(tmp_path, messages)
    _train_epochs(trainer, 2)
    latest, previous = str(tmp_path / "checkpoint_latest.pth"), str(tmp_path / "checkpoint_previous.pth")
    good_previous = open(previous, "rb").read()
    DAMAGES[damage](latest)
    assert trainer._readable_checkpoint(latest) == latest
    problem = "damaged (its SHA-256" if damage != "truncated" else "truncated or unreadable ("
    assert len(messages) == 1 and messages[0].startswith(f"{latest} is {problem}")
    assert messages[0].endswith(f"resuming from {previous} instead (verified)")
    assert open(latest, "rb").read() == good_previous and recorded_hash(latest) == file_sha256(latest)
    assert not os.path.exists(previous), "the damaged latest checkpoint must never become a previous one"
    # no verified previous one: one line naming the file and the fix, nothing written
    DAMAGES[damage](latest)
    assert_latest_refused_in_one_line(trainer, latest, problem, capsys)


@pytest.mark.bad_input
@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_rehrseg_final_checkpoint_is_refused_pointing_at_the_best_one(tmp_path, capsys, damage):
    trainer = _rehrseg_trainer(tmp_path, [])
    for name in ("checkpoint_best.pth", "checkpoint_final.pth"):
        trainer.save_checkpoint(str(tmp_path / name))
    final = str(tmp_path / "checkpoint_final.pth")
    DAMAGES[damage](final)
    with pytest.raises(SystemExit):
        trainer._readable_checkpoint(final)
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith(f"REHRSegTrainer: error: {final} is ")
    assert line.endswith(f"delete it and run again with --c to resume from {tmp_path / 'checkpoint_best.pth'}.")


def test_a_rehrseg_checkpoint_without_a_record_loads_unverified_said_once(tmp_path):
    messages: list[str] = []
    trainer = _rehrseg_trainer(tmp_path, messages)
    _train_epochs(trainer, 1)
    latest = str(tmp_path / "checkpoint_latest.pth")
    os.remove(hash_file(latest))
    assert trainer._readable_checkpoint(latest) == latest
    assert trainer._readable_checkpoint(latest) == latest
    assert messages == [f"{latest} has no SHA-256 record (checkpoint_latest.pth.sha256; written before checkpoints "
                        "carried one): loading it unverified"]


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["checkpoint_latest.pth", "checkpoint_final.pth"])
def test_a_full_disk_while_a_rehrseg_checkpoint_is_written_is_one_line_and_keeps_the_last_one(tmp_path, capsys,
                                                                                           monkeypatch, name):
    trainer = _rehrseg_trainer(tmp_path, [])
    _train_epochs(trainer, 2)
    before = tree_digest(tmp_path)

    def disk_full(obj, handle, *args, **kwargs):
        with open(handle, "wb") as partial:
            partial.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    trainer.network.weight.data += 1
    with pytest.raises(SystemExit) as stop:
        trainer.save_checkpoint(str(tmp_path / name))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"REHRSegTrainer: error: could not write {name} in {tmp_path} (No space left on device); the "
                     f"last complete checkpoint there is kept: free disk space in {tmp_path}, then resume with "
                     "nnUNetv2_train ... --c."]
    assert tree_digest(tmp_path) == before, "a failed checkpoint write changed or left files"
    latest = str(tmp_path / "checkpoint_latest.pth")
    assert recorded_hash(latest) == file_sha256(latest)


@pytest.mark.bad_input
def test_a_damaged_pickle_without_a_record_is_unreadable_in_one_line_never_a_traceback(tmp_path, capsys):
    """Checkpoints from before records, a byte of their pickle flipped so that unpickling raises MemoryError or
    OverflowError: the SR stage resumes from its previous checkpoint, the REHRSeg fold stops in one line."""
    folder = str(tmp_path / "sr_model")
    _tiny_trainer(folder, lambda _: None).run(_loss)
    latest = latest_checkpoint(folder, "1a")
    for path in (latest, previous_checkpoint(folder, "1a")):
        os.remove(hash_file(path))
    flip_a_pickle_byte(latest)
    messages: list[str] = []
    trainer = _tiny_trainer(folder, messages.append)
    trainer.resume()
    assert trainer.step == 2
    assert [m for m in messages if "resuming from" in m] == [
        f"stage 1a: {latest} is truncated or unreadable; resuming from {previous_checkpoint(folder, '1a')} (step 2) "
        "instead"]
    fold = tmp_path / "fold_0"
    fold.mkdir()
    rehrseg = _rehrseg_trainer(fold, [])
    _train_epochs(rehrseg, 1)
    latest = str(fold / "checkpoint_latest.pth")
    os.remove(hash_file(latest))
    flip_a_pickle_byte(latest)
    capsys.readouterr()  # the SR stage's progress bars
    assert_latest_refused_in_one_line(rehrseg, latest, "unreadable (", capsys)


@pytest.mark.bad_input
def test_a_user_given_checkpoint_with_a_damaged_pickle_is_one_line(tmp_path):
    """-pretrained_weights (the LR nnU-Net) and --init-flavr read files a user names: a flipped pickle byte that
    unpickles into MemoryError or OverflowError is a one-line RehrsegInputError naming the file and the fix."""
    from rehrseg_nnunet.sr.flavr import read_flavr_checkpoint
    from rehrseg_nnunet.training.fine_tuning import load_lr_weights

    path = str(tmp_path / "checkpoint_final.pth")
    torch.save({"network_weights": torch.nn.Linear(3, 2).state_dict(), "current_epoch": 1}, path)
    flip_a_pickle_byte(path)
    with pytest.raises(RehrsegInputError) as error:
        load_lr_weights(torch.nn.Linear(3, 2), path)
    assert "\n" not in str(error.value) and str(error.value).startswith(f"{path} is not a readable nnU-Net checkpoint")
    assert "-pretrained_weights" in str(error.value)
    with pytest.raises(RehrsegInputError) as error:
        read_flavr_checkpoint(path)
    assert "\n" not in str(error.value) and str(error.value).startswith(f"{path} is not a readable torch checkpoint")
    assert "--init-flavr" in str(error.value)
