"""HR prediction: nnU-Net's predictor and export, with the output on the HR grid of the thick-slice input.

nnU-Net preprocesses a thick-slice input onto the plans' HR spacing (nearest copies of each slice along
the slice axis, see planning.py); :class:`REHRSegPredictor` places the sliding windows so that each
window starts at a thick-slice boundary (the network's pooling then recovers the acquired slices) and
:func:`export_hr_prediction` writes the HR logits on the HR grid (n*r slices, spacing s/r, origin per
:meth:`rehrseg_nnunet.geometry.Grid.refine`) instead of resampling them back to the input grid.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import os
import shutil
import sys

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.inference import predict_from_raw_data
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from rehrseg_nnunet.contract import StageContract
from rehrseg_nnunet.dataset_io import check_finite_voxels, check_gzip_complete, check_thick_slice_header
from rehrseg_nnunet.degradation import labels_to_lr
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import (
    hash_mismatch,
    partial_path,
    process_alive,
    publish,
    remove_stale_partial_files,
    write_image_atomically,
)
from rehrseg_nnunet.geometry import Grid
from rehrseg_nnunet.planning import NETWORK_CLASS
from rehrseg_nnunet.sr.carried import RETRAIN_HINT, decode_bundle
from rehrseg_nnunet.super_resolve import is_complete_image, super_resolve_cases
from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

#: hidden subfolder of the output folder where a guided prediction keeps its super-resolved inputs meanwhile
#: (``.rehrseg_super_resolved.PID``: one per process, so predictions into one folder at once do not share it)
SUPER_RESOLVED_FOLDER = ".rehrseg_super_resolved"
CARRIED_KEY = "carried_sr.bundle"
GUIDED_KEY_PREFIX = "rehrseg.seg_layers.hr_encoder."


def model_contract(plans_manager, configuration_manager) -> StageContract | None:
    """The stage contract of a loaded model's configuration (None for a model rehrseg_plan did not plan)."""
    return StageContract.from_plans_configuration(configuration_manager.configuration,
                                                  plans_manager.transpose_forward,
                                                  f"plans '{plans_manager.plans_name}' of the model")


def hr_properties(properties: dict, plans_manager, configuration_manager) -> dict:
    """nnU-Net's per-case properties of a thick-slice input, rewritten for its HR grid."""
    contract = model_contract(plans_manager, configuration_manager)
    r, slice_axis = contract.scale_factor, contract.slice_axis
    numpy_axis = contract.numpy_slice_axis
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


def is_hr_input(properties: dict, plans_manager, configuration_manager) -> bool:
    """Whether nnU-Net read a case on the HR grid (a super-resolved input) rather than the thick-slice grid."""
    contract = model_contract(plans_manager, configuration_manager)
    spacing = properties["spacing"][contract.numpy_slice_axis]
    hr = contract.thick_spacing / contract.scale_factor
    return abs(spacing - hr) < abs(spacing - contract.thick_spacing)


def _export_atomically(predicted_array_or_file, properties: dict, configuration_manager, plans_manager,
                       dataset_json_dict_or_file, output_file_truncated: str, save_probabilities: bool = False,
                       convert=None) -> None:
    """nnU-Net's export to a partial name, then renamed: a killed export never leaves a file that passes for a
    finished one (the segmentation is renamed last, so its presence means the case is complete)."""
    dataset_json = dataset_json_dict_or_file
    if isinstance(dataset_json, str):
        with open(dataset_json) as handle:
            dataset_json = json.load(handle)
    ending = dataset_json["file_ending"]
    partial = partial_path(output_file_truncated + ending)[: -len(ending)]
    suffixes = [".npz", ".pkl"] if save_probabilities else []
    try:
        export_prediction_from_logits(predicted_array_or_file, properties, configuration_manager, plans_manager,
                                      dataset_json, partial, save_probabilities)
        if convert is not None:
            convert(partial, ending, save_probabilities)
        for suffix in suffixes + [ending]:
            publish(partial + suffix, output_file_truncated + suffix)
    finally:
        for suffix in suffixes + [ending]:
            if os.path.exists(partial + suffix):
                os.remove(partial + suffix)


