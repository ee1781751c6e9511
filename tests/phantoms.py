"""Small synthetic thick-slice datasets for the tests (no real data needed)."""

from __future__ import annotations

import json
import os

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.degradation import simulate_thick_slices


def phantom_hr(shape=(48, 48, 48), seed=0, num_blobs=3):
    """(z, y, x) HR image with smooth blobs and a label map 0/1/2 (1 = blob shell, 2 = blob core)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    image = 0.2 * np.sin(3 * x + 2 * y) + 0.1 * z
    labels = np.zeros(shape, dtype=np.uint8)
    for _ in range(num_blobs):
        centre = rng.uniform(-0.5, 0.5, 3)
        radii = rng.uniform(0.2, 0.45, 3)
        d = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2
        image += 1.0 * (d < 1) + 0.8 * (d < 0.35)
        labels[d < 1] = np.maximum(labels[d < 1], 1)
        labels[d < 0.35] = 2
    image += rng.normal(0, 0.02, shape)
    return image.astype(np.float32), labels


def write_thick_slice_dataset(raw_root: str, dataset_id: int = 501, name: str = "Phantom", num_cases: int = 2,
                              r: int = 4, shape=(48, 48, 48), channels: int = 1,
                              direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(0.0, 0.0, 0.0),
                              file_ending: str = ".nii.gz", background_margin: int = 0) -> str:
    """Write DatasetXXX_Name with thick slices (spacing r mm along z, 1 mm in-plane) and LR labels.

    ``background_margin`` > 0 sets that many voxels at each in-plane border to exactly 0 (a masked scan).
    """
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(folder, "labelsTr"), exist_ok=True)
    for case in range(num_cases):
        image, labels = phantom_hr(shape, seed=case)
        if background_margin:
            inside = np.zeros(shape, dtype=bool)
            inside[:, background_margin:-background_margin, background_margin:-background_margin] = True
            image[~inside], labels[~inside] = 0.0, 0
        hr = sitk.GetImageFromArray(image)
        hr.SetDirection(direction)
        hr.SetOrigin(origin)
        lab = sitk.GetImageFromArray(labels)
        lab.CopyInformation(hr)
        lr_image, lr_label = simulate_thick_slices(hr, 2, r, label=lab)
        identifier = f"case{case:03d}"
        for channel in range(channels):
            out = lr_image if channel == 0 else sitk.Cast(lr_image * (1.5 + channel), sitk.sitkFloat32)
            sitk.WriteImage(out, os.path.join(folder, "imagesTr", f"{identifier}_{channel:04d}{file_ending}"))
        sitk.WriteImage(sitk.Cast(lr_label, sitk.sitkUInt8),
                        os.path.join(folder, "labelsTr", f"{identifier}{file_ending}"))
    with open(os.path.join(folder, "dataset.json"), "w") as handle:
        json.dump({"channel_names": {str(c): f"T{c + 1}" for c in range(channels)},
                   "labels": {"background": 0, "shell": 1, "core": 2},
                   "numTraining": num_cases, "file_ending": file_ending}, handle, indent=2)
    return folder
