"""REHRSegUNet, the UASR-weighted loss, structural distillation and -pretrained_weights loading."""

import math

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.losses import cosine_distillation, structural_distillation, uncertainty_weighted_ce
from rehrseg_nnunet.network import REHRSegUNet, pool_thick_slices, slice_upsampled_conv
from rehrseg_nnunet.training.fine_tuning import LOADED_ATTRIBUTE, inner_unet_keys, load_lr_weights

UNET_KWARGS = dict(
    input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv3d,
    kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
    n_conv_per_stage=[1, 1, 1], num_classes=3, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
    norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
    nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True},
)


def build(r: int, deep_supervision: bool = True, distillation_channels: int = 6) -> REHRSegUNet:
    torch.manual_seed(0)
    return REHRSegUNet(**UNET_KWARGS, deep_supervision=deep_supervision, scale_factor=r,
                       distillation_channels=distillation_channels)


@pytest.mark.parametrize("shape, hr_slices", [((2, 8, 5, 9, 7), 20), ((1, 4, 3, 6, 11), 9), ((1, 6, 1, 5, 5), 4)])
def test_hr_head_conv_on_the_lr_grid_equals_conv_of_the_upsampled_map(shape, hr_slices):
    """The HR head's first conv, computed per LR slice and mixed by the interpolation weights, gives what
    the method defines (trilinear upsampling along the slice axis, then conv 3x3x3), values and gradients."""
    torch.manual_seed(1)
    conv = torch.nn.Conv3d(shape[1], 5, 3, padding=1).double()
    features = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    upsampled = torch.nn.functional.interpolate(features, size=(hr_slices, *shape[3:]), mode="trilinear",
                                                align_corners=False)
    reference, fast = conv(upsampled), slice_upsampled_conv(features, conv, hr_slices)
    assert fast.shape == reference.shape == (shape[0], 5, hr_slices, *shape[3:])
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)
    upstream = torch.randn_like(reference)
    expected = torch.autograd.grad((reference * upstream).sum(), [features, conv.weight, conv.bias])
    got = torch.autograd.grad((fast * upstream).sum(), [features, conv.weight, conv.bias])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_lr_logits_equal_plain_conv_unet_on_the_pooled_patch(deep_supervision):
    """REHRSegUNet copies PlainConvUNet's decoder loop (to keep the last decoder map for the HR head): with the
    same weights its LR logits must equal upstream's on the thick-slice-pooled patch, at every scale."""
    r = 4
    net = build(r, deep_supervision=deep_supervision)
    torch.manual_seed(0)
    plain = PlainConvUNet(**UNET_KWARGS, deep_supervision=deep_supervision)
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(key.startswith("rehrseg.") for key in unexpected)
    x = torch.randn(2, 1, 4 * r, 16, 16)
    with torch.no_grad():
        ours = net(x)["lr"]
        upstream = plain(pool_thick_slices(x, r))
    ours, upstream = (ours, upstream) if deep_supervision else ([ours], [upstream])
    assert len(ours) == len(upstream)
    for a, b in zip(ours, upstream, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_hr_logits_have_the_input_patch_shape(r):
    net = build(r)
    x = torch.randn(2, 1, 4 * r, 16, 16)
    out = net(x)
    assert out["hr"].shape == (2, 3, 4 * r, 16, 16)
    assert [tuple(o.shape) for o in out["lr"]] == [(2, 3, 4, 16, 16), (2, 3, 4, 8, 8)]
    assert out["features"].shape == (2, 8, 4, 8, 8)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, 4 * r, 16, 16)  # eval: HR logits only, for nnU-Net's predictor


def test_pooling_recovers_acquired_slices_from_nearest_copies():
    rng = np.random.default_rng(1)
    acquired = torch.from_numpy(rng.normal(size=(1, 2, 5, 6, 7)).astype(np.float32))
    for r in (2, 3, 4):
        replicated = acquired.repeat_interleave(r, dim=2)  # what separate-z nearest resampling makes of LR data
        assert torch.equal(pool_thick_slices(replicated, r), acquired)
    with pytest.raises(ValueError, match="multiple of r"):
        pool_thick_slices(torch.zeros(1, 1, 7, 4, 4), 2)


