import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # one compute thread per pytest-xdist worker, in this process and in every console script it starts: two
    # workers of two threads each on 2 cores make OpenMP's threads wait on each other (an in-process SR training
    # took 12x as long). Set before torch is imported, which reads it.
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # imported by a plugin first: it has read the variable already
        sys.modules["torch"].set_num_threads(1)


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


#: the longest modules first (longest-processing-time-first order): pytest-xdist's workers take whole modules in
#: collection order, so its two workers end together instead of one running the quick start alone at the end
LONGEST_FIRST = ("test_quickstart.py", "test_guided.py", "test_fine_tuning.py", "test_rehrseg_pipeline.py",
                 "test_ddp.py", "test_make_pseudohr.py", "test_parts.py")


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: the rest keep their order


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


#: the dataset id of the session's pseudo-HR template; modules copy it under ids of their own
TEMPLATE_ID = "600"
#: the flags every phantom REHRSeg plan in the suite uses: a 16 x 32 x 32 HR patch, 8 -> 32 features
PHANTOM_PLAN_FLAGS = ["--patch_size", "16", "32", "32", "--base_features", "8", "--max_features", "32", "-np", "1"]


@pytest.fixture(scope="session")
def pseudohr_template(tmp_path_factory, trained_sr_model) -> dict:
    """The session SR model's pseudo-HR dataset as a user makes it, once for the suite: ``rehrseg_make_pseudohr``,
    stock planning and preprocessing of it and of its source 502, then ``rehrseg_plan``. Modules copy it with
    :func:`copy_pseudohr` instead of running the same three console scripts again.

    Returns:
        ``raw`` and ``preprocessed`` roots, and ``stock``: the pseudo-HR dataset's preprocessed folder as stock
        nnU-Net left it, before ``rehrseg_plan``.
    """
    root = tmp_path_factory.mktemp("pseudohr_template")
    workspace = phantom_workspace(root, trained_sr_model)
    env = workspace["env"]
    assert_ok(run_script("rehrseg_make_pseudohr", ["-d", "502", "-o", TEMPLATE_ID, "-device", "cpu"], env))
    assert_ok(run_script("nnUNetv2_plan_and_preprocess", ["-d", "502", TEMPLATE_ID, "-c", "3d_fullres", "-np", "1",
                                                          "-npfp", "1"], env))
    preprocessed = root / "preprocessed"
    stock = root / "stock" / f"Dataset{TEMPLATE_ID}_PhantomPseudoHR"
    shutil.copytree(preprocessed / stock.name, stock)
    assert_ok(run_script("rehrseg_plan", ["-d", TEMPLATE_ID, *PHANTOM_PLAN_FLAGS], env))
    return {"raw": workspace["raw"], "preprocessed": preprocessed, "stock": stock}


def copy_pseudohr(template: dict, workspace: dict, dataset_id: str, rehrseg_planned: bool = True,
                  raw: bool = True) -> None:
    """The template's pseudo-HR dataset as ``Dataset<dataset_id>_PhantomPseudoHR`` in ``workspace`` (raw and
    preprocessed, file times kept), with its source's preprocessed ``Dataset502_Phantom``.

    Args:
        template: what :func:`pseudohr_template` returns.
        workspace: what :func:`phantom_workspace` returns.
        dataset_id: the id the copy takes.
        rehrseg_planned: copy the preprocessed folder after ``rehrseg_plan`` (else as stock nnU-Net left it).
        raw: copy the raw folder too (else the workspace made it).
    """
    name = f"Dataset{dataset_id}_PhantomPseudoHR"
    preprocessed = workspace["raw"].parent / "preprocessed"
    if raw:
        shutil.copytree(template["raw"] / f"Dataset{TEMPLATE_ID}_PhantomPseudoHR", workspace["raw"] / name)
    source = template["preprocessed"] / template["stock"].name if rehrseg_planned else template["stock"]
    shutil.copytree(source, preprocessed / name)
    shutil.copytree(template["preprocessed"] / "Dataset502_Phantom", preprocessed / "Dataset502_Phantom",
                    dirs_exist_ok=True)
    for plans in (preprocessed / name).glob("*Plans.json"):  # the one place a dataset's files name it
        content = json.loads(plans.read_text())
        content["dataset_name"] = name
        plans.write_text(json.dumps(content, indent=4))
        shutil.copystat(source / plans.name, plans)
