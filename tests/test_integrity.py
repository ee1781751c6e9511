"""Integrity of what the package writes and reads back (issues 27 and 29).

SR checkpoints: rehrseg_train_sr records each final checkpoint's SHA-256 in config.json, and every loader
checks it (another model's checkpoint swapped in, a flipped byte, a truncated file: one line); --continue
falls back to the previous latest checkpoint when the latest is unreadable; rehrseg_make_pseudohr checks the
SR model before it writes anything. Resized plans never share a data identifier with plans whose
preprocessing differs: preprocessing them leaves the stock plans' data byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_ok, assert_one_line_error, run_script, tree_digest
from phantoms import write_thick_slice_dataset

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.sr.config import (
    SRConfig,
    checkpoint_sha256,
    final_checkpoint,
    latest_checkpoint,
    previous_checkpoint,
    verified_final_checkpoint,
)
from rehrseg_nnunet.sr.stage_trainer import StageTrainer


def copy_model(trained_sr_model: dict, tmp_path) -> str:
    """A private copy of the session's SR model folder."""
    model = str(tmp_path / "model")
    shutil.copytree(trained_sr_model["model"], model)
    return model


def edit_config(model: str, **changes: object) -> None:
    path = os.path.join(model, "config.json")
    with open(path) as handle:
        config = json.load(handle)
    config.update(changes)
    with open(path, "w") as handle:
        json.dump(config, handle)


def test_final_checkpoints_are_recorded_in_config_and_verified(trained_sr_model):
    model = trained_sr_model["model"]
    recorded = SRConfig.load(model).checkpoint_sha256
    assert sorted(recorded) == ["1a", "1b", "1c"]
    for stage in ("1a", "1b", "1c"):
        assert recorded[stage] == checkpoint_sha256(model, stage)
        checkpoint = verified_final_checkpoint(model, stage)
        assert checkpoint["step"] == checkpoint["steps"] == 4 and "model" in checkpoint


def test_a_config_without_checkpoint_records_still_loads(trained_sr_model, tmp_path):
    """Models of older versions have no checkpoint_sha256: they load, their checkpoints checked for readability."""
    model = copy_model(trained_sr_model, tmp_path)
    with open(os.path.join(model, "config.json")) as handle:
        config = json.load(handle)
    del config["checkpoint_sha256"]
    with open(os.path.join(model, "config.json"), "w") as handle:
        json.dump(config, handle)
    assert SRConfig.load(model).checkpoint_sha256 == {}
    assert verified_final_checkpoint(model, "1c")["network"] == "slice"


