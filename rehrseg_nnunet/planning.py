"""REHRSegPlans: the nnU-Net plans that train and predict with :class:`REHRSegUNet`.

Starts from the stock ``nnUNetPlans.json`` of a pseudo-HR dataset and changes what REHRSeg needs:
- the slice axis comes first in the preprocessed arrays (``transpose_forward``), so the network's
  pooling, dummy-2D augmentation and rotation work on axis 0;
- the 3d_fullres spacing is the HR spacing (slice spacing / r) and data are resampled "separate-z"
  with nearest neighbour along the slice axis, so that a thick-slice test image becomes exact copies
  of its slices on the HR grid (the network's pooling then recovers the acquired slices);
- the LR U-Net topology comes from nnU-Net's own helper on the LR spacing and LR patch; the HR patch
  along the slice axis is r times the LR one;
- the uncertainty maps are cropped and resampled like the images and stored beside them.
"""

from __future__ import annotations

import copy
import json
import os
import pickle

import numpy as np
from tqdm import tqdm

from rehrseg_nnunet.contract import CONTRACT_KEY, StageContract
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import save_npy_atomically, write_json_atomically

PLANS_NAME = "REHRSegPlans"
NETWORK_CLASS = "rehrseg_nnunet.network.REHRSegUNet"
UNCERTAINTY_SUFFIX = "_uncertainty.npy"
#: appended to a preprocessed data folder's path: where rehrseg_plan keeps its uncertainty maps (nnU-Net's
#: preprocessing deletes the data folder itself, so maps inside it would not survive nnUNetv2_plan_and_preprocess)
UNCERTAINTY_FOLDER_SUFFIX = "_rehrseg_uncertainty"


def uncertainty_folder_of(data_folder: str) -> str:
    """The folder of the preprocessed uncertainty maps that belong to a preprocessed data folder (its sibling)."""
    return os.path.normpath(data_folder) + UNCERTAINTY_FOLDER_SUFFIX


def lr_topology(hr_spacing: list[float], hr_patch: list[int], scale_factor: int, nearest: bool = False) -> dict:
    """U-Net topology for the LR patch (axis 0 = slice axis) from nnU-Net's own helper.

    Args:
        nearest: round each axis of ``hr_patch`` to the nearest valid size (a requested patch); otherwise the slice
            axis is floored to whole thick slices and nnU-Net's helper pads every axis up (the default patch).

    Returns:
        dict with ``lr_spacing``, ``lr_patch_size``, ``hr_patch_size``, ``kernel_sizes`` and ``strides``.
    """
    topology = helper_topology(hr_spacing, hr_patch, scale_factor)
    if not nearest:
        return topology
    multiples = patch_multiples(topology["strides"], scale_factor)
    candidate = [max(m, int(np.floor(p / m + 0.5)) * m) for p, m in zip(hr_patch, multiples, strict=True)]
    if candidate == topology["hr_patch_size"]:
        return topology
    # the rounded patch may pool a different number of times; nnU-Net's helper then decides, as for any patch
    return helper_topology(hr_spacing, candidate, scale_factor)


def patch_multiples(strides: list[list[int]], scale_factor: int) -> list[int]:
    """What each axis of the HR patch must be a multiple of: r x 2^poolings along the slice axis (whole thick
    slices, pooled by the U-Net), 2^poolings in-plane."""
    factors = [int(np.prod([stride[axis] for stride in strides])) for axis in range(len(strides[0]))]
    return [scale_factor * factors[0], *factors[1:]]


