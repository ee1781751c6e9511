"""``pip install .`` and ``pip install -e .`` let nnU-Net find REHRSegTrainer with no ``export nnUNet_extTrainer``.

Each install goes into a fresh venv in tmp (``--without-pip``; a path line makes the dependencies of the venv
running the tests importable, so nothing is downloaded or installed twice), from a copy of the project, and
nnU-Net's own trainer lookup then runs in a subprocess whose environment has no nnUNet_* variable at all.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from rehrseg_nnunet import _ext_trainer_env

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTH_NAME = "rehrseg_nnunet_ext_trainer.pth"
TRAINER = "REHRSegTrainer_cpuSmoke"
# what nnUNetv2_train does with -tr (nnunetv2.run.run_training.get_trainer_from_args)
LOOKUP = f"""
import os, rehrseg_nnunet
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
found = recursive_find_trainer_class_by_name({TRAINER!r})
print("FOUND", found.__module__, found.__name__)
print("PACKAGE", os.path.dirname(rehrseg_nnunet.__file__))
"""


def clean_env(**extra: str) -> dict:
    """The environment of a new shell: no nnU-Net or REHRSeg variable, no virtualenv of the test run."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("nnUNet_", "REHRSEG_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, **extra}


def make_venv(root, editable: bool) -> dict:
    """A venv below ``root`` with rehrseg-nnunet installed from a copy of the project (regular or editable)."""
    source = root / "project"
    shutil.copytree(os.path.join(PROJECT, "rehrseg_nnunet"), source / "rehrseg_nnunet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(os.path.join(PROJECT, name), source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "_rehrseg_test_dependencies.pth"), "w") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
               *(["-e"] if editable else []), str(source)]
    result = subprocess.run(install, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"python": python, "site": site, "source": str(source)}


@pytest.fixture(scope="module")
def regular_install(tmp_path_factory) -> dict:
    return make_venv(tmp_path_factory.mktemp("regular"), editable=False)


@pytest.fixture(scope="module")
def editable_install(tmp_path_factory) -> dict:
    return make_venv(tmp_path_factory.mktemp("editable"), editable=True)


def lookup(install: dict) -> dict:
    result = subprocess.run([install["python"], "-c", LOOKUP], env=clean_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("FOUND", "PACKAGE")))
    return {**lines, "stdout": result.stdout}


def startup_env(install: dict, **env: str) -> tuple[str | None, set]:
    """nnUNet_extTrainer and the modules imported when the venv's interpreter has just started."""
    code = "import os, sys, json; print(json.dumps([os.environ.get('nnUNet_extTrainer'), sorted(sys.modules)]))"
    result = subprocess.run([install["python"], "-c", code], env=clean_env(**env), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and not result.stderr, result.stderr[-2000:]
    value, modules = json.loads(result.stdout)
    return value, set(modules)


@pytest.mark.slow
def test_regular_install_finds_trainer_without_export(regular_install):
    assert os.path.isfile(os.path.join(regular_install["site"], PTH_NAME))
    found = lookup(regular_install)
    assert found["FOUND"] == f"rehrseg_nnunet.training.variants {TRAINER}", found["stdout"][-2000:]
    assert found["PACKAGE"] == os.path.join(regular_install["site"], "rehrseg_nnunet")
    shim = os.path.join(regular_install["site"], "rehrseg_nnunet", "training", "nnunet_ext")
    assert f"Using trainer '{TRAINER}' from: {shim}" in found["stdout"]


@pytest.mark.slow
def test_editable_install_finds_trainer_without_export(editable_install):
    assert os.path.isfile(os.path.join(editable_install["site"], PTH_NAME))
    found = lookup(editable_install)
    assert found["FOUND"] == f"rehrseg_nnunet.training.variants {TRAINER}", found["stdout"][-2000:]
    shim = os.path.join(editable_install["source"], "rehrseg_nnunet", "training", "nnunet_ext")
    assert f"Using trainer '{TRAINER}' from: {shim}" in found["stdout"]


def test_startup_keeps_user_paths_imports_nothing_heavy_and_switches_off(regular_install):
    shim = os.path.join(regular_install["site"], "rehrseg_nnunet", "training", "nnunet_ext")
    value, with_hook = startup_env(regular_install)
    assert value == shim
    value, _ = startup_env(regular_install, nnUNet_extTrainer=os.pathsep.join(["/mine/a", "/mine/b"]))
    assert value == os.pathsep.join(["/mine/a", "/mine/b", shim])
    already = os.pathsep.join([shim + os.sep, "/mine/a"])
    assert startup_env(regular_install, nnUNet_extTrainer=already)[0] == already
    assert startup_env(regular_install, REHRSEG_NO_EXT_TRAINER="1")[0] is None
    assert {name for name in with_hook if "rehrseg" in name} == {"rehrseg_nnunet", "rehrseg_nnunet._ext_trainer_env"}
    heavy = {"torch", "numpy", "nnunetv2", "SimpleITK", "scipy", "importlib.util", "pathlib"}
    assert not heavy & with_hook, heavy & with_hook


def test_add_ext_trainer_folder_rules():
    folder = _ext_trainer_env.EXT_TRAINER_FOLDER
    from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

    assert folder == EXT_TRAINER_FOLDER and os.path.isfile(os.path.join(folder, "rehrseg_trainer_shim.py"))
    for before, after in [({}, folder), ({"nnUNet_extTrainer": ""}, folder),
                          ({"nnUNet_extTrainer": "/x"}, f"/x{os.pathsep}{folder}"),
                          ({"nnUNet_extTrainer": f"{folder}{os.pathsep}/x"}, f"{folder}{os.pathsep}/x")]:
        environ = dict(before)
        _ext_trainer_env.add_ext_trainer_folder(environ)
        assert environ["nnUNet_extTrainer"] == after, before
    for off in ("1", "yes"):
        environ = {"REHRSEG_NO_EXT_TRAINER": off}
        _ext_trainer_env.add_ext_trainer_folder(environ)
        assert "nnUNet_extTrainer" not in environ
