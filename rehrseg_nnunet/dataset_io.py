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
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.geometry import (AXIS_NAMES, Grid, check_scale_factor, detect_slice_axis,
                                     infer_scale_factor, numpy_axis)


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


@dataclass(frozen=True)
class DatasetGeometry:
    """What all cases of a dataset share: the slice axis (x, y, z order) and the scale factor r."""

    slice_axis: int
    scale_factor: int
    lr_spacing: tuple[float, float, float]

    @property
    def hr_spacing(self) -> tuple[float, float, float]:
        spacing = list(self.lr_spacing)
        spacing[self.slice_axis] /= self.scale_factor
        return tuple(spacing)


def raw_root() -> str:
    root = os.environ.get("nnUNet_raw")
    if not root:
        raise RehrsegInputError("The environment variable nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw.")
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
            raise RehrsegInputError(f"Dataset '{dataset}' is not a DatasetXXX_Name folder name; give the id (e.g. -d 4) "
                                    f"or the exact folder name under nnUNet_raw (e.g. -d Dataset004_Brain).")
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
        raise RehrsegInputError(f"Dataset id '{dataset}' matches several folders {candidates} in {root}; pass the full name.")
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


def load_raw_dataset(dataset: str | int) -> RawDataset:
    """Open an nnU-Net raw dataset by id or name and list its training (and test) cases."""
    name, folder = resolve_dataset_folder(dataset)
    json_path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(json_path):
        raise RehrsegInputError(f"{json_path} is missing: {folder} is not an nnU-Net raw dataset; create its dataset.json.")
    try:
        with open(json_path) as handle:
            dataset_json = json.load(handle)
    except ValueError as error:
        raise RehrsegInputError(f"{json_path} is not valid JSON ({error}); fix the file.") from None
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
            raise RehrsegInputError(f"{json_path}: label '{name_}' has the string value \"{value}\"; write label values "
                                    f"as numbers (e.g. \"{name_}\": {value.strip() or 0}).")
        if not isinstance(value, int) or isinstance(value, bool):
            raise RehrsegInputError(
                f"{json_path}: label '{name_}' is a region ({value}); REHRSeg supports plain integer labels only."
            )
    declared = sorted(int(v) for v in dataset_json["labels"].values())
    if declared != list(range(len(declared))):
        raise RehrsegInputError(f"{json_path}: label values {declared} are not consecutive from 0 (nnU-Net needs 0, 1, "
                                f"..., K-1); renumber the labels and their files.")
    if "dataset" in dataset_json:
        raise RehrsegInputError(f"{json_path} lists files in a 'dataset' entry; REHRSeg reads imagesTr/labelsTr folders only.")
    file_ending = dataset_json["file_ending"]
    num_channels = len(dataset_json["channel_names"])
    training = _cases_in(os.path.join(folder, "imagesTr"), file_ending, num_channels, os.path.join(folder, "labelsTr"))
    if not training:
        raise RehrsegInputError(
            f"{os.path.join(folder, 'imagesTr')} holds no *_0000{file_ending} images; add training cases."
        )
    test = _cases_in(os.path.join(folder, "imagesTs"), file_ending, num_channels, None)
    return RawDataset(name, folder, dataset_json, training, test)


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(handle)`` to a per-process temporary name beside ``path``, then rename:
    no reader ever sees a partial file, and an interrupted write leaves the previous version (or nothing).

    Raises:
        RehrsegInputError: the write failed (disk full, file-size limit, read-only folder); the temporary
            file is removed and ``path`` is untouched.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # torch.save reports a short write as RuntimeError
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "the write stopped part-way"
        raise RehrsegInputError(f"could not write {path} ({reason}); free disk space, lift the "
                                f"file-size limit (ulimit -f) or choose a writable output folder, then run it again."
                                ) from error
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json_atomically(path: str, content: object) -> None:
    """``json.dump`` through :func:`write_atomically`."""
    write_atomically(path, lambda handle: handle.write(json.dumps(content, indent=2).encode()))


def save_npy_atomically(path: str, array: np.ndarray) -> None:
    """``np.save`` through :func:`write_atomically`."""
    write_atomically(path, lambda handle: np.save(handle, array))