def helper_topology(hr_spacing: list[float], hr_patch: list[int], scale_factor: int) -> dict:
    """:func:`lr_topology` as nnU-Net's helper gives it: slice axis floored to whole thick slices, axes padded up."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    lr_spacing = [hr_spacing[0] * scale_factor, *hr_spacing[1:]]
    lr_patch = [max(1, int(hr_patch[0]) // scale_factor), *[int(p) for p in hr_patch[1:]]]
    _, pool_kernels, conv_kernels, lr_patch, _ = get_pool_and_conv_props(lr_spacing, lr_patch, 4, 999999)
    lr_patch = [int(p) for p in lr_patch]
    return {
        "lr_spacing": [float(s) for s in lr_spacing],
        "lr_patch_size": lr_patch,
        "hr_patch_size": [lr_patch[0] * scale_factor, *lr_patch[1:]],
        "kernel_sizes": [[int(k) for k in kernel] for kernel in conv_kernels],
        "strides": [[int(s) for s in stride] for stride in pool_kernels],
    }


#: architecture keys copied from the LR model's plans, so its checkpoint fits the inner U-Net tensor for tensor
TOPOLOGY_KEYS = ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage",
                 "n_conv_per_stage_decoder")


def topology_from_lr_plans(lr_plans: dict, transpose_forward: list[int], hr_spacing: list[float], scale_factor: int,
                           source: str) -> tuple[dict, dict]:
    """The LR model's U-Net (its 3d_fullres configuration), on REHRSeg's axis order (slice axis first).

    Args:
        lr_plans: the LR model's plans (``plans.json`` of its results folder, or its ``nnUNetPlans.json``).
        transpose_forward: REHRSeg's axis order (numpy axes, slice axis first).
        hr_spacing: the pseudo-HR spacing on that order.
        scale_factor: r.
        source: the plans' path, for error messages.

    Returns:
        (topology as :func:`lr_topology` gives it, the LR architecture's kwargs on REHRSeg's axis order).
    """
    config = lr_plans.get("configurations", {}).get("3d_fullres")
    if not config or "architecture" not in config:
        raise RehrsegInputError(f"{source} has no 3d_fullres configuration with an architecture; pass the plans of a "
                                f"3d_fullres nnU-Net trained on the thick-slice dataset.")
    order = [list(lr_plans["transpose_forward"]).index(axis) for axis in transpose_forward]
    lr_spacing = [float(config["spacing"][i]) for i in order]
    expected = [hr_spacing[0] * scale_factor, *hr_spacing[1:]]
    if not np.allclose(lr_spacing, expected, rtol=0.05):
        raise RehrsegInputError(
            f"{source} plans spacing {[round(v, 3) for v in lr_spacing]} mm (slice axis first) but this dataset's "
            f"thick slices are {[round(v, 3) for v in expected]} mm; pass the plans of the nnU-Net trained on "
            f"its source dataset.")
    arch = copy.deepcopy(config["architecture"]["arch_kwargs"])
    arch["kernel_sizes"] = [[int(kernel[i]) for i in order] for kernel in arch["kernel_sizes"]]
    arch["strides"] = [[int(stride[i]) for i in order] for stride in arch["strides"]]
    lr_patch = [int(config["patch_size"][i]) for i in order]
    topology = {"lr_spacing": expected, "lr_patch_size": lr_patch,
                "hr_patch_size": [lr_patch[0] * scale_factor, *lr_patch[1:]],
                "kernel_sizes": arch["kernel_sizes"], "strides": arch["strides"]}
    return topology, {key: arch[key] for key in TOPOLOGY_KEYS}


#: 3d_fullres entries that only matter for a case whose shape changes when it is resampled to the target spacing
RESAMPLING_KEYS = ("resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg", "resampling_fn_seg_kwargs")
#: 3d_fullres entries that decide what nnU-Net's preprocessing writes (besides ``transpose_forward``)
PREPROCESSING_KEYS = ("preprocessor_name", "normalization_schemes", "use_mask_for_norm", "spacing", *RESAMPLING_KEYS)


def same_preprocessing(source_plans: dict, source_config: dict, plans: dict, config: dict,
                       dataset_fingerprint: dict | None = None) -> bool:
    """Whether nnU-Net's preprocessing writes the same data for two plans' 3d_fullres configurations, so that they
    may share a data identifier (and with it the preprocessed folder).

    Same axis order, spacing, preprocessor and normalisation; the resampling functions and their arguments
    either equal, or unused: no case of ``dataset_fingerprint`` (nnU-Net's ``dataset_fingerprint.json``) changes
    shape at the target spacing (without a fingerprint that cannot be known, and the answer is no).
    """
    if list(source_plans["transpose_forward"]) != list(plans["transpose_forward"]):
        return False
    if len(source_config["spacing"]) != len(config["spacing"]) or not np.allclose(source_config["spacing"],
                                                                                 config["spacing"]):
        return False
    differing = {key for key in PREPROCESSING_KEYS if key != "spacing" and source_config.get(key) != config.get(key)}
    if differing - set(RESAMPLING_KEYS):
        return False
    return not differing or no_case_is_resampled(dataset_fingerprint, plans["transpose_forward"], config["spacing"])


def no_case_is_resampled(dataset_fingerprint: dict | None, transpose_forward: list[int],
                         target_spacing: list[float]) -> bool:
    """Whether every case keeps its (cropped) shape at ``target_spacing`` (nnU-Net's ``compute_new_shape``), so
    that no resampling function runs in preprocessing."""
    if not dataset_fingerprint or "spacings" not in dataset_fingerprint or "shapes_after_crop" not in \
            dataset_fingerprint:
        return False
    for spacing, shape in zip(dataset_fingerprint["spacings"], dataset_fingerprint["shapes_after_crop"], strict=True):
        spacing = [float(spacing[a]) for a in transpose_forward]
        shape = [int(shape[a]) for a in transpose_forward]
        new_shape = [int(round(s / t * n)) for s, t, n in zip(spacing, target_spacing, shape, strict=True)]
        if new_shape != shape:
            return False
    return True


def features_per_stage(n_stages: int, base: int = 32, maximum: int = 320) -> list[int]:
    """nnU-Net's rule: base features doubled per stage, capped."""
    return [min(base * 2 ** i, maximum) for i in range(n_stages)]


def make_rehrseg_plans(plans: dict, dataset_json: dict, patch_size: list[int] | None = None, base_features: int = 32,
                       max_features: int = 320, batch_size: int | None = None, teacher_channels: int = 0,
                       source: str = "dataset.json", lr_plans: dict | None = None,
                       lr_plans_source: str = "the LR plans", use_mask_for_norm: bool = False,
                       dataset_fingerprint: dict | None = None) -> dict:
    """REHRSegPlans from the stock plans of a pseudo-HR dataset (pure function: no files touched).

    Args:
        plans: contents of ``nnUNetPlans.json``.
        dataset_json: the pseudo-HR dataset's ``dataset.json`` (its ``rehrseg`` block gives r and the slice axis).
        patch_size: HR patch (slice axis first); default nnU-Net's 3d_fullres patch, adapted.
        base_features, max_features: U-Net widths (nnU-Net: 32, 320).
        batch_size: default nnU-Net's.
        teacher_channels: channels of the SR teacher's stride-2 features (0 = no distillation projection).
        lr_plans: plans of the nnU-Net trained on the thick-slice dataset: its U-Net and patch are used as they
            are (fine-tuning from its checkpoint needs every tensor to fit); ``patch_size`` and the feature
            options then do not apply, and the normalisation is the LR model's (its weights expect it).
        use_mask_for_norm: keep nnU-Net's normalisation inside the non-zero mask. Off by default: nnU-Net then
            sets everything outside the mask to 0, the mean tissue value after z-scoring, so a network can tell
            background only from context; z-scored over the whole cropped volume, the background keeps its own
            (lowest) value. Measured on the quick start (REHRSegTrainer_cpu, 160 iterations from scratch):
            whole-brain Dice 0.959 without the mask, 0.744 with it (about 1 M false-positive voxels in the
            test scan's zero background).
        dataset_fingerprint: the dataset's ``dataset_fingerprint.json`` (see :func:`same_preprocessing`).
    """
    contract = StageContract.from_dataset_json(dataset_json, source)
    r = contract.scale_factor
    transpose_forward = [contract.numpy_slice_axis] + [a for a in range(3) if a != contract.numpy_slice_axis]
    hr_spacing_numpy = list(reversed(contract.hr_spacing))  # (x, y, z) -> (z, y, x)
    spacing = [hr_spacing_numpy[a] for a in transpose_forward]
    stock = plans["configurations"]["3d_fullres"]
    lr_architecture = None
    if lr_plans is not None:
        topology, lr_architecture = topology_from_lr_plans(lr_plans, transpose_forward, spacing, r, lr_plans_source)
        normalisation = {key: lr_plans["configurations"]["3d_fullres"][key]
                         for key in ("normalization_schemes", "use_mask_for_norm")}
    else:
        requested, patch_size = patch_size is not None, patch_size or default_patch(plans, transpose_forward)
        topology = lr_topology(spacing, list(patch_size), r, nearest=requested)
        normalisation = {"normalization_schemes": stock["normalization_schemes"],
                         "use_mask_for_norm": [bool(use_mask_for_norm and m) for m in stock["use_mask_for_norm"]]}
    config = copy.deepcopy(stock)
    config.update(normalisation)
    config.update(separate_z_resampling(stock))
    config["spacing"] = spacing
    same_data = same_preprocessing(plans, stock, {"transpose_forward": transpose_forward}, config,
                                   dataset_fingerprint)
    config["data_identifier"] = stock["data_identifier"] if same_data else f"{PLANS_NAME}_3d_fullres"
    config["patch_size"] = topology["hr_patch_size"]
    if batch_size:
        config["batch_size"] = int(batch_size)
    arch = rehrseg_architecture(stock, topology, base_features, max_features, lr_architecture)
    arch.update(scale_factor=r, hr_head_channels=16, distillation_channels=int(teacher_channels),
                distillation_stage=1 if arch["n_stages"] > 1 else 0)
    config["architecture"] = {"network_class_name": NETWORK_CLASS, "arch_kwargs": arch,
                              "_kw_requires_import": stock["architecture"]["_kw_requires_import"]}
    config[CONTRACT_KEY] = contract.for_plans(topology["lr_patch_size"])
    return transposed_plans(plans, transpose_forward, config)


def default_patch(plans: dict, transpose_forward: list[int]) -> list[int]:
    """nnU-Net's 3d_fullres patch of the stock plans, on REHRSeg's axis order."""
    stock = plans["configurations"]["3d_fullres"]["patch_size"]
    if plans["transpose_forward"] == transpose_forward:
        return list(stock)
    return [stock[transpose_forward.index(a)] for a in plans["transpose_forward"]]


def separate_z_resampling(stock: dict) -> dict:
    """Resampling along the slice axis on its own: nearest for images and labels (a thick slice becomes r
    copies), linear for probabilities back to a thick-slice grid."""
    separate_z = {"force_separate_z": True, "order_z": 0}
    return {"resampling_fn_data_kwargs": {**stock["resampling_fn_data_kwargs"], **separate_z},
            "resampling_fn_seg_kwargs": {**stock["resampling_fn_seg_kwargs"], **separate_z},
            "resampling_fn_probabilities_kwargs": {**stock["resampling_fn_probabilities_kwargs"],
                                                   "force_separate_z": True, "order_z": 1}}


def rehrseg_architecture(stock: dict, topology: dict, base_features: int, max_features: int,
                         lr_architecture: dict | None) -> dict:
    """The inner U-Net's kwargs: nnU-Net's rule on the topology, or the LR model's U-Net as it is."""
    n_stages = len(topology["strides"])
    arch = copy.deepcopy(stock["architecture"]["arch_kwargs"])
    arch.update(n_stages=n_stages, features_per_stage=features_per_stage(n_stages, base_features, max_features),
                kernel_sizes=topology["kernel_sizes"], strides=topology["strides"], n_conv_per_stage=[2] * n_stages,
                n_conv_per_stage_decoder=[2] * (n_stages - 1))
    arch.update(lr_architecture or {})
    return arch


def transposed_plans(plans: dict, transpose_forward: list[int], config: dict) -> dict:
    """REHRSegPlans: the stock plans on REHRSeg's axis order (slice axis first), with ``config`` as their only
    configuration."""
    out = copy.deepcopy(plans)
    out["plans_name"] = PLANS_NAME
    out["transpose_forward"] = transpose_forward
    out["transpose_backward"] = [int(i) for i in np.argsort(transpose_forward)]
    for key in ("original_median_spacing_after_transp", "original_median_shape_after_transp"):
        out[key] = [plans[key][plans["transpose_backward"][a]] for a in transpose_forward]
    out["configurations"] = {"3d_fullres": config}
    return out


def preprocess_uncertainty(uncertainty_folder: str, preprocessed_folder: str, plans: dict, file_ending: str,
                           overwrite: bool = False) -> int:
    """Crop and resample each uncertainty map of ``uncertainty_folder`` (the raw dataset's ``uncertaintyTr``)
    exactly as nnU-Net did the case's image; save float16 .npy in :func:`uncertainty_folder_of` the data folder.
    A map older than its case's preprocessed properties or its raw map is redone.

    Returns:
        The number of maps written.
    """
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    identifiers = sorted(f[:-4] for f in os.listdir(preprocessed_folder) if f.endswith(".pkl"))
    written = 0
    transpose = plans["transpose_forward"]
    for identifier in tqdm(identifiers, desc="uncertainty maps", unit="case", dynamic_ncols=True):
        target = os.path.join(uncertainty_folder_of(preprocessed_folder), identifier + UNCERTAINTY_SUFFIX)
        source = os.path.join(uncertainty_folder, identifier + file_ending)
        if not os.path.isfile(source):
            raise RehrsegInputError(f"{source} is missing; re-run rehrseg_make_pseudohr for this dataset.")
        properties_file = os.path.join(preprocessed_folder, identifier + ".pkl")
        if not overwrite and is_up_to_date(target, properties_file, source):
            continue
        with open(properties_file, "rb") as handle:
            properties = pickle.load(handle)
        array, raw_properties = SimpleITKIO().read_images([source])
        array = array.transpose([0, *[a + 1 for a in transpose]])
        bbox = properties["bbox_used_for_cropping"]
        array = array[(slice(None), *[slice(lo, hi) for lo, hi in bbox])]
        data_shape = properties.get("shape_after_cropping_and_before_resampling")
        if tuple(array.shape[1:]) != tuple(data_shape):
            raise RehrsegInputError(f"{source} does not have the shape of its image; re-run rehrseg_make_pseudohr.")
        target_spacing = plans["configurations"]["3d_fullres"]["spacing"]
        original_spacing = [raw_properties["spacing"][a] for a in transpose]
        new_shape = np.round(np.array(data_shape) * np.array(original_spacing) / np.array(target_spacing)).astype(int)
        if tuple(new_shape) != tuple(array.shape[1:]):
            array = resample_data_or_seg_to_shape(array, new_shape, original_spacing, target_spacing, is_seg=False,
                                                  order=1, order_z=0, force_separate_z=None)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        save_npy_atomically(target, np.clip(array, 0, 1).astype(np.float16))
        written += 1
    return written


def is_up_to_date(target: str, *inputs: str) -> bool:
    """Whether ``target`` exists and is not older than any of ``inputs``."""
    return os.path.isfile(target) and all(os.path.getmtime(target) >= os.path.getmtime(path) for path in inputs)


def plan_dataset(dataset: str, source_plans: str = "nnUNetPlans", patch_size: list[int] | None = None,
                 base_features: int = 32, max_features: int = 320, batch_size: int | None = None,
                 num_processes: int = 4, overwrite: bool = False, lr_plans: str | None = None,
                 use_mask_for_norm: bool = False) -> str:
    """Write ``REHRSegPlans.json`` for a preprocessed pseudo-HR dataset, preprocess data if the plans need other
    data, and preprocess its uncertainty maps. Returns the plans file's path.

    Args:
        lr_plans, use_mask_for_norm: see :func:`make_rehrseg_plans` (``lr_plans`` is the plans file's path).
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed or not nnUNet_raw:
        raise RehrsegInputError("nnUNet_raw and nnUNet_preprocessed must be set (see nnU-Net's "
                                "set_environment_variables).")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError:
        raise RehrsegInputError(f"Dataset {dataset} was not found under nnUNet_raw or nnUNet_preprocessed.") from None
    folder = os.path.join(nnUNet_preprocessed, name)
    stock_path = os.path.join(folder, source_plans + ".json")
    if not os.path.isfile(stock_path):
        raise RehrsegInputError(f"{stock_path} is missing; run nnUNetv2_plan_and_preprocess -d {dataset} first.")
    plans = read_json_file(stock_path, f"run nnUNetv2_plan_and_preprocess -d {dataset} again")
    dataset_json_path = os.path.join(nnUNet_raw, name, "dataset.json")
    dataset_json = read_json_file(dataset_json_path, "fix the file (nnU-Net's dataset.json format)")
    contract = StageContract.from_dataset_json(dataset_json, dataset_json_path)
    teacher_channels = teacher_feature_channels(contract, os.path.join(folder, PLANS_NAME + ".json"))
    lr_plans_dict = None
    if lr_plans is not None:
        if patch_size is not None:
            raise RehrsegInputError("--patch_size and --lr_plans both set the patch; pass one of them.")
        lr_plans_dict = read_json_file(lr_plans, "pass the plans.json of the LR model's results folder")
    rehrseg_plans = make_rehrseg_plans(plans, dataset_json, patch_size, base_features, max_features, batch_size,
                                       teacher_channels, dataset_json_path, lr_plans_dict, lr_plans or "",
                                       use_mask_for_norm, read_dataset_fingerprint(folder, dataset))
    check_uncertainty_maps(os.path.join(nnUNet_raw, name), contract, dataset_json["file_ending"], str(int(name[7:10])))
    path = os.path.join(folder, PLANS_NAME + ".json")
    changes = plan_changes(path, rehrseg_plans)
    write_json_atomically(path, rehrseg_plans)
    if changes is not None:
        print(f"rehrseg_plan: replaced the existing {path}: " + ("; ".join(changes) if changes else "no change"))
    config = rehrseg_plans["configurations"]["3d_fullres"]
    if patch_size is not None and list(patch_size) != list(config["patch_size"]):
        print(patch_rounding_note(list(patch_size), config, contract.scale_factor))
    data_folder = os.path.join(folder, config["data_identifier"])
    stock_identifier = plans["configurations"]["3d_fullres"]["data_identifier"]
    if config["data_identifier"] != stock_identifier or not os.path.isdir(data_folder):
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
        preprocess_dataset(int(name[7:10]), PLANS_NAME, ("3d_fullres",), (num_processes,))
    preprocess_uncertainty(os.path.join(nnUNet_raw, name, contract.training_uncertainty_folder), data_folder,
                           rehrseg_plans, dataset_json["file_ending"], overwrite)
    lr_patch = list(config[CONTRACT_KEY]["lr_patch_size"])
    print(f"rehrseg_plan: wrote {path} (HR patch {config['patch_size']}, LR patch {lr_patch}, "
          f"r = {contract.scale_factor}); train with "
          f"nnUNetv2_train {name[7:10]} 3d_fullres FOLD -tr REHRSegTrainer -p {PLANS_NAME}{ext_trainer_hint()}")
    return path


def ext_trainer_hint() -> str:
    """What the closing line must add for nnUNetv2_train to find REHRSegTrainer: nothing when the installed start-up
    hook put the trainer folder on ``nnUNet_extTrainer``, else the export line."""
    from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

    paths = [os.path.normpath(p) for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    if os.path.normpath(EXT_TRAINER_FOLDER) in paths:
        return ""
    return (f" after export nnUNet_extTrainer={EXT_TRAINER_FOLDER} (REHRSeg's start-up hook, installed by pip, is "
            f"off or missing here)")


def patch_rounding_note(requested: list[int], config: dict, scale_factor: int) -> str:
    """The line saying how ``--patch_size`` was rounded, axis by axis, and why: each axis goes to the nearest valid
    size; along the slice axis the HR patch holds whole thick slices (r HR slices each) and the LR patch is pooled
    by 2 at each of the U-Net's slice-axis poolings, so it is a multiple of r x 2^poolings; in-plane, a multiple of
    2^poolings (nnU-Net's topology rule)."""
    strides = config["architecture"]["arch_kwargs"]["strides"]
    multiples = patch_multiples(strides, scale_factor)
    poolings = int(round(np.log2(multiples[0] // scale_factor)))
    patch = list(config["patch_size"])

    def axis(name: str, index: int, rule: str) -> str:
        change = "kept" if requested[index] == patch[index] else f"{requested[index]} -> {patch[index]}"
        return f"{name} {change} ({rule})"

    slice_rule = (f"a multiple of r x 2^poolings = {scale_factor} x 2^{poolings} = {multiples[0]}: whole thick "
                  f"slices, pooled {poolings} time(s) by the U-Net")
    in_plane = [axis(f"in-plane axis {i}", i, f"a multiple of 2^poolings = {multiples[i]}") for i in (1, 2)]
    return (f"rehrseg_plan: rounded the requested patch {requested} to {patch} (slice axis first), each axis to the "
            f"nearest valid size: " + "; ".join([axis("slice axis", 0, slice_rule), *in_plane]))


def check_uncertainty_maps(raw_folder: str, contract: StageContract, file_ending: str, dataset: str) -> None:
    """Every training case of the pseudo-HR raw dataset has its uncertainty map (checked before rehrseg_plan
    writes anything).

    Raises:
        RehrsegInputError: naming the missing folder or file and the fix.
    """
    folder = os.path.join(raw_folder, contract.training_uncertainty_folder)
    remake = (f"re-run rehrseg_make_pseudohr -d {contract.source_dataset or 'SOURCE'} -o {dataset} to complete the "
              f"pseudo-HR dataset (cases without their map are rewritten)")
    if not os.path.isdir(folder):
        raise RehrsegInputError(f"{folder} is missing: the pseudo-HR dataset has no uncertainty maps; {remake}.")
    labels = os.path.join(raw_folder, "labelsTr")
    names = sorted(f for f in os.listdir(labels) if f.endswith(file_ending)) if os.path.isdir(labels) else []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise RehrsegInputError(f"{path} is missing; {remake}.")


def read_dataset_fingerprint(preprocessed_folder: str, dataset: str) -> dict | None:
    """nnU-Net's ``dataset_fingerprint.json`` of a preprocessed dataset (None when there is none)."""
    path = os.path.join(preprocessed_folder, "dataset_fingerprint.json")
    if not os.path.isfile(path):
        return None
    return read_json_file(path, f"run nnUNetv2_plan_and_preprocess -d {dataset} again")


def read_json_file(path: str, fix: str) -> dict:
    """A JSON object from a file, or one line naming the file and the fix."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise RehrsegInputError(f"{path} cannot be read as JSON ({error}); {fix}.") from None
    if not isinstance(data, dict):
        raise RehrsegInputError(f"{path} does not hold a JSON object; {fix}.")
    return data


def plan_changes(path: str, new_plans: dict) -> list[str] | None:
    """What re-planning changes in an existing plans file (None when there is none): patch, batch, U-Net."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            old = json.load(handle)["configurations"]["3d_fullres"]
    except (OSError, ValueError, KeyError):
        return ["the old file was unreadable"]
    new = new_plans["configurations"]["3d_fullres"]
    changes = [f"{key} {old.get(key)} -> {new[key]}" for key in ("patch_size", "batch_size", "spacing",
                                                                 "use_mask_for_norm")
               if old.get(key) != new[key]]
    old_arch, new_arch = old.get("architecture", {}).get("arch_kwargs", {}), new["architecture"]["arch_kwargs"]
    changes += [f"{key} {old_arch.get(key)} -> {new_arch[key]}" for key in new_arch
                if old_arch.get(key) != new_arch[key]]
    return changes


def teacher_feature_channels(contract: StageContract, plans_path: str) -> int:
    """Channels of the SR teacher's stride-2 encoder features, which size the network's distillation projection.

    Only this needs the SR model folder. Without it, the width that an existing ``plans_path`` (REHRSegPlans.json)
    recorded is kept and a line says so (to change only the patch, say); without either, one line says why the
    model is needed.
    """
    from rehrseg_nnunet.sr.config import SRConfig

    folder = contract.resolved_sr_model_folder()
    if folder and os.path.isdir(folder):
        return int(SRConfig.load(folder).settings["slice_net"]["widths"][0])
    recorded = recorded_distillation_channels(plans_path)
    if recorded is None:
        raise RehrsegInputError(
            f"The SR model folder {folder} recorded in the dataset's rehrseg block is missing, and the first "
            f"rehrseg_plan needs it: the width of its features sets the network's distillation projection; restore "
            f"it or re-run rehrseg_make_pseudohr with -m pointing to the model.")
    print(f"rehrseg_plan: the SR model folder {folder} is missing; kept the distillation width {recorded} that "
          f"{plans_path} recorded (training with distillation still needs the SR model; REHRSegTrainer_noDistill "
          f"does not)")
    return recorded


def recorded_distillation_channels(plans_path: str) -> int | None:
    """``distillation_channels`` of an existing REHRSegPlans.json (None when there is no readable one)."""
    try:
        with open(plans_path) as handle:
            arch = json.load(handle)["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        return int(arch["distillation_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
