import hashlib
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def tree_digest(folder) -> dict:
    """SHA-256 of every file below ``folder``, by relative path."""
    digest = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                digest[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return digest


def console_script(name: str) -> str:
    """Path of an installed console script (next to this interpreter, else on PATH)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    path = candidate if os.path.isfile(candidate) else shutil.which(name)
    if path is None:
        pytest.fail(f"console script {name} is not installed; run pip install -e '.[test]'")
    return path


def run_script(name: str, args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([console_script(name), *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Non-zero exit, no traceback, and every fragment on the last line of stderr."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


#: geometry of the phantom HR volumes behind the session's SR model: rotated 20 degrees about y
COS20, SIN20 = 0.9396926207859084, 0.3420201433256687
PHANTOM_DIRECTION = (COS20, 0.0, SIN20, 0.0, 1.0, 0.0, -SIN20, 0.0, COS20)
PHANTOM_ORIGIN = (5.0, -3.0, 12.0)


def phantom_workspace(root, trained_sr_model) -> dict:
    """nnU-Net folders below ``root`` with the session's phantom dataset (502) and its SR model where
    rehrseg_train_sr puts it by default (so datasets refer to it relative to nnUNet_results).

    Returns:
        ``raw``, ``results``, ``sr_model`` paths, ``env`` (nnU-Net's variables, the trainer shim) and
        ``train_env`` (augmentation in the training process, which breaks planning).
    """
    from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

    raw, results = root / "raw", root / "results"
    shutil.copytree(os.path.join(trained_sr_model["raw"], "Dataset502_Phantom"), raw / "Dataset502_Phantom")
    sr_model = results / "Dataset502_Phantom" / "rehrseg_sr"
    shutil.copytree(trained_sr_model["model"], sr_model)
    env = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(root / "preprocessed"), "nnUNet_results": str(results),
           "nnUNet_def_n_proc": "1", "nnUNet_compile": "0", "nnUNet_extTrainer": EXT_TRAINER_FOLDER}
    return {"raw": raw, "results": results, "sr_model": sr_model, "env": env,
            "train_env": {**env, "nnUNet_n_proc_DA": "0"}}


@pytest.fixture(scope="session")
def trained_sr_model(tmp_path_factory):
    """A tiny SR model trained through the console script on a two-channel, three-label phantom dataset."""
    from phantoms import write_thick_slice_dataset

    root = tmp_path_factory.mktemp("sr_model")
    raw = root / "raw"
    write_thick_slice_dataset(str(raw), dataset_id=502, channels=2, num_cases=2, direction=PHANTOM_DIRECTION,
                              origin=PHANTOM_ORIGIN)
    model = root / "model"
    result = run_script("rehrseg_train_sr", ["-d", "502", "-o", str(model), "--steps", "4", "-device", "cpu"],
                        {"nnUNet_raw": str(raw)})
    assert result.returncode == 0, result.stderr[-2000:]
    return {"raw": str(raw), "model": str(model), "stdout": result.stdout, "stderr": result.stderr}
