"""The stage contract: what the pseudo-HR stage hands on to planning, training and prediction.

``rehrseg_make_pseudohr`` writes it as the ``rehrseg`` block of the pseudo-HR dataset's ``dataset.json``;
``rehrseg_plan`` copies it, with the LR patch, into the ``rehrseg`` block of the 3d_fullres configuration
of ``REHRSegPlans``, which nnUNetv2_train stores in every model folder's ``plans.json``. Every stage
reads it through :class:`StageContract` (this module is the only one that knows the keys), and the
trainer checks once that the dataset's and the plans' contracts agree.

Axes and spacings are in SimpleITK's (x, y, z) order, as everywhere in the package, except
``lr_patch_size``, which is a patch of the plans' arrays (slice axis first).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.geometry import AXIS_NAMES, MAX_SCALE_FACTOR, MIN_SCALE_FACTOR, numpy_axis

#: the key of the contract in dataset.json and in a plans configuration
CONTRACT_KEY = "rehrseg"
#: where an SR model lives unless the user names another folder: nnUNet_results/<dataset>/SR_MODEL_SUBFOLDER
SR_MODEL_SUBFOLDER = "rehrseg_sr"


@dataclass(frozen=True)
class StageContract:
    """Thick-slice geometry and SR provenance shared by every stage after ``rehrseg_make_pseudohr``.

    Attributes:
        scale_factor: r, HR slices per thick slice.
        slice_axis: the thick axis, in (x, y, z) order.
        lr_spacing: spacing of the thick-slice (LR) data, (x, y, z).
        source_dataset: the thick-slice dataset the pseudo-HR dataset was made from.
        sr_model_folder: the SR model, as stored: relative to ``nnUNet_results`` when it lies below it (see
            :meth:`resolved_sr_model_folder`), so datasets and models move with their results folder.
        sr_stage: the SR stage whose network made the pseudo-HR data (and teaches during training).
        sr_checkpoint_sha256: SHA-256 of that stage's final checkpoint.
        uncertainty_folders: raw-dataset folders of uncertainty maps (``uncertaintyTr``, ``uncertaintyTs``).
        tool_version: rehrseg-nnunet version that wrote the pseudo-HR dataset (provenance for the user).
        lr_patch_size: the LR patch of the plans (slice axis first); only in a plans configuration.
    """

    scale_factor: int
    slice_axis: int
    lr_spacing: tuple[float, float, float]
    source_dataset: str | None = None
    sr_model_folder: str | None = None
    sr_stage: str | None = None
    sr_checkpoint_sha256: str | None = None
    uncertainty_folders: tuple[str, ...] = ()
    tool_version: str | None = None
    lr_patch_size: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not MIN_SCALE_FACTOR <= self.scale_factor <= MAX_SCALE_FACTOR:
            raise RehrsegInputError(f"r = {self.scale_factor} of the stage contract is outside "
                                    f"{MIN_SCALE_FACTOR}..{MAX_SCALE_FACTOR}.")
        if self.slice_axis not in (0, 1, 2):
            raise RehrsegInputError(f"Slice axis {self.slice_axis} of the stage contract is not 0, 1 or 2 (x, y, z).")
        if len(self.lr_spacing) != 3 or min(self.lr_spacing) <= 0:
            raise RehrsegInputError(f"LR spacing {self.lr_spacing} of the stage contract is not three positive values.")

    # --- derived geometry ---------------------------------------------------------------------------------
    @property
    def hr_spacing(self) -> tuple[float, float, float]:
        """The pseudo-HR spacing: the slice spacing divided by r, in-plane unchanged (x, y, z)."""
        spacing = list(self.lr_spacing)
        spacing[self.slice_axis] /= self.scale_factor
        return tuple(spacing)

    @property
    def thick_spacing(self) -> float:
        """The LR slice spacing along the slice axis."""
        return self.lr_spacing[self.slice_axis]

    @property
    def numpy_slice_axis(self) -> int:
        """The slice axis of a (z, y, x) array."""
        return numpy_axis(self.slice_axis)

    @property
    def training_uncertainty_folder(self) -> str:
        """The raw-dataset folder of the training cases' uncertainty maps."""
        return next((f for f in self.uncertainty_folders if f.endswith("Tr")), "uncertaintyTr")

    def resolved_sr_model_folder(self) -> str | None:
        """The SR model folder as a path on this machine (a relative one is below ``nnUNet_results``)."""
        folder = self.sr_model_folder
        results = os.environ.get("nnUNet_results")
        if folder and not os.path.isabs(folder) and results:
            folder = os.path.join(results, folder)
        return folder

    def describe(self) -> str:
        return f"r = {self.scale_factor}, {self.thick_spacing:g} mm slices along {AXIS_NAMES[self.slice_axis]}"

    # --- JSON -----------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The JSON block: every set field, plus the derived ``hr_spacing`` for readers of the file."""
        block = {"scale_factor": self.scale_factor, "slice_axis": self.slice_axis,
                 "lr_spacing": list(self.lr_spacing), "hr_spacing": list(self.hr_spacing)}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name not in block and value not in (None, ()):
                block[field.name] = list(value) if isinstance(value, tuple) else value
        return block

    @classmethod
    def from_json(cls, block: object, source: str) -> StageContract:
        """Read and validate a JSON block.

        Args:
            block: the ``rehrseg`` block.
            source: the file it came from, for error messages.

        Raises:
            RehrsegInputError: one line naming the file and the fix.
        """
        fix = "re-create it with rehrseg_make_pseudohr (and re-plan with rehrseg_plan)"
        if not isinstance(block, dict):
            raise RehrsegInputError(f"{source}: its '{CONTRACT_KEY}' block is not a JSON object; {fix}.")
        try:
            return cls(
                scale_factor=_whole_number(block["scale_factor"]),
                slice_axis=_whole_number(block["slice_axis"]),
                lr_spacing=tuple(float(s) for s in block["lr_spacing"]),
                source_dataset=block.get("source_dataset"),
                sr_model_folder=block.get("sr_model_folder"),
                sr_stage=block.get("sr_stage"),
                sr_checkpoint_sha256=block.get("sr_checkpoint_sha256"),
                uncertainty_folders=tuple(block.get("uncertainty_folders", ())),
                tool_version=block.get("tool_version"),
                lr_patch_size=tuple(int(p) for p in block["lr_patch_size"]) if "lr_patch_size" in block else None,
            )
        except KeyError as error:
            raise RehrsegInputError(f"{source}: its '{CONTRACT_KEY}' block has no {error}; {fix}.") from None
        except (TypeError, ValueError) as error:
            raise RehrsegInputError(f"{source}: its '{CONTRACT_KEY}' block is malformed ({error}); {fix}.") from None
        except RehrsegInputError as error:
            raise RehrsegInputError(f"{source}: {error} {fix[0].upper()}{fix[1:]}.") from None

    @classmethod
    def from_dataset_json(cls, dataset_json: dict, source: str) -> StageContract:
        """The contract of a pseudo-HR dataset; an error naming the fix for any other dataset."""
        if not dataset_json.get(CONTRACT_KEY):
            raise RehrsegInputError(
                f"{source} has no '{CONTRACT_KEY}' block: it is not a pseudo-HR dataset. Create one with "
                f"rehrseg_make_pseudohr and train on that.")
        return cls.from_json(dataset_json[CONTRACT_KEY], source)

    @classmethod
    def from_plans_configuration(cls, configuration: dict, transpose_forward: Sequence[int],
                                 source: str) -> StageContract | None:
        """The contract of a plans configuration (None for plans that rehrseg_plan did not write).

        Args:
            configuration: one entry of the plans' ``configurations``.
            transpose_forward: the plans' axis order (to read blocks written before version 0.2, whose
                ``lr_spacing`` was in that order and which had no ``hr_spacing``).
            source: the plans file, for error messages.
        """
        block = configuration.get(CONTRACT_KEY)
        if not block:
            return None
        if isinstance(block, dict) and "hr_spacing" not in block and "lr_spacing" in block:
            spacing_xyz = [0.0, 0.0, 0.0]
            for position, axis in enumerate(transpose_forward):  # array axis (z, y, x) at each position
                spacing_xyz[numpy_axis(axis)] = float(block["lr_spacing"][position])
            block = {**block, "lr_spacing": spacing_xyz}
        return cls.from_json(block, source)

    def for_plans(self, lr_patch_size: Sequence[int]) -> dict:
        """The JSON block of a plans configuration: this contract with the LR patch."""
        return dataclasses.replace(self, lr_patch_size=tuple(int(p) for p in lr_patch_size)).to_json()

    def check_agrees(self, other: StageContract, source: str, other_source: str) -> None:
        """Two stages' contracts describe the same geometry (r, slice axis, thick spacing within 1 %).

        Raises:
            RehrsegInputError: naming both sources and the fix.
        """
        same = (self.scale_factor == other.scale_factor and self.slice_axis == other.slice_axis
                and abs(self.thick_spacing - other.thick_spacing) <= 0.01 * self.thick_spacing)
        if not same:
            raise RehrsegInputError(
                f"{source} says {self.describe()} but {other_source} says {other.describe()}; re-plan the dataset "
                f"with rehrseg_plan so that both describe the same data.")


def _whole_number(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def default_sr_model_folder(dataset_name: str, option: str) -> str:
    """``nnUNet_results/<dataset>/rehrseg_sr``, where ``rehrseg_train_sr`` writes and later stages look.

    Args:
        dataset_name: the thick-slice dataset's ``DatasetXXX_Name``.
        option: the command-line option that names another folder (for the error message).
    """
    results = os.environ.get("nnUNet_results")
    if not results:
        raise RehrsegInputError(f"The environment variable nnUNet_results is not set; export it or pass {option}.")
    return os.path.join(results, dataset_name, SR_MODEL_SUBFOLDER)


def portable_sr_model_folder(folder: str) -> str:
    """The stored form of an SR model folder: relative to nnUNet_results when below it, else absolute."""
    folder = os.path.abspath(folder)
    results = os.environ.get("nnUNet_results")
    if results and os.path.commonpath([folder, os.path.abspath(results)]) == os.path.abspath(results):
        return os.path.relpath(folder, os.path.abspath(results))
    return folder