def export_hr_prediction(predicted_array_or_file, properties_dict: dict, configuration_manager, plans_manager,
                         dataset_json_dict_or_file, output_file_truncated: str, save_probabilities: bool = False):
    """nnU-Net's export on the HR grid, written atomically (importable: runs in nnU-Net's spawn pool). A
    thick-slice input's properties are rewritten for its HR grid; a super-resolved input is on it already."""
    if not is_hr_input(properties_dict, plans_manager, configuration_manager):
        properties_dict = hr_properties(properties_dict, plans_manager, configuration_manager)
    _export_atomically(predicted_array_or_file, properties_dict, configuration_manager, plans_manager,
                       dataset_json_dict_or_file, output_file_truncated, save_probabilities)


def export_on_input_grid(predicted_array_or_file, properties_dict: dict, configuration_manager, plans_manager,
                         dataset_json_dict_or_file, output_file_truncated: str, save_probabilities: bool = False):
    """Stock ``nnUNetv2_predict``'s export for a REHRSeg model, atomic and on the thick-slice input's grid: a
    super-resolved input's HR segmentation comes down by the majority rule of each group of r slices (the LR
    label rule used everywhere), its probabilities by their mean."""
    convert = None
    if is_hr_input(properties_dict, plans_manager, configuration_manager):
        contract = model_contract(plans_manager, configuration_manager)
        convert = functools.partial(_hr_files_to_lr, contract=contract)
    _export_atomically(predicted_array_or_file, properties_dict, configuration_manager, plans_manager,
                       dataset_json_dict_or_file, output_file_truncated, save_probabilities, convert)


