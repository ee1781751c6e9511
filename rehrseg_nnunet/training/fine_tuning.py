"""Fine-tuning from the LR nnU-Net (METHOD.md "Optimisation"): weights and schedule through nnU-Net's own path.

``nnUNetv2_train … -pretrained_weights LR_MODEL/fold_F/checkpoint_final.pth`` (in any spelling nnU-Net's
argparse accepts) calls ``nnunetv2.run.run_training.load_pretrained_weights``. For a REHRSeg network
:func:`install_pretrained_weights_hook` routes that call to :func:`load_lr_weights`, which checks every
inner U-Net tensor and marks the network; the trainer then starts the fine-tuning schedule and stores it
in its checkpoint (``init_args``, which nnU-Net saves and restores), so ``--c`` continues at the same rate.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from rehrseg_nnunet.errors import RehrsegInputError

#: METHOD.md: a tenth of nnU-Net's default when starting from the LR nnU-Net
FINE_TUNING_LR = 1e-3
#: key of the fine-tuning state in the trainer's ``my_init_kwargs`` (saved in every checkpoint as ``init_args``)
STATE_KEY = "rehrseg_fine_tuning"
#: attribute set on the network once LR weights are loaded: (checkpoint path, tensors loaded)
LOADED_ATTRIBUTE = "rehrseg_pretrained_weights"


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


#: prefixes a wrapped network's state_dict puts before every name: DistributedDataParallel, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def plain_names(weights: dict) -> dict:
    """The tensors under the plain module's names. nnU-Net saves the unwrapped network, but an LR model trained
    with DistributedDataParallel or torch.compile outside nnU-Net's save_checkpoint has ``module.`` /
    ``_orig_mod.`` before every name (nnU-Net's own load_pretrained_weights then refuses it)."""
    plain = {}
    for key, value in weights.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        plain[key] = value
    return plain


def inner_unet_keys(state: dict) -> list[str]:
    """The U-Net's own tensors: encoder and decoder, without the decoder's alias of the encoder."""
    return [k for k in state if k.startswith(("encoder.", "decoder.")) and not k.startswith("decoder.encoder.")]


def load_lr_weights(network: nn.Module, checkpoint_file: str) -> tuple[int, int]:
    """Copy the LR nnU-Net's weights into the inner U-Net; every tensor must fit (the LR seg layers may not).

    Args:
        network: a REHRSegUNet (possibly wrapped).
        checkpoint_file: an nnU-Net checkpoint of the LR model.

    Returns:
        (tensors loaded, inner U-Net tensors).

    Raises:
        RehrsegInputError: when the checkpoint cannot be read or a tensor is missing or shaped differently.
    """
    module = unwrap(network)
    try:
        weights = plain_names(torch.load(checkpoint_file, map_location="cpu", weights_only=False)["network_weights"])
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file unpickles into any error
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise RehrsegInputError(f"{checkpoint_file} is not a readable nnU-Net checkpoint ({reason}); pass the LR "
                                f"model's fold_F/checkpoint_final.pth to -pretrained_weights.") from None
    own = module.state_dict()
    keys = inner_unet_keys(own)
    misfits = [k for k in keys if ".seg_layers." not in k and (k not in weights or weights[k].shape != own[k].shape)]
    if misfits:
        first = misfits[0]
        theirs = tuple(weights[first].shape) if first in weights else "missing"
        raise RehrsegInputError(
            f"{checkpoint_file} does not fit the REHRSeg U-Net: {len(misfits)} of {len(keys)} tensors differ (first "
            f"{first}: {theirs} there, {tuple(own[first].shape)} here); re-plan with the LR model's topology: "
            "rehrseg_plan -d DATASET --lr_plans "
            f"{os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint_file))), 'plans.json')}."
        )
    matching = {k: weights[k] for k in keys if k in weights and weights[k].shape == own[k].shape}
    module.load_state_dict(matching, strict=False)
    setattr(module, LOADED_ATTRIBUTE, (os.path.abspath(checkpoint_file), len(matching)))
    return len(matching), len(keys)


def install_pretrained_weights_hook() -> None:
    """Make nnUNetv2_train's -pretrained_weights use :func:`load_lr_weights` for REHRSeg networks (idempotent)."""
    from nnunetv2.run import run_training

    original = run_training.load_pretrained_weights
    if getattr(original, "rehrseg_hook", False):
        return

    def load_pretrained_weights(network, fname, verbose=False):
        from rehrseg_nnunet.network import REHRSegUNet

        if not isinstance(unwrap(network), REHRSegUNet):
            return original(network, fname, verbose)
        from rehrseg_nnunet.training import fail

        try:
            load_lr_weights(network, fname)
        except RehrsegInputError as error:
            fail(str(error))

    load_pretrained_weights.rehrseg_hook = True
    run_training.load_pretrained_weights = load_pretrained_weights
