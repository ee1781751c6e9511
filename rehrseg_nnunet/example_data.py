"""The embedded default data set: thick-slice cases made from the MNI ICBM152 2009a template.

nilearn's wheel ships the 1 mm T1 template with grey- and white-matter probability maps; the
tissue labels are 0 background, 1 grey matter, 2 white matter (the larger probability when it
exceeds 0.5). Thick slices are simulated along z at several slice phases, so the cases are
different LR acquisitions of the same anatomy. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.degradation import simulate_thick_slices
from rehrseg_nnunet.errors import RehrsegInputError

LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}
TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


@dataclass
class ExampleCase:
    identifier: str
    hr_image: sitk.Image
    hr_label: sitk.Image


def mni_template() -> tuple[sitk.Image, sitk.Image]:
    """The MNI T1 template (float32, 0..1) and its tissue label map (uint8), both 1 mm."""
    try:
        from importlib.resources import files
        folder = files("nilearn.datasets") / "data"
    except ModuleNotFoundError:
        raise RehrsegInputError("nilearn is not installed; pip install 'rehrseg-nnunet[example]' for the example "
                                "data.") from None
    t1 = sitk.ReadImage(str(folder / TEMPLATE.format("t1")), sitk.sitkFloat32) / 255.0
    gm = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / TEMPLATE.format("gm")), sitk.sitkFloat32)) / 255.0
    wm = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / TEMPLATE.format("wm")), sitk.sitkFloat32)) / 255.0
    labels = np.where(np.maximum(gm, wm) > 0.5, np.where(wm > gm, 2, 1), 0).astype(np.uint8)
    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(t1)
    return t1, label


def head_box(image: sitk.Image, margin: int = 4) -> tuple[list[int], list[int]]:
    """The non-zero voxels' bounding box grown by ``margin`` voxels (clipped to the image), as SimpleITK's
    (index, size), x y z.

    The template's zero surround (half its voxels) is cropped: every stage works on the head alone, as
    nnU-Net's own cropping would, and the example runs twice as fast.
    """
    nonzero = np.nonzero(sitk.GetArrayFromImage(image))  # z y x
    low = [max(int(axis.min()) - margin, 0) for axis in nonzero[::-1]]
    high = [min(int(axis.max()) + 1 + margin, size) for axis, size in zip(nonzero[::-1], image.GetSize(), strict=True)]
    return low, [h - lo for lo, h in zip(low, high, strict=True)]


def example_cases(num_cases: int = 2, scale_factor: int = 4) -> list[ExampleCase]:
    """HR cases: the template cropped to the head (:func:`head_box`) at different slice phases (offset 0, r/2,
    … mm along z)."""
    t1, label = mni_template()
    box_start, box_size = head_box(t1)
    cases = []
    for index in range(num_cases):
        start = (index * scale_factor // max(num_cases, 1)) % scale_factor
        index_start = [box_start[0], box_start[1], box_start[2] + start]
        region_size = [box_size[0], box_size[1], box_size[2] - start]
        cases.append(ExampleCase(f"mni{index:03d}", sitk.RegionOfInterest(t1, region_size, index_start),
                                 sitk.RegionOfInterest(label, region_size, index_start)))
    return cases


def write_example_dataset(raw_root: str, dataset_id: int = 990, num_cases: int = 2, scale_factor: int = 4
                          ) -> tuple[str, list[ExampleCase]]:
    """Write ``Dataset<id>_MNIThick`` (thick slices along z, LR tissue labels) under ``raw_root``.

    Returns:
        (dataset folder, the HR cases kept as ground truth).
    """
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_MNIThick")
    os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(folder, "labelsTr"), exist_ok=True)
    cases = example_cases(num_cases, scale_factor)
    for case in cases:
        lr_image, lr_label = simulate_thick_slices(case.hr_image, 2, scale_factor, label=case.hr_label)
        sitk.WriteImage(lr_image, os.path.join(folder, "imagesTr", f"{case.identifier}_0000.nii.gz"))
        sitk.WriteImage(lr_label, os.path.join(folder, "labelsTr", f"{case.identifier}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as handle:
        json.dump({"channel_names": {"0": "T1"}, "labels": LABELS, "numTraining": len(cases),
                   "file_ending": ".nii.gz", "name": "MNIThick",
                   "description": f"MNI ICBM152 2009a T1 with {scale_factor}x thick slices simulated along z"},
                  handle, indent=2)
    return folder, cases