def test_uncertainty_weight_changes_the_lr_loss_as_specified():
    # two voxels, two classes: logits (0, 0) -> CE = ln 2; logits (2, 0) with target 0 -> CE = ln(1 + e^-2)
    logits = torch.tensor([[0.0, 2.0], [0.0, 0.0]]).view(1, 2, 1, 1, 2)
    target = torch.tensor([0, 0]).view(1, 1, 1, 1, 2)
    uncertainty = torch.tensor([1.0, 0.25]).view(1, 1, 1, 1, 2)
    ce = [math.log(2.0), math.log(1.0 + math.exp(-2.0))]
    expected = ((1 - 0.99 * 1.0) * ce[0] + (1 - 0.99 * 0.25) * ce[1]) / 2
    assert uncertainty_weighted_ce(logits, target, uncertainty).item() == pytest.approx(expected, rel=1e-6)
    zero = uncertainty_weighted_ce(logits, target, torch.zeros_like(uncertainty)).item()
    assert zero == pytest.approx(sum(ce) / 2, rel=1e-6)


def test_the_lr_dice_ablation_adds_nnunets_soft_dice_to_the_weighted_ce():
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    from rehrseg_nnunet.losses import UncertaintyWeightedCEAndDice

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, 4, 4, generator=generator)
    target = torch.randint(0, 3, (2, 1, 2, 4, 4), generator=generator)
    uncertainty = torch.rand(2, 1, 2, 4, 4, generator=generator)
    dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=True, do_bg=False, smooth=1e-5,
                                      ddp=False)
    combined = UncertaintyWeightedCEAndDice(dice)(logits, target, uncertainty)
    parts = uncertainty_weighted_ce(logits, target, uncertainty) + dice(logits, target)
    assert combined.item() == pytest.approx(parts.item(), rel=1e-6)
    # a confident, correct prediction: the Dice term reaches its minimum, -1
    perfect = 20.0 * torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    assert dice(perfect, target).item() == pytest.approx(-1.0, abs=1e-3)


def test_structural_distillation_zero_for_identical_features_and_gradients_reach_only_the_student():
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 3, 8, 8, requires_grad=True)
    assert structural_distillation(teacher.detach().clone(), teacher).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.randn(2, 5, 3, 8, 8, requires_grad=True)  # channel counts may differ
    loss = structural_distillation(student, teacher)
    assert loss.item() > 0
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    projected = torch.randn(2, 6, 3, 8, 8, requires_grad=True)
    cosine = cosine_distillation(projected, teacher)
    assert cosine.item() > 0
    assert cosine_distillation(teacher.detach() * 3.0, teacher).item() == pytest.approx(0.0, abs=1e-6)
    cosine.backward()
    assert projected.grad.abs().sum() > 0 and teacher.grad is None


def test_pretrained_weights_load_every_inner_unet_tensor(tmp_path):
    torch.manual_seed(3)
    stock = PlainConvUNet(**UNET_KWARGS, deep_supervision=True)
    checkpoint = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": stock.state_dict()}, checkpoint)
    net = build(4)
    fresh_head = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("rehrseg.")}
    load_pretrained_weights(net, str(checkpoint))  # nnU-Net's own loader accepts the REHRSeg network too
    loaded, total = load_lr_weights(net, str(checkpoint))  # what -pretrained_weights runs for REHRSeg networks
    # every tensor, the decoder's alias of the encoder counted once
    assert loaded == total == len(inner_unet_keys(stock.state_dict())) < len(stock.state_dict())
    assert getattr(net, LOADED_ATTRIBUTE) == (str(checkpoint), loaded)
    state = net.state_dict()
    for key, value in stock.state_dict().items():
        assert torch.equal(state[key], value), key
    for key, value in fresh_head.items():
        assert torch.equal(state[key], value), f"{key} should start fresh"
    wider = PlainConvUNet(**{**UNET_KWARGS, "features_per_stage": [8, 16, 16]}, deep_supervision=True)
    torch.save({"network_weights": wider.state_dict()}, checkpoint)
    with pytest.raises(RehrsegInputError, match="does not fit the REHRSeg U-Net.*--lr_plans"):
        load_lr_weights(net, str(checkpoint))


