import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


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


@pytest.fixture(scope="session")
def trained_sr_model(tmp_path_factory):
    """A tiny SR model trained through the console script on a two-channel phantom dataset."""
    from phantoms import write_thick_slice_dataset

    root = tmp_path_factory.mktemp("sr_model")
    raw = root / "raw"
    write_thick_slice_dataset(str(raw), dataset_id=502, channels=2, num_cases=2)
    model = root / "model"
    result = run_script("rehrseg_train_sr", ["-d", "502", "-o", str(model), "--steps", "4", "-device", "cpu"],
                        {"nnUNet_raw": str(raw)})
    assert result.returncode == 0, result.stderr[-2000:]
    return {"raw": str(raw), "model": str(model), "stdout": result.stdout, "stderr": result.stderr}
