"""Reading and checking nnU-Net raw datasets (thick-slice images + LR labels).

Every check runs before anything is written, and every failure is a :class:`RehrsegInputError`
whose message names the file and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.geometry import Grid, check_direction, check_thick_slice_spacing, numpy_axis


@dataclass
class RawCase:
    identifier: str
    image_files: list[str]
    label_file: str | None


@dataclass
class RawDataset:
    """An nnU-Net raw dataset folder with its dataset.json."""

    name: str
    folder: str
    dataset_json: dict
    training: list[RawCase]
    test: list[RawCase] = field(default_factory=list)

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    @property
    def label_values(self) -> list[int]:
        return sorted(int(v) for v in self.dataset_json["labels"].values())


def raw_root() -> str:
    root = os.environ.get("nnUNet_raw")
    if not root:
        raise RehrsegInputError("The environment variable nnUNet_raw is not set; export "
                                "nnUNet_raw=/path/to/nnUNet_raw.")
    return root


def resolve_dataset_folder(dataset: str | int) -> tuple[str, str]:
    """Find ``DatasetXXX_Name`` under ``nnUNet_raw`` from an id (``4``, ``004``) or a full name.

    Returns:
        (dataset name, folder path).
    """
    root = raw_root()
    text = str(dataset).strip()
    if text.startswith("Dataset"):
        if not re.fullmatch(r"Dataset\d{3}_[^/\\]+", text) or text.endswith(("/.", "/..")) or ".." in text:
            raise RehrsegInputError(f"Dataset '{dataset}' is not a DatasetXXX_Name folder name; give the id (e.g. -d "
                                    f"4) or the exact folder name under nnUNet_raw (e.g. -d Dataset004_Brain).")
        candidates = [text] if os.path.isdir(os.path.join(root, text)) else []
    else:
        try:
            dataset_id = int(text)
        except ValueError:
            raise RehrsegInputError(
                f"Dataset '{dataset}' is neither an id nor a DatasetXXX_Name; give e.g. -d 4 or -d Dataset004_Brain."
            ) from None
        prefix = f"Dataset{dataset_id:03d}_"
        candidates = sorted(d for d in os.listdir(root) if d.startswith(prefix)
                            and os.path.isdir(os.path.join(root, d))) if os.path.isdir(root) else []
    if not candidates:
        raise RehrsegInputError(
            f"Dataset '{dataset}' does not exist in nnUNet_raw ({root}); check the id with `ls {root}`."
        )
    if len(candidates) > 1:
        raise RehrsegInputError(f"Dataset id '{dataset}' matches several folders {candidates} in {root}; pass the full "
                                "name.")
    return candidates[0], os.path.join(root, candidates[0])


def _cases_in(folder: str, file_ending: str, num_channels: int, label_folder: str | None) -> list[RawCase]:
    if not os.path.isdir(folder):
        return []
    files = sorted(f for f in os.listdir(folder) if f.endswith(file_ending))
    identifiers = sorted({f[: -len(file_ending) - 5] for f in files})
    cases = []
    for identifier in identifiers:
        images = [os.path.join(folder, f"{identifier}_{c:04d}{file_ending}") for c in range(num_channels)]
        for path in images:
            if not os.path.isfile(path):
                raise RehrsegInputError(
                    f"{path} is missing: case '{identifier}' needs {num_channels} channel file(s) "
                    f"{identifier}_0000..{num_channels - 1:04d}{file_ending}; add it or remove the case."
                )
        label = os.path.join(label_folder, identifier + file_ending) if label_folder else None
        cases.append(RawCase(identifier, images, label))
    return cases


def read_json_file(path: str, missing_fix: str, invalid_fix: str) -> object:
    """A JSON file's content; one line naming the file when it is missing or not valid JSON.

    Args:
        path: the JSON file.
        missing_fix: what the message says after "is missing:".
        invalid_fix: what to do about invalid JSON.

    Returns:
        The parsed content.

    Raises:
        RehrsegInputError: the file is missing or not valid JSON.
    """
    if not os.path.isfile(path):
        raise RehrsegInputError(f"{path} is missing: {missing_fix}.")
    try:
        with open(path) as handle:
            return json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise RehrsegInputError(f"{path} is not valid JSON ({error}); {invalid_fix}.") from None


def load_raw_dataset(dataset: str | int) -> RawDataset:
    """Open an nnU-Net raw dataset by id or name and list its training (and test) cases."""
    name, folder = resolve_dataset_folder(dataset)
    json_path = os.path.join(folder, "dataset.json")
    dataset_json = read_json_file(json_path, f"{folder} is not an nnU-Net raw dataset; create its dataset.json",
                                  "fix the file")
    if not isinstance(dataset_json, dict):
        raise RehrsegInputError(f"{json_path} does not hold a JSON object; write it in nnU-Net's dataset.json format.")
    for key in ("channel_names", "labels", "file_ending"):
        if key not in dataset_json:
            raise RehrsegInputError(f"{json_path} has no '{key}' entry; add it as nnU-Net's dataset format requires.")
    for key in ("channel_names", "labels"):
        if not isinstance(dataset_json[key], dict):
            raise RehrsegInputError(f"{json_path}: '{key}' must be an object of name: value pairs, as in nnU-Net's "
                                    f"dataset.json (e.g. {{\"background\": 0, \"tumour\": 1}}).")
    for name_, value in dataset_json["labels"].items():
        if isinstance(value, str):
            raise RehrsegInputError(f"{json_path}: label '{name_}' has the string value \"{value}\"; write label "
                                    f"values as numbers (e.g. \"{name_}\": {value.strip() or 0}).")
        if not isinstance(value, int) or isinstance(value, bool):
            raise RehrsegInputError(
                f"{json_path}: label '{name_}' is a region ({value}); REHRSeg supports plain integer labels only."
            )
    if not dataset_json["channel_names"]:
        raise RehrsegInputError(f"{json_path}: 'channel_names' is empty; name every input channel, as in nnU-Net's "
                                f"dataset.json (e.g. \"channel_names\": {{\"0\": \"T2\"}} for files *_0000).")
    declared = sorted(int(v) for v in dataset_json["labels"].values())
    if declared != list(range(len(declared))):
        raise RehrsegInputError(f"{json_path}: label values {declared} are not consecutive from 0 (nnU-Net needs 0, 1, "
                                f"..., K-1); renumber the labels and their files.")
    if "dataset" in dataset_json:
        raise RehrsegInputError(f"{json_path} lists files in a 'dataset' entry; REHRSeg reads imagesTr/labelsTr "
                                "folders only.")
    file_ending = dataset_json["file_ending"]
    num_channels = len(dataset_json["channel_names"])
    training = _cases_in(os.path.join(folder, "imagesTr"), file_ending, num_channels, os.path.join(folder, "labelsTr"))
    if not training:
        raise RehrsegInputError(
            f"{os.path.join(folder, 'imagesTr')} holds no *_0000{file_ending} images; add training cases."
        )
    test = _cases_in(os.path.join(folder, "imagesTs"), file_ending, num_channels, None)
    return RawDataset(name, folder, dataset_json, training, test)


def check_thick_slice_header(path: str, slice_axis: int, thick_spacing: float, scale_factor: int, model: str) -> None:
    """Header-only check that an image has the thick-slice geometry a model was trained for.

    The image's slices must hold r of the model's HR slices (thick_spacing / r), rounded: e.g. 3.5-4.5 mm for
    a model of 4 mm slices and r = 4 (a 3 mm case would get 0.75 mm HR slices, not the model's 1 mm); the
    slice axis must be at least 1.5x coarser than in-plane; the direction matrix must be orthonormal.

    Args:
        path: the image file.
        slice_axis: the model's slice axis (x, y, z order).
        thick_spacing: the model's slice spacing.
        scale_factor: the model's r.
        model: how to name the model in the message (e.g. "the SR model in FOLDER").

    Raises:
        RehrsegInputError: one line naming the file and the fix.
    """
    grid = read_grid(path)
    check_direction(grid.direction, path)
    check_thick_slice_spacing(grid.spacing, path, slice_axis, thick_spacing, scale_factor, model)


def read_grid(path: str) -> Grid:
    """The grid of a 3D image file from its header only (no voxel data read).

    Raises:
        RehrsegInputError: one line naming the file, when it is unreadable or not 3D.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise RehrsegInputError(f"{path} cannot be read as an image by SimpleITK ({reason}); replace it or convert "
                                f"it to NIfTI (.nii.gz).") from None
    if reader.GetDimension() != 3:
        raise RehrsegInputError(f"{path} is {reader.GetDimension()}D; REHRSeg needs 3D volumes.")
    return Grid.from_image(reader)


def check_gzip_complete(path: str) -> None:
    """A ``.gz`` file must decompress to its end: SimpleITK fills a truncated stream with zeros silently.

    Raises:
        RehrsegInputError: naming the file.
    """
    if not path.endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as error:
        raise RehrsegInputError(f"{path} is truncated or corrupt ({error}); copy or export it again.") from None


def read_image(path: str) -> sitk.Image:
    """``sitk.ReadImage`` that refuses truncated ``.gz`` files and unreadable ones with one line."""
    check_gzip_complete(path)
    try:
        return sitk.ReadImage(path)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise RehrsegInputError(f"{path} cannot be read by SimpleITK ({first}); convert it to NIfTI "
                                "(.nii.gz).") from None


def check_finite_voxels(path: str, when: str = "predicting") -> None:
    """Refuse an image with NaN or Inf voxels (the check training inputs get) before anything is written.

    Args:
        path: the image file.
        when: what the message says to fix them before.

    Raises:
        RehrsegInputError: one line naming the file.
    """
    _check_finite(path, read_image(path), when)


def _check_finite(path: str, image: sitk.Image, when: str = "training") -> None:
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.floating):
        return
    if path.endswith((".nii", ".nii.gz")):
        # SimpleITK's NIfTI reader turns NaN and Inf into 0 without a word: look at the stored voxels
        import nibabel

        array = np.asanyarray(nibabel.load(path).dataobj)
    if not np.isfinite(array).all():
        raise RehrsegInputError(f"{path} contains NaN or Inf voxels; replace them (e.g. by 0) before {when}.")


