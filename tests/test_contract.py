"""The stage contract: JSON round trip, validation, the plans' copy and the pre-0.2 plans format."""

from __future__ import annotations

import pytest

from rehrseg_nnunet.contract import CONTRACT_KEY, StageContract, default_sr_model_folder, portable_sr_model_folder
from rehrseg_nnunet.errors import RehrsegInputError


def contract(**changes) -> StageContract:
    fields = {"scale_factor": 4, "slice_axis": 2, "lr_spacing": (0.9, 1.1, 4.4), "source_dataset": "Dataset502_X",
              "sr_model_folder": "Dataset502_X/rehrseg_sr", "sr_stage": "1c", "sr_checkpoint_sha256": "ab" * 32,
              "uncertainty_folders": ("uncertaintyTr", "uncertaintyTs"), "tool_version": "0.1.0"}
    return StageContract(**{**fields, **changes})


def test_json_round_trip_and_derived_geometry():
    original = contract()
    block = original.to_json()
    assert block["hr_spacing"] == pytest.approx([0.9, 1.1, 1.1]) and "lr_patch_size" not in block
    assert StageContract.from_json(block, "dataset.json") == original
    assert original.thick_spacing == 4.4 and original.numpy_slice_axis == 0
    assert contract(slice_axis=0, lr_spacing=(5.0, 1.0, 1.0)).numpy_slice_axis == 2
    assert original.training_uncertainty_folder == "uncertaintyTr"


def test_plans_copy_carries_the_lr_patch_and_reads_back():
    block = contract().for_plans([4, 32, 32])
    assert block["lr_patch_size"] == [4, 32, 32]
    configuration = {CONTRACT_KEY: block}
    read = StageContract.from_plans_configuration(configuration, [0, 1, 2], "plans.json")
    assert read.lr_patch_size == (4, 32, 32) and read.scale_factor == 4 and read.lr_spacing == contract().lr_spacing
    assert StageContract.from_plans_configuration({}, [0, 1, 2], "plans.json") is None


def test_a_plans_block_of_the_old_format_is_read_in_its_axis_order():
    # before 0.2 the plans held lr_spacing on the plans' axis order (slice axis first) and no hr_spacing;
    # slice axis x (array axis 2) first, then array axes 0 (z) and 1 (y)
    old = {"scale_factor": 4, "slice_axis": 0, "lr_spacing": [4.0, 1.2, 0.8], "lr_patch_size": [4, 32, 32]}
    read = StageContract.from_plans_configuration({CONTRACT_KEY: old}, [2, 0, 1], "plans.json")
    assert read.lr_spacing == (4.0, 0.8, 1.2) and read.thick_spacing == 4.0 and read.hr_spacing == (1.0, 0.8, 1.2)


@pytest.mark.parametrize("edit, words", [
    (lambda b: b.pop("scale_factor"), "has no 'scale_factor'"),
    (lambda b: b.update(scale_factor=2.5), "not a whole number"),
    (lambda b: b.update(scale_factor=True), "not a whole number"),
    (lambda b: b.update(scale_factor=20), "r = 20 of the stage contract is outside 2..8"),
    (lambda b: b.update(slice_axis=3), "not 0, 1 or 2"),
    (lambda b: b.update(lr_spacing=[1.0, 0.0, 4.0]), "three positive values"),
    (lambda b: b.update(lr_spacing="4 mm"), "malformed"),
])
def test_a_malformed_block_is_one_line_naming_the_file_and_the_fix(edit, words):
    block = contract().to_json()
    edit(block)
    with pytest.raises(RehrsegInputError) as error:
        StageContract.from_json(block, "/data/Dataset503/dataset.json")
    message = str(error.value)
    assert "\n" not in message and words in message
    assert message.startswith("/data/Dataset503/dataset.json") and "rehrseg_make_pseudohr" in message


def test_a_dataset_without_a_contract_is_not_a_pseudohr_dataset():
    with pytest.raises(RehrsegInputError, match="not a pseudo-HR dataset.*rehrseg_make_pseudohr"):
        StageContract.from_dataset_json({"labels": {}}, "dataset.json")
    with pytest.raises(RehrsegInputError, match="not a JSON object"):
        StageContract.from_dataset_json({CONTRACT_KEY: [4, 2]}, "dataset.json")


def test_agreement_is_checked_on_r_axis_and_slice_spacing():
    contract().check_agrees(contract(lr_spacing=(0.9, 1.1, 4.42), sr_stage=None), "a", "b")  # 0.5 %: the same
    for other in (contract(scale_factor=2), contract(slice_axis=1, lr_spacing=(0.9, 4.4, 1.1)),
                  contract(lr_spacing=(0.9, 1.1, 6.0))):
        with pytest.raises(RehrsegInputError, match="dataset.json says r = 4, 4.4 mm slices along z but plans say"):
            contract().check_agrees(other, "dataset.json", "plans")


def test_sr_model_folders_are_stored_relative_to_nnunet_results(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    inside, outside = tmp_path / "Dataset502_X" / "rehrseg_sr", "/elsewhere/sr"
    assert default_sr_model_folder("Dataset502_X", "-m FOLDER") == str(inside)
    assert portable_sr_model_folder(str(inside)) == "Dataset502_X/rehrseg_sr"
    assert portable_sr_model_folder(outside) == outside
    assert contract().resolved_sr_model_folder() == str(inside)
    assert contract(sr_model_folder=outside).resolved_sr_model_folder() == outside
    monkeypatch.delenv("nnUNet_results")
    with pytest.raises(RehrsegInputError, match="nnUNet_results is not set; export it or pass -m FOLDER"):
        default_sr_model_folder("Dataset502_X", "-m FOLDER")
