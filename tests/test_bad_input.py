"""Write failures and unusable output paths, through the console scripts: one line, no partial file.

The other bad-input scenarios live beside the command they exercise (test_train_sr_cli, test_make_pseudohr,
test_evaluate, test_rehrseg_pipeline, test_fine_tuning); every one is marked ``bad_input``, so
``pytest -m bad_input`` runs and counts them all.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import assert_one_line_error, console_script, run_script, tree_digest
from phantoms import write_thick_slice_dataset

pytestmark = pytest.mark.bad_input


def limited(command: list[str], env: dict, blocks: int = 40) -> subprocess.CompletedProcess:
    """``command`` under ``ulimit -f blocks`` (512-byte blocks): any larger file write fails part-way."""
    line = " ".join(command)
    return subprocess.run(["bash", "-c", f"ulimit -f {blocks} && exec {line}"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture()
def raw(tmp_path):
    write_thick_slice_dataset(str(tmp_path / "raw"), dataset_id=521, num_cases=2)
    return tmp_path / "raw"


def test_train_sr_write_failure_is_one_line_leaves_no_partial_file_and_continue_completes(raw, tmp_path):
    model = tmp_path / "model"
    args = ["-d", "521", "-o", str(model), "--steps", "4", "-device", "cpu"]
    before = tree_digest(raw)
    result = limited([console_script("rehrseg_train_sr"), *args], {"nnUNet_raw": str(raw)})
    assert_one_line_error(result, "rehrseg_train_sr: error: could not write", "checkpoint_latest.pth", "ulimit -f")
    assert not list(model.rglob("*.tmp")), "a temporary file survived the failed write"
    assert not list(model.rglob("*.pth")), "a checkpoint looks complete after a failed write"
    assert not list(model.rglob("*.sha256")), "a SHA-256 record outlived the checkpoint write that failed"
    assert tree_digest(raw) == before
    rerun = run_script("rehrseg_train_sr", [*args, "--continue"], {"nnUNet_raw": str(raw)})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for stage in ("1a", "1b", "1c"):
        checkpoint = torch.load(model / f"stage_{stage}" / "checkpoint_final.pth", map_location="cpu",
                                weights_only=False)
        assert checkpoint["step"] == 4
    assert not list(model.rglob("*.tmp"))


def test_train_sr_output_below_a_file_is_one_line(raw, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    result = run_script("rehrseg_train_sr", ["-d", "521", "-o", str(tmp_path / "a_file" / "model"), "--steps", "2",
                                             "-device", "cpu"], {"nnUNet_raw": str(raw)})
    assert_one_line_error(result, "rehrseg_train_sr: error:", "a_file/model", "Not a directory")


def test_evaluate_output_below_a_file_is_one_line(tmp_path):
    folders = {}
    for name in ("ref", "pred"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        label = sitk.GetImageFromArray(np.pad(np.ones((3, 4, 4), np.uint8), 2))
        sitk.WriteImage(label, str(folders[name] / "a.nii.gz"))
    (tmp_path / "a_file").write_text("not a folder")
    result = run_script("rehrseg_evaluate", ["-ref", str(folders["ref"]), "-pred", str(folders["pred"]),
                                             "-o", str(tmp_path / "a_file" / "summary.json")], {})
    assert_one_line_error(result, "rehrseg_evaluate: error:", "a_file")
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["a_file"]


def test_make_pseudohr_output_path_taken_by_a_file_is_one_line(tmp_path, trained_sr_model):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(os.path.join(trained_sr_model["raw"], "Dataset502_Phantom"), raw / "Dataset502_Phantom")
    (raw / "Dataset607_PhantomPseudoHR").write_text("a file where the output dataset would go")
    before = tree_digest(raw)
    result = run_script("rehrseg_make_pseudohr", ["-d", "502", "-o", "607", "-m", trained_sr_model["model"],
                                                  "-device", "cpu"], {"nnUNet_raw": str(raw)})
    assert_one_line_error(result, "rehrseg_make_pseudohr: error:", "Dataset607_PhantomPseudoHR")
    assert tree_digest(raw) == before


@pytest.mark.parametrize("problem, fragments", [
    ("invalid_json", ["dataset.json", "not valid JSON"]),
    ("labels_as_list", ["dataset.json", "labels"]),
    ("truncated_image", ["case001_0000.nii.gz", "truncated"]),
])
def test_train_sr_refuses_a_broken_dataset_with_one_line_and_writes_nothing(raw, tmp_path, problem, fragments):
    import json

    folder = raw / "Dataset521_Phantom"
    if problem == "invalid_json":
        (folder / "dataset.json").write_text('{"labels": {"background": 0,')
    elif problem == "labels_as_list":
        dataset_json = json.loads((folder / "dataset.json").read_text())
        dataset_json["labels"] = list(dataset_json["labels"])
        (folder / "dataset.json").write_text(json.dumps(dataset_json))
    else:
        path = folder / "imagesTr" / "case001_0000.nii.gz"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # SimpleITK would read it zero-filled
    before = tree_digest(raw)
    result = run_script("rehrseg_train_sr", ["-d", "521", "-o", str(tmp_path / "model"), "--steps", "2",
                                             "-device", "cpu"], {"nnUNet_raw": str(raw)})
    assert_one_line_error(result, "rehrseg_train_sr: error:", *fragments)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "model").exists()
    assert tree_digest(raw) == before


def test_train_sr_ctrl_c_says_how_to_resume_and_continue_finishes(raw, tmp_path):
    import signal
    import time

    model = tmp_path / "model"
    args = ["-d", "521", "-o", str(model), "--steps", "6", "200", "6", "--save-every", "2", "-device", "cpu"]
    # a shell that starts CI in the background (no job control) hands its children SIGINT *ignored*, and Python
    # keeps it ignored: give the command the default disposition a terminal's Ctrl-C meets
    process = subprocess.Popen([console_script("rehrseg_train_sr"), *args], env={**os.environ, "nnUNet_raw": str(raw)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    latest = model / "stage_1b" / "checkpoint_latest.pth"
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "rehrseg_train_sr: interrupted; run it again with --continue to resume."
    assert not list(model.rglob("*.tmp"))
    assert not (model / "stage_1c").exists() or not (model / "stage_1c" / "checkpoint_final.pth").exists()
    rerun = run_script("rehrseg_train_sr", [*args, "--continue"], {"nnUNet_raw": str(raw)})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (model / "stage_1c" / "checkpoint_final.pth").is_file()


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    from rehrseg_nnunet.file_writing import remove_stale_temporary_files

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stage = tmp_path / "stage_1b"
    stage.mkdir()
    stale = stage / f"checkpoint_latest.pth.{dead.pid}.tmp"
    live = stage / f"checkpoint_latest.pth.{os.getpid()}.tmp"
    other = stage / "notes.1.txt"
    for path in (stale, live, other):
        path.write_bytes(b"x")
    assert remove_stale_temporary_files(str(tmp_path)) == 1
    assert not stale.exists() and live.exists() and other.exists()


def test_keep_as_previous_after_a_kill_between_link_and_replace_leaves_no_temporary(tmp_path):
    """A kill after the previous checkpoint was linked but before the latest was replaced leaves both names on one
    file; the next save must not leave its own temporary behind (rename(2) is a no-op for two links to one file)."""
    from rehrseg_nnunet.file_writing import keep_as_previous

    latest, previous = tmp_path / "checkpoint_latest.pth", tmp_path / "checkpoint_previous.pth"
    latest.write_bytes(b"step 4")
    keep_as_previous(str(latest), str(previous))  # ... and the kill lands here
    keep_as_previous(str(latest), str(previous))  # the resumed run's first save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth", "checkpoint_previous.pth"]
    assert previous.read_bytes() == b"step 4"
    latest.unlink()
    latest.write_bytes(b"step 6")  # a new latest: previous must now become a copy of it
    keep_as_previous(str(latest), str(previous))
    assert previous.read_bytes() == b"step 6"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth", "checkpoint_previous.pth"]