def read_case(case: RawCase, require_label: bool = True) -> tuple[list[sitk.Image], sitk.Image | None]:
    """Read and check one case: 3D, finite, orthonormal axes, every channel and the label on one geometry."""
    if not case.image_files:
        raise RehrsegInputError(f"Case '{case.identifier}' has no image files: dataset.json names no channel; list "
                                f"its channels in 'channel_names'.")
    images = []
    for path in case.image_files:
        image = read_image(path)
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise RehrsegInputError(
                f"{path} is a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} component(s); "
                f"REHRSeg needs one 3D scalar volume per channel file."
            )
        check_direction(image.GetDirection(), path)
        _check_finite(path, image)
        images.append(image)
    reference = Grid.from_image(images[0])
    for path, image in zip(case.image_files[1:], images[1:], strict=True):
        if not Grid.from_image(image).matches(reference):
            raise RehrsegInputError(f"{path} has another geometry than {case.image_files[0]}; resample all channels "
                                    "onto one grid.")
    label = None
    if case.label_file is not None:
        if not os.path.isfile(case.label_file):
            if require_label:
                raise RehrsegInputError(
                    f"{case.label_file} is missing: case '{case.identifier}' has no label; add it or remove the "
                    f"case's images."
                )
        else:
            label = read_image(case.label_file)
            if label.GetDimension() != 3:
                raise RehrsegInputError(f"{case.label_file} is {label.GetDimension()}D; labels must be 3D volumes like "
                                        "their images.")
            if not Grid.from_image(label).matches(reference):
                raise RehrsegInputError(
                    f"{case.label_file} does not share the geometry (size/spacing/origin/direction) of "
                    f"{case.image_files[0]}; resample the label onto the image grid."
                )
            _check_finite(case.label_file, label)
    return images, label