def _hr_files_to_lr(partial: str, ending: str, save_probabilities: bool, contract: StageContract) -> None:
    r, numpy_axis = contract.scale_factor, contract.numpy_slice_axis
    hr = sitk.ReadImage(partial + ending)
    lr_grid = Grid.from_image(hr).coarsen(contract.slice_axis, r)
    lr = lr_grid.image_from_array(labels_to_lr(sitk.GetArrayFromImage(hr), numpy_axis, r))
    os.remove(partial + ending)
    write_image_atomically(lr, partial + ending)
    if save_probabilities:
        probabilities = np.load(partial + ".npz")["probabilities"]
        shape = list(probabilities.shape)
        shape[numpy_axis + 1: numpy_axis + 2] = [shape[numpy_axis + 1] // r, r]
        np.savez_compressed(partial + ".npz", probabilities=probabilities.reshape(shape).mean(numpy_axis + 2))


def check_rehrseg_model(model_folder: str) -> None:
    """Refuse with one line unless the model folder's plans build the REHRSeg network (read before any weights)."""
    plans_file = os.path.join(model_folder, "plans.json")
    network = None
    missing = [n for n in ("plans.json", "dataset.json") if not os.path.isfile(os.path.join(model_folder, n))]
    if missing:
        raise RehrsegInputError(f"{model_folder} has no {' or '.join(missing)}: it is not a complete trained model "
                                "(an interrupted export or install?); install it again from a complete export.")
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
        self.scale_factor = model_contract(self.plans_manager, self.configuration_manager).scale_factor

    def _internal_get_sliding_window_slicers(self, image_size):
        r = self.scale_factor
        # image_size is the (slice, y, x) shape of the padded image (nnU-Net passes data.shape[1:])
        patch = self.configuration_manager.patch_size[0]
        last_start = image_size[0] - patch
        aligned = []
        for slicer in super()._internal_get_sliding_window_slicers(image_size):
            starts = [min(int(round(slicer[1].start / r)) * r, last_start)]
            if slicer[1].start == last_start and starts[0] != last_start:
                # nnU-Net's last window ends at the image's end; when the size is not a multiple of r (an input
                # spacing slightly off the model's), the rounded one would not: keep both
                starts.append(last_start)
            for start in starts:
                aligned_slicer = (slicer[0], slice(start, start + patch), *slicer[2:])
                if aligned_slicer not in aligned:
                    aligned.append(aligned_slicer)
        return aligned

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        # nnU-Net pads a short image symmetrically, which could split a thick slice; pad by whole slices here
        r, patch = self.scale_factor, self.configuration_manager.patch_size[0]
        size = input_image.shape[1]
        if size >= patch:
            logits = super().predict_sliding_window_return_logits(input_image)
        else:
            missing = patch - size
            below = (missing // r // 2) * r
            padded = torch.nn.functional.pad(input_image, (0, 0, 0, 0, below, missing - below))
            logits = super().predict_sliding_window_return_logits(padded)[:, below:below + size]
        if not torch.isfinite(logits).all():  # a voxel no window covered would be NaN, exported as background
            raise RuntimeError(f"REHRSeg prediction left {int((~torch.isfinite(logits)).sum())} logits undefined "
                               f"(image {tuple(input_image.shape[1:])}, patch "
                               f"{tuple(self.configuration_manager.patch_size)}).")
        return logits


def check_prediction_inputs(input_folder: str, model_folder: str, configuration: str = "3d_fullres") -> int:
    """:func:`check_input_folder` for the model stored in ``model_folder``.

    Returns:
        The number of cases.
    """
    with open(os.path.join(model_folder, "dataset.json")) as handle:
        dataset_json = json.load(handle)
    plans_file = os.path.join(model_folder, "plans.json")
    with open(plans_file) as handle:
        plans = json.load(handle)
    contract = StageContract.from_plans_configuration(plans["configurations"][configuration],
                                                      plans["transpose_forward"], plans_file)
    if contract is None:
        raise RehrsegInputError(f"{plans_file} has no REHRSeg stage contract in configuration {configuration}; "
                                f"train the model with -p REHRSegPlans (written by rehrseg_plan).")
    return check_input_folder(input_folder, dataset_json, contract, f"the model in {model_folder}")


def check_input_folder(input_folder: str, dataset_json: dict, contract: StageContract, model: str) -> int:
    """Every input case must fit the model: its file ending, channel count, slice axis and slice spacing.

    Slices that hold r of the model's HR slices (rounded) and are at least 1.5x coarser than in-plane (see
    :func:`rehrseg_nnunet.dataset_io.check_thick_slice_header`). Only headers are read.

    Args:
        input_folder: nnU-Net-style folder of CASE_XXXX images.
        dataset_json: the model's dataset.json.
        contract: the stage contract of the model's configuration.
        model: how error messages name the model.

    Returns:
        The number of cases.

    Raises:
        RehrsegInputError: one line naming the file and the fix.
    """
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    ending, channels = dataset_json["file_ending"], len(dataset_json["channel_names"])
    if not os.path.isdir(input_folder):
        raise RehrsegInputError(f"the input folder {input_folder} does not exist; pass the folder of thick-slice "
                                "images.")
    cases = create_lists_from_splitted_dataset_folder(input_folder, ending)
    if not cases:
        raise RehrsegInputError(f"{input_folder} holds no CASE_0000{ending} images ({ending} is the model's file "
                                f"ending); convert the inputs to {ending} with nnU-Net's naming.")
    for files in cases:
        if len(files) != channels:
            raise RehrsegInputError(f"{files[0]}: its case has {len(files)} channel file(s) but the model takes "
                                    f"{channels} (CASE_0000{ending} … CASE_{channels - 1:04d}{ending}); add or "
                                    f"remove channels.")
        for path in files:
            check_gzip_complete(path)
            check_thick_slice_header(path, contract.slice_axis, contract.thick_spacing, contract.scale_factor, model)
    for files in cases:  # voxels only once every header fits
        for path in files:
            check_finite_voxels(path)
    return len(cases)


def install_stock_predictor_hook() -> None:
    """Give stock ``nnUNetv2_predict`` with a REHRSeg model what ``rehrseg_predict`` has: every input checked
    against the model (one line naming the file, exit status 2, nothing predicted, the ``-o`` folder nnU-Net
    created removed again), sliding windows that start at thick-slice boundaries, super-resolution of each
    input by the SR model a guided network carries, and atomic exports that ``--continue_prediction`` redoes
    when incomplete. Its export stays on the thick-slice input's grid.

    nnU-Net imports the trainer shim while it initialises the predictor from the model folder, so this runs
    before ``predict_from_files``; models without a ``rehrseg`` block are left alone.
    """
    for name in ("predict_from_files", "predict_from_files_sequential"):
        original = getattr(nnUNetPredictor, name)
        if not getattr(original, "rehrseg_hook", False):
            setattr(nnUNetPredictor, name, _with_rehrseg_checks(original))


def is_guided(network) -> bool:
    """Whether a REHRSeg network predicts from super-resolved images (an HR guidance design)."""
    from rehrseg_nnunet.training.fine_tuning import unwrap
    return getattr(unwrap(network), "hr_guidance", "none") != "none"


def carried_payload(network, dataset_json: dict, source: str) -> dict:
    """The SR model a guided network carries, checked against the model's stage contract (the SR checkpoint
    that made its training data).

    Raises:
        RehrsegInputError: none carried, damaged, or another SR model than the dataset's.
    """
    from rehrseg_nnunet.training.fine_tuning import unwrap
    payload = decode_bundle(unwrap(network).carried_sr.bundle, source)
    contract = StageContract.from_dataset_json(dataset_json, f"the dataset.json of {source}")
    carried = payload["sha256"].get(payload["stage"])
    if contract.sr_checkpoint_sha256 and carried != contract.sr_checkpoint_sha256:
        raise RehrsegInputError(f"the SR model carried by {source} is not the one that made its training data "
                                f"(SHA-256 {str(carried)[:12]}... vs {contract.sr_checkpoint_sha256[:12]}... in its "
                                f"dataset.json); {RETRAIN_HINT}.")
    return payload


def check_carried_sr_model(model_folder: str, folds: list[str], checkpoint_name: str) -> None:
    """Before anything is written: a guided model's checkpoints must carry the SR model of its dataset."""
    from rehrseg_nnunet.sr.carried import CarriedSRModel

    with open(os.path.join(model_folder, "dataset.json")) as handle:
        dataset_json = json.load(handle)
    for fold in folds:
        path = os.path.join(model_folder, f"fold_{fold}", checkpoint_name)
        mismatch = hash_mismatch(path, print)
        if mismatch:
            raise RehrsegInputError(f"{path} is damaged ({mismatch}), so it is not used; restore it from the "
                                    "training (or install the model again from its export) or train that fold again.")
        try:
            weights = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]
        except Exception as error:  # noqa: BLE001 - a damaged file without a record unpickles into any error
            raise RehrsegInputError(f"{path} is not a readable nnU-Net checkpoint ({type(error).__name__}); train "
                                    "that fold again (or --c to resume it) or restore the file.") from None
        if not any(k.startswith(GUIDED_KEY_PREFIX) for k in weights):
            continue
        holder = CarriedSRModel()
        holder.bundle = weights.get(CARRIED_KEY, holder.bundle)
        carried_payload(holder_network(holder), dataset_json, path)


def holder_network(carried) -> torch.nn.Module:
    """A module with ``carried_sr`` (what :func:`carried_payload` reads), for a bundle read off a checkpoint."""
    module = torch.nn.Module()
    module.carried_sr = carried
    return module


def _case_name(files: list[str], ending: str) -> str:
    return os.path.basename(files[0])[: -(len(ending) + 5)]


def _remove_incomplete_outputs(output_folder: str, ending: str) -> None:
    """What a killed run left: partial files of dead writers, and outputs that do not read to their end."""
    if not os.path.isdir(output_folder):
        return
    remove_stale_partial_files(output_folder)
    for name in os.listdir(output_folder):
        path = os.path.join(output_folder, name)
        if name.endswith(ending) and not is_complete_image(path):
            print(f"{path} is incomplete or unreadable: predicting it again")
            os.remove(path)


def _predict_guided(self, predict_method, bound: inspect.BoundArguments):
    """Super-resolve the cases still to predict (one case at a time) with the carried SR model, then predict
    from those images; the super-resolved copies are removed afterwards."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    arguments = bound.arguments
    output = arguments["output_folder_or_list_of_truncated_output_files"]
    if not isinstance(output, str):
        raise RehrsegInputError("an SR-guided REHRSeg model predicts into an output folder; pass -o FOLDER.")
    ending = self.dataset_json["file_ending"]
    source = arguments["list_of_lists_or_source_folder"]
    cases = create_lists_from_splitted_dataset_folder(source, ending) if isinstance(source, str) else source
    payload = carried_payload(self.network, self.dataset_json, f"the REHRSeg model ({self.trainer_name})")
    if not arguments["overwrite"]:
        cases = [c for c in cases if not os.path.isfile(os.path.join(output, _case_name(c, ending) + ending))]
    if not cases:
        print(f"every case already has its segmentation in {output}; nothing to predict")
        return None
    from rehrseg_nnunet.sr.infer import SuperResolver

    resolver = SuperResolver.from_payload(payload, self.device, source=f"the SR model of {self.trainer_name}")
    remove_stale_work_folders(output)
    super_resolved = os.path.join(output, f"{SUPER_RESOLVED_FOLDER}.{os.getpid()}")
    try:
        arguments["list_of_lists_or_source_folder"] = super_resolve_cases(
            cases, super_resolved, resolver, overwrite=True, progress=self.allow_tqdm)
        del resolver, payload
        return predict_method(*bound.args, **bound.kwargs)
    finally:
        shutil.rmtree(super_resolved, ignore_errors=True)


def remove_stale_work_folders(output: str) -> None:
    """Delete the super-resolved work folders that killed predictions into ``output`` left (live ones stay)."""
    for name in os.listdir(output) if os.path.isdir(output) else []:
        pid = name[len(SUPER_RESOLVED_FOLDER) + 1:]
        if name.startswith(SUPER_RESOLVED_FOLDER + ".") and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(os.path.join(output, name), ignore_errors=True)


def _refuse(error: RehrsegInputError, output) -> None:
    """Stock nnUNetv2_predict's refusal: one line, exit status 2, and no empty -o folder left behind."""
    if isinstance(output, str) and os.path.isdir(output) and not os.listdir(output):
        os.rmdir(output)
    print(f"nnUNetv2_predict: error: {error}", file=sys.stderr)
    raise SystemExit(2)


def _with_rehrseg_checks(predict_method):
    # nnU-Net reads its own parameters back through inspect.signature(self.predict_from_files): keep them
    @functools.wraps(predict_method)
    def predict(self, list_of_lists_or_source_folder, *args, **kwargs):
        manager = getattr(self, "configuration_manager", None)
        contract = model_contract(self.plans_manager, manager) if manager is not None else None
        if contract is None:
            return predict_method(self, list_of_lists_or_source_folder, *args, **kwargs)
        bound = inspect.signature(predict_method).bind(self, list_of_lists_or_source_folder, *args, **kwargs)
        bound.apply_defaults()
        output = bound.arguments["output_folder_or_list_of_truncated_output_files"]
        stock = not isinstance(self, REHRSegPredictor)
        try:
            if stock and isinstance(list_of_lists_or_source_folder, str):
                check_input_folder(list_of_lists_or_source_folder, self.dataset_json, contract,
                                   f"the REHRSeg model ({self.trainer_name})")
            if is_guided(self.network):
                carried_payload(self.network, self.dataset_json, f"the REHRSeg model ({self.trainer_name})")
        except RehrsegInputError as error:
            if not stock:
                raise
            _refuse(error, output)
        if stock:
            # the same network and weights; only the window placement (and the short-image padding) differ
            self.__class__ = REHRSegPredictor
            self.scale_factor = contract.scale_factor
            predict_from_raw_data.export_prediction_from_logits = export_on_input_grid
        if not bound.arguments["overwrite"] and isinstance(output, str):
            _remove_incomplete_outputs(output, self.dataset_json["file_ending"])
        if is_guided(self.network):
            return _predict_guided(self, predict_method, bound)
        return predict_method(*bound.args, **bound.kwargs)

    predict.rehrseg_hook = True
    return predict


def ensure_ext_trainer_path() -> None:
    """Let nnU-Net find REHRSegTrainer without the user exporting nnUNet_extTrainer first."""
    current = os.environ.get("nnUNet_extTrainer", "")
    if EXT_TRAINER_FOLDER not in current.split(os.pathsep):
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(p for p in (current, EXT_TRAINER_FOLDER) if p)


def run_nnunet_prediction(argv: list[str], from_model_folder: bool = False) -> None:
    """nnU-Net's prediction entry point on ``argv`` with the REHRSeg predictor and HR export swapped in."""
    ensure_ext_trainer_path()
    install_stock_predictor_hook()
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