def another_models_checkpoint(path: str) -> None:
    """Replace a final checkpoint by a valid one of another network (the same sizes, other weights)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name] = checkpoint["model"][name] + 0.5
    torch.save(checkpoint, path)


def flip_a_byte(path: str) -> None:
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def truncate(path: str) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


@pytest.mark.bad_input
@pytest.mark.parametrize("problem, fragments", [
    ("swapped", ["stage_1c/checkpoint_final.pth", "SHA-256", "another model", "--continue"]),
    ("flipped", ["stage_1c/checkpoint_final.pth", "SHA-256", "damaged"]),
    ("swapped_1a", ["stage_1a/checkpoint_final.pth", "SHA-256"]),
    ("truncated_unrecorded", ["stage_1c/checkpoint_final.pth", "truncated or unreadable", "--continue"]),
    ("scale_factor_edited", ["config.json", "scale_factor = 3", "trained with scale_factor = 4", "restore"]),
    ("uncalibrated", ["config.json", "uncertainty_scale", "--continue"]),
])
def test_make_pseudohr_refuses_a_bad_sr_model_before_writing_anything(trained_sr_model, tmp_path, problem, fragments):
    """Checked before the target dataset exists: no dataset.json (which a bad model used to leave behind)."""
    model = copy_model(trained_sr_model, tmp_path)
    if problem == "swapped":
        another_models_checkpoint(final_checkpoint(model, "1c"))
    elif problem == "flipped":
        flip_a_byte(final_checkpoint(model, "1c"))
    elif problem == "swapped_1a":  # stage 1c refines stage 1a's estimate: 1a is checked too
        another_models_checkpoint(final_checkpoint(model, "1a"))
    elif problem == "truncated_unrecorded":  # a model of an older version: no SHA-256, readability still checked
        edit_config(model, checkpoint_sha256={})
        truncate(final_checkpoint(model, "1c"))
    elif problem == "scale_factor_edited":
        # 4 mm slices read as r = 3 pass the geometry check (round(4 / 1.33) = 3): the network must say no
        edit_config(model, scale_factor=3, hr_spacing=[1.0, 1.0, 4.0 / 3])
    else:
        edit_config(model, uncertainty_scale=None)
    raw = tmp_path / "raw"
    shutil.copytree(os.path.join(trained_sr_model["raw"], "Dataset502_Phantom"), raw / "Dataset502_Phantom")
    before, model_before = tree_digest(raw), tree_digest(model)
    result = run_script("rehrseg_make_pseudohr", ["-d", "502", "-o", "631", "-m", model, "-device", "cpu"],
                        {"nnUNet_raw": str(raw)})
    assert_one_line_error(result, "rehrseg_make_pseudohr: error:", *fragments)
    assert sorted(os.listdir(raw)) == ["Dataset502_Phantom"], "the target dataset was created"
    assert tree_digest(raw) == before and tree_digest(model) == model_before


def test_verified_final_checkpoint_refuses_each_damage_with_one_error(trained_sr_model, tmp_path):
    model = copy_model(trained_sr_model, tmp_path)
    os.remove(final_checkpoint(model, "1b"))
    with pytest.raises(RehrsegInputError, match="is missing: SR stage 1b has not finished"):
        verified_final_checkpoint(model, "1b")
    flip_a_byte(final_checkpoint(model, "1c"))
    with pytest.raises(RehrsegInputError, match="SHA-256") as error:
        verified_final_checkpoint(model, "1c")
    # the stage's latest checkpoint is at its last step: the recovery rewrites the final one from it
    assert "rewrites it from" in str(error.value) and "checkpoint_latest.pth" in str(error.value)
    os.remove(latest_checkpoint(model, "1c"))
    with pytest.raises(RehrsegInputError, match="retrain that stage"):
        verified_final_checkpoint(model, "1c")


class _Sampler:
    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray]:
        return (rng.standard_normal((batch_size, 3)).astype(np.float32),)


def _tiny_trainer(folder: str, config: SRConfig | None) -> StageTrainer:
    torch.manual_seed(0)
    return StageTrainer(folder, "1a", torch.nn.Linear(3, 1), "plane", {}, _Sampler(), steps=4, batch_size=2,
                        learning_rate=1e-3, device=torch.device("cpu"), seed=0, save_every=2, log=lambda _: None,
                        config=config)


def _loss(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    return net(x).pow(2).mean(), {}


def test_the_previous_latest_checkpoint_is_kept_and_resumed_from_when_the_latest_is_unreadable(tmp_path):
    folder = str(tmp_path)
    config = SRConfig(dataset="Dataset001_X", fingerprint="0" * 16, slice_axis=2, scale_factor=4,
                      lr_spacing=[1.0, 1.0, 4.0], hr_spacing=[1.0, 1.0, 1.0], channel_names={"0": "T1"},
                      label_values=[0, 1], preset="small", profile="gaussian", profile_fwhm=4.0,
                      steps={"1a": 4}, seed=0)
    _tiny_trainer(folder, config).run(_loss)
    latest, previous = latest_checkpoint(folder, "1a"), previous_checkpoint(folder, "1a")
    assert torch.load(latest, weights_only=False)["step"] == 4
    assert torch.load(previous, weights_only=False)["step"] == 2
    assert SRConfig.load(folder).checkpoint_sha256 == {"1a": checkpoint_sha256(folder, "1a")}
    truncate(latest)
    messages = []
    trainer = _tiny_trainer(folder, config)
    trainer.log = messages.append
    trainer.resume()
    assert trainer.step == 2
    assert any("checkpoint_latest.pth is truncated or unreadable; resuming from" in m for m in messages), messages
    assert torch.load(latest, weights_only=False)["step"] == 2 and not os.path.exists(previous)
    truncate(latest)  # now without a previous one: one line naming the file and the fix
    with pytest.raises(RehrsegInputError, match="checkpoint_latest.pth is truncated or unreadable.*restart stage 1a"):
        _tiny_trainer(folder, config).resume()


@pytest.mark.bad_input
def test_continue_with_a_truncated_latest_checkpoint_is_one_line_or_uses_the_previous_one(trained_sr_model, tmp_path):
    """Stage 1c of a copy unfinished again (its final checkpoint removed), its latest checkpoint truncated."""
    model = copy_model(trained_sr_model, tmp_path)
    os.remove(final_checkpoint(model, "1c"))
    good = open(latest_checkpoint(model, "1c"), "rb").read()
    truncate(latest_checkpoint(model, "1c"))
    args = ["-d", "502", "-o", model, "--steps", "4", "-device", "cpu", "--continue"]
    env = {"nnUNet_raw": trained_sr_model["raw"]}
    before = tree_digest(model)
    result = run_script("rehrseg_train_sr", args, env)
    assert_one_line_error(result, "rehrseg_train_sr: error:", "stage_1c/checkpoint_latest.pth",
                          "truncated or unreadable", "--continue")
    assert tree_digest(model) == before, "a refused --continue wrote into the model folder"
    with open(previous_checkpoint(model, "1c"), "wb") as handle:  # as _save_latest keeps it, with its SHA-256
        handle.write(good)
    shutil.copyfile(latest_checkpoint(model, "1c") + ".sha256", previous_checkpoint(model, "1c") + ".sha256")
    result = run_script("rehrseg_train_sr", args, env)
    assert_ok(result)
    log = open(os.path.join(model, "training_log.txt")).read()
    assert "checkpoint_latest.pth is truncated or unreadable; resuming from" in log
    assert "stage 1c: resumed from step 4 of 4" in log
    assert SRConfig.load(model).checkpoint_sha256["1c"] == checkpoint_sha256(model, "1c")


@pytest.mark.bad_input
def test_continue_refuses_a_swapped_final_checkpoint_before_writing(trained_sr_model, tmp_path):
    model = copy_model(trained_sr_model, tmp_path)
    another_models_checkpoint(final_checkpoint(model, "1b"))
    before = tree_digest(model)
    result = run_script("rehrseg_train_sr", ["-d", "502", "-o", model, "--steps", "4", "-device", "cpu",
                                             "--continue"], {"nnUNet_raw": trained_sr_model["raw"]})
    assert_one_line_error(result, "rehrseg_train_sr: error:", "stage_1b/checkpoint_final.pth", "SHA-256")
    assert tree_digest(model) == before


# --- resized plans and the stock plans' preprocessed data ------------------------------------------------------
@pytest.fixture(scope="module")
def masked_dataset(tmp_path_factory):
    """A phantom dataset whose zero border makes nnU-Net normalise inside the non-zero mask, planned and
    preprocessed with the stock plans."""
    root = tmp_path_factory.mktemp("resized")
    raw = root / "raw"
    write_thick_slice_dataset(str(raw), dataset_id=633, num_cases=2, background_margin=8)
    env = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_def_n_proc": "1"}
    assert_ok(run_script("nnUNetv2_plan_and_preprocess", ["-d", "633", "-c", "3d_fullres", "-np", "1", "-npfp", "1"],
                         env))
    folder = root / "preprocessed" / "Dataset633_Phantom"
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["use_mask_for_norm"] == [True]
    return {"env": env, "folder": folder}


def test_preprocessing_resized_plans_leaves_the_stock_plans_data_byte_identical(masked_dataset):
    from rehrseg_nnunet.resized_plans import write_resized_plans

    folder, env = masked_dataset["folder"], masked_dataset["env"]
    stock = folder / "nnUNetPlans_3d_fullres"
    before = tree_digest(stock)
    # the quick start's CPU plans: z-scored over the whole volume, so their data differ from the stock plans'
    write_resized_plans(str(folder), [4, 32, 32], 8, 24, 2, "nnUNetPlansCPU", use_mask_for_norm=False)
    config = json.loads((folder / "nnUNetPlansCPU.json").read_text())["configurations"]["3d_fullres"]
    assert config["data_identifier"] == "nnUNetPlansCPU_3d_fullres"
    assert_ok(run_script("nnUNetv2_preprocess", ["-d", "633", "-plans_name", "nnUNetPlansCPU", "-c", "3d_fullres",
                                                 "-np", "1"], env))
    assert tree_digest(stock) == before
    own = tree_digest(folder / "nnUNetPlansCPU_3d_fullres")
    assert own.keys() == before.keys() and own != before  # the same cases, normalised otherwise
    # plans whose preprocessing is the stock one share its folder: preprocessing them writes the same arrays (blosc2
    # chunks them by the plans' patch, so the files themselves may differ) and the same properties
    arrays = stock_arrays(stock)
    write_resized_plans(str(folder), [4, 32, 32], 8, 24, 2, "nnUNetPlansSame")
    config = json.loads((folder / "nnUNetPlansSame.json").read_text())["configurations"]["3d_fullres"]
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert_ok(run_script("nnUNetv2_preprocess", ["-d", "633", "-plans_name", "nnUNetPlansSame", "-c", "3d_fullres",
                                                 "-np", "1"], env))
    again = stock_arrays(stock)
    assert again.keys() == arrays.keys() and all(np.array_equal(arrays[k], again[k]) for k in arrays)
    pickles = [name for name in before if name.endswith(".pkl")]
    assert pickles and all(tree_digest(stock)[name] == before[name] for name in pickles)


def stock_arrays(folder) -> dict[str, np.ndarray]:
    """The decompressed arrays of a preprocessed folder's .b2nd files."""
    import blosc2

    return {path.name: blosc2.open(str(path), mode="r")[:] for path in sorted(folder.glob("*.b2nd"))}