def check_label_values(path: str, label: np.ndarray, allowed: Sequence[int]) -> None:
    """Label voxels must be whole numbers that dataset.json declares (nothing is rounded or dropped silently)."""
    if np.issubdtype(label.dtype, np.floating):
        fractional = label[label != np.round(label)]
        if fractional.size:
            raise RehrsegInputError(f"{path} holds non-integer label values (e.g. {float(fractional[0]):g}); labels "
                                    f"must be whole class numbers: fix the label file.")
    present = np.unique(label)
    extra = sorted(set(present.tolist()) - set(int(v) for v in allowed))
    if extra:
        raise RehrsegInputError(
            f"{path} contains label values {extra} that dataset.json does not declare {sorted(allowed)}; fix the "
            "labels or dataset.json."
        )


def case_arrays(images: Sequence[sitk.Image], label: sitk.Image | None, slice_axis: int
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Stack channels as (C, S, A, B) float32 with the slice axis first; label as (S, A, B) int16."""
    axis = numpy_axis(slice_axis)
    image = np.stack([np.moveaxis(sitk.GetArrayFromImage(im).astype(np.float32), axis, 0) for im in images])
    label_array = None
    if label is not None:
        label_array = np.moveaxis(np.rint(sitk.GetArrayFromImage(label)).astype(np.int16), axis, 0)
    return image, label_array


def from_slice_first(array: np.ndarray, slice_axis: int) -> np.ndarray:
    """Undo :func:`case_arrays`' axis move for one (S, A, B) volume."""
    return np.moveaxis(array, 0, numpy_axis(slice_axis))


def fingerprint(entries: Sequence[tuple[str, Grid]]) -> str:
    """Hash of case names and geometries: identifies the data an SR model was trained on."""
    digest = hashlib.sha256()
    for path, grid in entries:
        digest.update(os.path.basename(path).encode())
        digest.update(repr((grid.size, tuple(round(s, 4) for s in grid.spacing))).encode())
    return digest.hexdigest()[:16]