def test_no_hr_head_variant_upsamples_the_lr_logits():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from rehrseg_nnunet.training.variants import REHRSegTrainer_noHRHead

    kwargs = {k: v for k, v in UNET_KWARGS.items() if k not in ("input_channels", "num_classes")}
    requires_import = ["conv_op", "norm_op", "nonlin"]
    for key in requires_import:
        kwargs[key] = f"{kwargs[key].__module__}.{kwargs[key].__name__}"
    plans = {"dataset_name": "Dataset001_X", "plans_name": "REHRSegPlans", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": {
                 "data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                 "patch_size": [16, 16, 16], "spacing": [1, 1, 1], "normalization_schemes": ["ZScoreNormalization"],
                 "use_mask_for_norm": [False], "architecture": {
                     "network_class_name": "rehrseg_nnunet.network.REHRSegUNet",
                     "arch_kwargs": {**kwargs, "scale_factor": 4}, "_kw_requires_import": requires_import}}}}
    manager = PlansManager(plans)
    net = REHRSegTrainer_noHRHead.build_network_architecture(manager, manager.get_configuration("3d_fullres"), 1, 3,
                                                              enable_deep_supervision=False)
    net.eval()
    with torch.no_grad():
        hr = net(torch.randn(1, 1, 16, 16, 16))
    assert hr.shape == (1, 3, 16, 16, 16)
    # upsampled LR logits: every group of 4 HR slices varies only linearly, no head convolution
    assert net.hr_from_lr


def build_guided(r: int, hr_guidance: str) -> REHRSegUNet:
    torch.manual_seed(0)
    network = REHRSegUNet(**UNET_KWARGS, deep_supervision=True, scale_factor=r, distillation_channels=6,
                          hr_guidance=hr_guidance, guidance_channels=5)
    network.apply(network.initialize)  # as nnU-Net's get_network_from_plans does
    return network


@pytest.mark.parametrize("hr_guidance", ["stem", "level"])
def test_guided_hr_logits_see_the_full_resolution_input(hr_guidance):
    """With HR guidance, changing the HR input within each group of r slices (same thick-slice mean, so the LR
    branch's input is unchanged) changes the HR logits; the paper's network cannot see such a change."""
    r = 4
    x = torch.randn(1, 1, 4 * r, 16, 16)
    within_groups = torch.randn_like(x).view(1, 1, 4, r, 16, 16)
    within_groups = (within_groups - within_groups.mean(3, keepdim=True)).view_as(x)
    torch.testing.assert_close(pool_thick_slices(x + within_groups, r), pool_thick_slices(x, r))
    for guidance, expect_change in ((hr_guidance, True), ("none", False)):
        net = build_guided(r, guidance).eval()
        with torch.no_grad():
            difference = (net(x + within_groups) - net(x)).abs().max().item()
        assert (difference > 1e-4) == expect_change, (guidance, difference)


@pytest.mark.parametrize("hr_guidance", ["stem", "level"])
def test_guided_network_shapes_and_fine_tuning_start(hr_guidance):
    """Guided networks give the same outputs' shapes; the inner U-Net keeps PlainConvUNet's keys (so
    -pretrained_weights fills it), every new layer is under rehrseg.seg_layers, the carried SR model is a buffer,
    and a full-resolution level starts with the LR logits of the LR U-Net alone (zero-initialised injection)."""
    r = 3
    net = build_guided(r, hr_guidance)
    x = torch.randn(2, 1, 4 * r, 16, 16)
    out = net(x)
    assert out["hr"].shape == (2, 3, 4 * r, 16, 16)
    assert [tuple(o.shape) for o in out["lr"]] == [(2, 3, 4, 16, 16), (2, 3, 4, 8, 8)]
    plain = PlainConvUNet(**UNET_KWARGS, deep_supervision=True)
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(key.startswith(("rehrseg.seg_layers.", "carried_sr.")) for key in unexpected)
    assert any(".hr_encoder." in key for key in unexpected) and "carried_sr.bundle" in unexpected
    if hr_guidance == "level":
        assert net.rehrseg["seg_layers"]["hr_to_lr"].weight.abs().max() == 0
        with torch.no_grad():
            torch.testing.assert_close(net(x)["lr"][0], plain(pool_thick_slices(x, r))[0], rtol=0, atol=0)
    loss = out["hr"].square().mean() + out["lr"][0].square().mean()
    loss.backward()
    assert net.rehrseg["seg_layers"]["hr_encoder"].convs[0].conv.weight.grad.abs().sum() > 0


def test_unknown_hr_guidance_is_refused():
    with pytest.raises(ValueError, match="hr_guidance is 'stems'"):
        REHRSegUNet(**UNET_KWARGS, scale_factor=2, hr_guidance="stems")