def test_plans_share_data_only_when_their_preprocessing_is_the_same():
    """Resampling settings matter only when a case changes shape at the target spacing."""
    from rehrseg_nnunet.planning import same_preprocessing

    config = {"spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
              "use_mask_for_norm": [False], "preprocessor_name": "DefaultPreprocessor",
              "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_seg_kwargs": {"order": 1, "order_z": 0, "force_separate_z": None}}
    plans = {"transpose_forward": [0, 1, 2]}
    other = {**config, "resampling_fn_data_kwargs": {"order": 3, "order_z": 0, "force_separate_z": True}}
    on_grid = {"spacings": [[1.0, 1.0, 1.0]] * 2, "shapes_after_crop": [[40, 48, 48]] * 2}
    off_grid = {"spacings": [[1.0, 1.0, 1.0], [1.2, 1.0, 1.0]], "shapes_after_crop": [[40, 48, 48]] * 2}
    assert same_preprocessing(plans, config, plans, dict(config))
    assert same_preprocessing(plans, config, plans, other, on_grid)
    assert not same_preprocessing(plans, config, plans, other, off_grid)
    assert not same_preprocessing(plans, config, plans, other)  # no fingerprint: cannot tell
    assert not same_preprocessing(plans, config, plans, {**config, "use_mask_for_norm": [True]}, on_grid)
    assert not same_preprocessing(plans, config, {"transpose_forward": [2, 1, 0]}, dict(config), on_grid)