def write_image_verified(image: sitk.Image, path: str) -> None:
    """``sitk.WriteImage`` (compressed), then read back and compared voxel for voxel.

    SimpleITK reports some failed writes (a file-size limit, a full disk) only on stderr and returns
    normally, leaving a truncated file that later reads as zero-filled: this turns them into an error.

    Raises:
        RehrsegInputError: naming the file and what to check.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        sitk.WriteImage(image, path, useCompression=True, compressionLevel=1)
        written = sitk.ReadImage(path)
    except (RuntimeError, OSError) as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise RehrsegInputError(f"writing {path} failed ({reason}); check free space, quotas and write permission "
                                f"in {folder}.") from None
    if written.GetSize() != image.GetSize() or not np.array_equal(sitk.GetArrayViewFromImage(written),
                                                                  sitk.GetArrayViewFromImage(image)):
        raise RehrsegInputError(f"{path} was not written completely (its read-back differs); check free space and the "
                                f"file-size limit (ulimit -f) for {folder}.")


def check_thick_slice_header(path: str, slice_axis: int, thick_spacing: float, scale_factor: int, model: str) -> None:
    """Header-only check that an image has the thick-slice geometry a model was trained for.

    The image's slices must hold r of the model's HR slices (thick_spacing / r), rounded: e.g. 3.5-4.5 mm for
    a model of 4 mm slices and r = 4 (a 3 mm case would get 0.75 mm HR slices, not the model's 1 mm); the
    slice axis must be at least 1.5x coarser than in-plane.

    Args:
        path: the image file.
        slice_axis: the model's slice axis (x, y, z order).
        thick_spacing: the model's slice spacing.
        scale_factor: the model's r.
        model: how to name the model in the message (e.g. "the SR model in FOLDER").

    Raises:
        RehrsegInputError: one line naming the file and the fix.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise RehrsegInputError(f"{path} cannot be read as an image by SimpleITK; replace it or convert it to NIfTI "
                                f"(.nii.gz).") from None
    if reader.GetDimension() != 3:
        raise RehrsegInputError(f"{path} is {reader.GetDimension()}D; REHRSeg needs 3D thick-slice volumes.")
    check_thick_slice_spacing(reader.GetSpacing(), path, slice_axis, thick_spacing, scale_factor, model)


def check_thick_slice_spacing(spacing: Sequence[float], source: str, slice_axis: int, thick_spacing: float,
                              scale_factor: int, model: str) -> None:
    """The rule of :func:`check_thick_slice_header` on a spacing already read (``source`` names the image)."""
    in_plane = max(s for i, s in enumerate(spacing) if i != slice_axis)
    hr_spacing = thick_spacing / scale_factor
    if round(spacing[slice_axis] / hr_spacing) != scale_factor or in_plane * 1.5 > spacing[slice_axis]:
        low, high = (scale_factor - 0.5) * hr_spacing, (scale_factor + 0.5) * hr_spacing
        raise RehrsegInputError(
            f"{source} has spacing {tuple(round(s, 3) for s in spacing)} mm but {model} was trained for "
            f"{thick_spacing:.3g} mm slices along {AXIS_NAMES[slice_axis]} (r = {scale_factor}: {low:.3g}-{high:.3g} mm "
            f"accepted); resample or reorient it, or use a model trained for this geometry.")


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
        raise RehrsegInputError(f"{path} cannot be read by SimpleITK ({first}); convert it to NIfTI (.nii.gz).") from None


def _check_finite(path: str, image: sitk.Image) -> None:
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.floating):
        return
    if path.endswith((".nii", ".nii.gz")):
        # SimpleITK's NIfTI reader turns NaN and Inf into 0 without a word: look at the stored voxels
        import nibabel

        array = np.asanyarray(nibabel.load(path).dataobj)
    if not np.isfinite(array).all():
        raise RehrsegInputError(f"{path} contains NaN or Inf voxels; replace them (e.g. by 0) before training.")


def read_case(case: RawCase, require_label: bool = True) -> tuple[list[sitk.Image], sitk.Image | None]:
    """Read and check one case: 3D, finite, every channel and the label on one geometry."""
    images = []
    for path in case.image_files:
        image = read_image(path)
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise RehrsegInputError(
                f"{path} is a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} component(s); "
                f"REHRSeg needs one 3D scalar volume per channel file."
            )
        _check_finite(path, image)
        images.append(image)
    reference = Grid.from_image(images[0])
    for path, image in zip(case.image_files[1:], images[1:]):
        if not Grid.from_image(image).matches(reference):
            raise RehrsegInputError(f"{path} has another geometry than {case.image_files[0]}; resample all channels onto one grid.")
    label = None
    if case.label_file is not None:
        if not os.path.isfile(case.label_file):
            if require_label:
                raise RehrsegInputError(
                    f"{case.label_file} is missing: case '{case.identifier}' has no label; add it or remove the case's images."
                )
        else:
            label = read_image(case.label_file)
            if label.GetDimension() != 3:
                raise RehrsegInputError(f"{case.label_file} is {label.GetDimension()}D; labels must be 3D volumes like their images.")
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
            raise RehrsegInputError(f"{path} holds non-integer label values (e.g. {float(fractional[0]):g}); labels must "
                                    f"be whole class numbers: fix the label file.")
    present = np.unique(label)
    extra = sorted(set(present.tolist()) - set(int(v) for v in allowed))
    if extra:
        raise RehrsegInputError(
            f"{path} contains label values {extra} that dataset.json does not declare {sorted(allowed)}; fix the labels or dataset.json."
        )


def determine_geometry(grids: Sequence[tuple[str, Grid]], slice_axis: int | None = None,
                       scale_factor: int | None = None) -> DatasetGeometry:
    """Slice axis and r shared by all cases (explicit options win), or a one-line error naming the odd file."""
    found: list[tuple[str, int, int]] = []
    for path, grid in grids:
        axis = slice_axis if slice_axis is not None else detect_slice_axis(grid.spacing, path)
        if scale_factor is not None:
            check_scale_factor(scale_factor, path)
            r = int(scale_factor)
        else:
            r = infer_scale_factor(grid.spacing, axis, path)
        found.append((path, axis, r))
    first_path, first_axis, first_r = found[0]
    for path, axis, r in found[1:]:
        if axis != first_axis:
            raise RehrsegInputError(
                f"{path} has its thick slices along {AXIS_NAMES[axis]} but {first_path} along {AXIS_NAMES[first_axis]}; "
                f"all cases must share the slice axis — reorient the odd case."
            )
        if r != first_r:
            raise RehrsegInputError(
                f"{path} gives scale factor {r} but {first_path} gives {first_r}; all cases must share r — "
                f"resample the odd case or pass --scale-factor."
            )
    return DatasetGeometry(first_axis, first_r, tuple(grids[0][1].spacing))


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
