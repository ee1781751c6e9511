"""HR prediction: nnU-Net's predictor and export, with the output on the HR grid of the thick-slice input.

nnU-Net preprocesses a thick-slice input onto the plans' HR spacing (nearest copies of each slice along
the slice axis, see planning.py); :class:`REHRSegPredictor` places the sliding windows so that each
window starts at a thick-slice boundary (the network's pooling then recovers the acquired slices) and
:func:`export_hr_prediction` writes the HR logits on the HR grid (n*r slices, spacing s/r, origin per
:meth:`rehrseg_nnunet.geometry.Grid.refine`) instead of resampling them back to the input grid.
"""

from __future__ import annotations

import copy
import json
import os
import sys

import torch
from nnunetv2.inference import predict_from_raw_data
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.geometry import Grid
from rehrseg_nnunet.planning import NETWORK_CLASS
from rehrseg_nnunet.training import EXT_TRAINER_FOLDER


def rehrseg_settings(configuration_manager) -> dict:
    return configuration_manager.configuration.get("rehrseg", {})


def hr_properties(properties: dict, plans_manager, configuration_manager) -> dict:
    """nnU-Net's per-case properties of a thick-slice input, rewritten for its HR grid."""
    settings = rehrseg_settings(configuration_manager)
    r, slice_axis = int(settings["scale_factor"]), int(settings["slice_axis"])
    numpy_axis = 2 - slice_axis
    transposed_axis = list(plans_manager.transpose_forward).index(numpy_axis)
    out = copy.deepcopy(properties)
    spacing = list(out["spacing"])
    spacing[numpy_axis] /= r
    out["spacing"] = spacing
    for key in ("shape_before_cropping", "shape_after_cropping_and_before_resampling"):
        shape = list(out[key])
        shape[transposed_axis] *= r
        out[key] = shape
    bbox = [list(b) for b in out["bbox_used_for_cropping"]]
    bbox[transposed_axis] = [bbox[transposed_axis][0] * r, bbox[transposed_axis][1] * r]
    out["bbox_used_for_cropping"] = bbox
    sitk_stuff = out["sitk_stuff"]
    numpy_shape = [properties["shape_before_cropping"][plans_manager.transpose_backward[i]] for i in range(3)]
    grid = Grid(tuple(int(s) for s in reversed(numpy_shape)), tuple(sitk_stuff["spacing"]),
                tuple(sitk_stuff["origin"]), tuple(sitk_stuff["direction"])).refine(slice_axis, r)
    sitk_stuff["spacing"] = tuple(float(s) for s in grid.spacing)
    sitk_stuff["origin"] = tuple(float(o) for o in grid.origin)
    return out


def export_hr_prediction(predicted_array_or_file, properties_dict: dict, configuration_manager, plans_manager,
                         *args, **kwargs):
    """nnU-Net's export_prediction_from_logits, on the HR grid (importable: runs in nnU-Net's spawn pool)."""
    return export_prediction_from_logits(predicted_array_or_file,
                                         hr_properties(properties_dict, plans_manager, configuration_manager),
                                         configuration_manager, plans_manager, *args, **kwargs)


def check_rehrseg_model(model_folder: str) -> None:
    """Refuse with one line unless the model folder's plans build the REHRSeg network (read before any weights)."""
    plans_file = os.path.join(model_folder, "plans.json")
    network = None
    if os.path.isfile(plans_file):
        with open(plans_file) as handle:
            configurations = json.load(handle).get("configurations", {})
        network = {c.get("architecture", {}).get("network_class_name") for c in configurations.values()}
    if not network or NETWORK_CLASS not in network:
        raise RehrsegInputError(
            f"the model in {model_folder} was not trained with REHRSeg (network "
            f"{', '.join(sorted(n for n in (network or {'unknown'}) if n))}); use nnUNetv2_predict for it, or train "
            f"with -tr REHRSegTrainer -p REHRSegPlans.")


class REHRSegPredictor(nnUNetPredictor):
    """nnUNetPredictor whose sliding windows start at thick-slice boundaries along the slice axis."""

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds,
                                             checkpoint_name: str = "checkpoint_final.pth"):
        check_rehrseg_model(model_training_output_dir)
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        self.scale_factor = int(rehrseg_settings(self.configuration_manager)["scale_factor"])

    def _internal_get_sliding_window_slicers(self, image_size):
        r = self.scale_factor
        last_start = image_size[1] - self.configuration_manager.patch_size[0]
        aligned = []
        for slicer in super()._internal_get_sliding_window_slicers(image_size):
            start = min(int(round(slicer[1].start / r)) * r, last_start)
            aligned_slicer = (slicer[0], slice(start, start + self.configuration_manager.patch_size[0]), *slicer[2:])
            if aligned_slicer not in aligned:
                aligned.append(aligned_slicer)
        return aligned

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        # nnU-Net pads a short image symmetrically, which could split a thick slice; pad by whole slices here
        r, patch = self.scale_factor, self.configuration_manager.patch_size[0]
        size = input_image.shape[1]
        if size >= patch:
            return super().predict_sliding_window_return_logits(input_image)
        missing = patch - size  # both multiples of r
        below = (missing // r // 2) * r
        padded = torch.nn.functional.pad(input_image, (0, 0, 0, 0, below, missing - below))
        return super().predict_sliding_window_return_logits(padded)[:, below:below + size]


def ensure_ext_trainer_path() -> None:
    """Let nnU-Net find REHRSegTrainer without the user exporting nnUNet_extTrainer first."""
    current = os.environ.get("nnUNet_extTrainer", "")
    if EXT_TRAINER_FOLDER not in current.split(os.pathsep):
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(p for p in (current, EXT_TRAINER_FOLDER) if p)


def run_nnunet_prediction(argv: list[str], from_model_folder: bool = False) -> None:
    """nnU-Net's prediction entry point on ``argv`` with the REHRSeg predictor and HR export swapped in."""
    ensure_ext_trainer_path()
    predict_from_raw_data.nnUNetPredictor = REHRSegPredictor
    predict_from_raw_data.export_prediction_from_logits = export_hr_prediction
    entry = "predict_entry_point_modelfolder" if from_model_folder else "predict_entry_point"
    program = "nnUNetv2_predict_from_modelfolder" if from_model_folder else "nnUNetv2_predict"
    saved = sys.argv
    sys.argv = [program, *argv]
    try:
        getattr(predict_from_raw_data, entry)()
    finally:
        sys.argv = saved
