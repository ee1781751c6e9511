"""Stock nnU-Net plans with another patch, widths and batch (e.g. to train the LR nnU-Net on a CPU)."""

from __future__ import annotations

import copy
import os

from rehrseg_nnunet.file_writing import write_json_atomically
from rehrseg_nnunet.planning import features_per_stage, lr_topology, read_json_file, same_preprocessing


def resized_plans(plans: dict, patch_size: list[int], base_features: int, max_features: int, batch_size: int,
                  plans_name: str, use_mask_for_norm: bool | None = None) -> dict:
    """Stock nnU-Net plans (3d_fullres only) with another patch, widths and batch, e.g. to train on a CPU.

    The U-Net keeps nnU-Net's design rule: its topology is what nnU-Net's own helper gives for that patch
    on the configuration's spacing; every other setting (resampling, normalisation unless asked) stays, so
    the plans train on the data nnUNetv2_plan_and_preprocess already wrote, unless their preprocessing differs
    (here: the normalisation mask; in general :func:`rehrseg_nnunet.planning.same_preprocessing`): then they get
    their own data identifier ``<plans_name>_3d_fullres`` (``nnUNetv2_preprocess -plans_name`` writes it), so
    preprocessing them never overwrites the source plans' preprocessed data.

    Args:
        plans: nnU-Net plans of the dataset (``nnUNetPlans.json``).
        patch_size: the patch, in the plans' (transposed) axis order.
        base_features: features at full resolution (nnU-Net: 32).
        max_features: feature cap (nnU-Net: 320).
        batch_size: patches per iteration.
        plans_name: the new plans' name (also the file name under nnUNet_preprocessed, without ``.json``).
        use_mask_for_norm: None keeps nnU-Net's choice; False z-scores over the whole cropped volume (see
            :func:`make_rehrseg_plans`: short trainings then tell a zero background from tissue).

    Returns:
        The new plans.
    """
    out = copy.deepcopy(plans)
    out["plans_name"] = plans_name
    config = out["configurations"]["3d_fullres"]
    if use_mask_for_norm is not None:
        config["use_mask_for_norm"] = [bool(use_mask_for_norm and m) for m in config["use_mask_for_norm"]]
    if not same_preprocessing(plans, plans["configurations"]["3d_fullres"], out, config):
        config["data_identifier"] = f"{plans_name}_3d_fullres"
    topology = lr_topology(config["spacing"], patch_size, 1)
    n_stages = len(topology["strides"])
    config["architecture"]["arch_kwargs"].update(
        n_stages=n_stages, features_per_stage=features_per_stage(n_stages, base_features, max_features),
        kernel_sizes=topology["kernel_sizes"], strides=topology["strides"], n_conv_per_stage=[2] * n_stages,
        n_conv_per_stage_decoder=[2] * (n_stages - 1))
    config["patch_size"] = topology["hr_patch_size"]
    config["batch_size"] = int(batch_size)
    out["configurations"] = {"3d_fullres": config}
    return out


def write_resized_plans(preprocessed_dataset_folder: str, patch_size: list[int], base_features: int,
                        max_features: int, batch_size: int, plans_name: str,
                        use_mask_for_norm: bool | None = None) -> str:
    """:func:`resized_plans` of the folder's ``nnUNetPlans.json``, written as ``plans_name.json`` beside it.

    Returns:
        The written file's path.
    """
    source = os.path.join(preprocessed_dataset_folder, "nnUNetPlans.json")
    plans = read_json_file(source, "run nnUNetv2_plan_and_preprocess for this dataset first")
    target = os.path.join(preprocessed_dataset_folder, f"{plans_name}.json")
    write_json_atomically(target, resized_plans(plans, patch_size, base_features, max_features, batch_size, plans_name,
                                                use_mask_for_norm))
    return target
