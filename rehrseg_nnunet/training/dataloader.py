"""nnU-Net's data loader, plus the uncertainty map: cropped with the same box and sent through the same
batchgeneratorsv2 spatial transforms as the label (as ``regression_target``, which the spatial,
mirroring and pseudo-2D transforms move with the label and the intensity transforms leave alone)."""

from __future__ import annotations

import os

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from threadpoolctl import threadpool_limits

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.planning import UNCERTAINTY_SUFFIX, uncertainty_folder_of


def uncertainty_file(dataset, identifier: str) -> str:
    """The preprocessed uncertainty map of a case: beside the data folder (where rehrseg_plan writes it, safe from
    nnU-Net's re-preprocessing), else inside it (where rehrseg-nnunet 0.2.0 wrote it)."""
    path = os.path.join(uncertainty_folder_of(dataset.source_folder), identifier + UNCERTAINTY_SUFFIX)
    if os.path.isfile(path):
        return path
    old_path = os.path.join(dataset.source_folder, identifier + UNCERTAINTY_SUFFIX)
    if os.path.isfile(old_path):
        return old_path
    dataset_name = os.path.basename(os.path.dirname(os.path.normpath(dataset.source_folder)))
    raise RehrsegInputError(f"{path} is missing; run rehrseg_plan -d {dataset_name} (with the options it was planned "
                            f"with) to preprocess the uncertainty maps.")


def load_uncertainty(dataset, identifier: str, data_shape: tuple[int, ...]) -> np.ndarray:
    """A case's uncertainty map (memory-mapped), which must have the shape of its preprocessed image."""
    path = uncertainty_file(dataset, identifier)
    uncertainty = np.load(path, mmap_mode="r")
    if tuple(uncertainty.shape[1:]) != tuple(data_shape[1:]):
        dataset_name = os.path.basename(os.path.dirname(os.path.normpath(dataset.source_folder)))
        raise RehrsegInputError(f"{path} has shape {list(uncertainty.shape[1:])} but its preprocessed image "
                                f"{list(data_shape[1:])}; run rehrseg_plan -d {dataset_name} --overwrite.")
    return uncertainty


class UncertaintyDataLoader(nnUNetDataLoader):
    """Batches with ``data``, ``target`` (the HR label patch), ``uncertainty`` (B, 1, …) and ``keys``."""

    def generate_train_batch(self) -> dict:
        selected_keys = self.get_indices()
        data_all, seg_all, uncertainty_all = None, None, None
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for j, identifier in enumerate(selected_keys):
                data, seg, _, properties = self._data.load_case(identifier)
                uncertainty = load_uncertainty(self._data, identifier, data.shape)
                lbs, ubs = self.get_bbox(data.shape[1:], self.get_do_oversample(j), properties["class_locations"])
                bbox = [[lo, hi] for lo, hi in zip(lbs, ubs, strict=True)]
                sample = {
                    "image": torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float(),
                    "segmentation": torch.from_numpy(
                        crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16),
                    "regression_target": torch.from_numpy(crop_and_pad_nd(uncertainty, bbox, 0).astype(np.float32)),
                }
                if self.transforms is not None:
                    sample = self.transforms(**sample)
                if data_all is None:
                    data_all = torch.empty((self.batch_size, *sample["image"].shape), dtype=torch.float32)
                    seg_all = torch.empty((self.batch_size, *sample["segmentation"].shape),
                                          dtype=sample["segmentation"].dtype)
                    uncertainty_all = torch.empty((self.batch_size, *sample["regression_target"].shape),
                                                  dtype=torch.float32)
                data_all[j] = sample["image"]
                seg_all[j] = sample["segmentation"]
                uncertainty_all[j] = sample["regression_target"]
        return {"data": data_all, "target": seg_all, "uncertainty": uncertainty_all.clamp_(0, 1), "keys": selected_keys}
