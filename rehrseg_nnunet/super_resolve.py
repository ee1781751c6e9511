"""Applying an SR model to new thick-slice images: pseudo-HR images on the HR grid (``rehrseg_super_resolve``,
and the first step of an SR-guided REHRSeg prediction).

Cases are done one at a time (one case's arrays in memory), each file written under a temporary name,
verified and renamed, so a finished file is always complete and a re-run skips it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import SimpleITK as sitk
from tqdm import tqdm

from rehrseg_nnunet.dataset_io import check_finite_voxels, check_gzip_complete, check_thick_slice_header, read_image
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import remove_stale_partial_files, write_image_atomically
from rehrseg_nnunet.sr.infer import SuperResolver

#: subfolder of rehrseg_super_resolve's output with the uncertainty maps (CASE.ext, values in [0, 1])
UNCERTAINTY_FOLDER = "uncertainty"
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\..+)$")


def detect_file_ending(input_folder: str) -> str:
    """The one file ending of the ``CASE_XXXX.ext`` images in a folder.

    Raises:
        RehrsegInputError: no such image, or several endings.
    """
    if not os.path.isdir(input_folder):
        raise RehrsegInputError(f"the input folder {input_folder} does not exist; pass the folder of thick-slice "
                                "images.")
    endings = {m["ending"] for m in map(CHANNEL_FILE.match, sorted(os.listdir(input_folder))) if m}
    if not endings:
        raise RehrsegInputError(f"{input_folder} holds no CASE_0000.ext images; name the inputs as nnU-Net does "
                                "(CASE_0000.nii.gz, one file per channel).")
    if len(endings) > 1:
        raise RehrsegInputError(f"{input_folder} mixes the file endings {', '.join(sorted(endings))}; keep one "
                                "format per folder.")
    return endings.pop()


def input_cases(input_folder: str, file_ending: str, num_channels: int) -> list[list[str]]:
    """The folder's cases as lists of channel files; one line when a case's channel count differs."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    cases = create_lists_from_splitted_dataset_folder(input_folder, file_ending)
    for files in cases:
        if len(files) != num_channels:
            raise RehrsegInputError(f"{files[0]}: its case has {len(files)} channel file(s) but the SR model takes "
                                    f"{num_channels} (CASE_0000{file_ending} ... CASE_{num_channels - 1:04d}"
                                    f"{file_ending}); add or remove channels.")
    return cases


def check_cases_fit(cases: Sequence[Sequence[str]], resolver: SuperResolver, model: str) -> None:
    """Every file must have the SR model's slice axis and slice spacing (rehrseg_predict's rule) and finite
    voxels (NaN or Inf would spread through the SR network)."""
    config = resolver.config
    for files in cases:
        for path in files:
            check_gzip_complete(path)
            check_thick_slice_header(path, config.slice_axis, config.lr_spacing[config.slice_axis],
                                     config.scale_factor, model)
    for files in cases:
        for path in files:
            check_finite_voxels(path, "super-resolving it")


def is_complete_image(path: str) -> bool:
    """A finished output: present, its compressed stream complete and its header readable."""
    if not os.path.isfile(path):
        return False
    try:
        check_gzip_complete(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
    except (RehrsegInputError, RuntimeError):
        return False
    return True


def super_resolve_cases(cases: Sequence[Sequence[str]], output_folder: str, resolver: SuperResolver,
                        uncertainty: bool = False, overwrite: bool = False, progress: bool = True
                        ) -> list[list[str]]:
    """Super-resolve each case into ``output_folder`` under its own file names, one case at a time.

    Args:
        cases: channel files per case (``CASE_0000.ext`` ...), already checked against the model.
        output_folder: where the pseudo-HR images go (created).
        resolver: the SR model.
        uncertainty: also write ``uncertainty/CASE.ext`` (the uncertainty map, [0, 1]).
        overwrite: redo cases whose outputs exist (default: skip complete ones, redo broken ones).
        progress: show a progress bar.

    Returns:
        The written (or kept) pseudo-HR files per case, in the order of ``cases``.
    """
    os.makedirs(output_folder, exist_ok=True)
    remove_stale_partial_files(output_folder)
    written = []
    for files in tqdm(cases, desc="super-resolving", unit="case", disable=not progress):
        targets = [os.path.join(output_folder, os.path.basename(f)) for f in files]
        match = CHANNEL_FILE.match(os.path.basename(files[0]))
        uncertainty_file = os.path.join(output_folder, UNCERTAINTY_FOLDER, f"{match['case']}{match['ending']}")
        wanted = targets + ([uncertainty_file] if uncertainty else [])
        written.append(targets)
        if not overwrite and all(is_complete_image(t) for t in wanted):
            continue  # the caller says which cases were kept
        images = [read_image(f) for f in files]
        result = resolver(images, None, source=files[0])
        del images
        for image, target in zip(result.images, targets, strict=True):
            write_image_atomically(image, target)
        if uncertainty:
            os.makedirs(os.path.dirname(uncertainty_file), exist_ok=True)
            write_image_atomically(result.uncertainty, uncertainty_file)
        del result
    return written
