import numpy as np
import pytest
import torch

from rehrseg_nnunet.sr.flavr import load_flavr_weights, map_flavr_name
from rehrseg_nnunet.sr.networks import PlaneSRNet, SliceInterpolationNet
from rehrseg_nnunet.sr.pairs import DegradedVolume, FramePairSampler, PlanePairSampler


@pytest.mark.parametrize("r", [2, 3, 4])
def test_network_output_shapes(r):
    plane = PlaneSRNet(image_channels=2, num_classes=3, scale_factor=r, features=8, num_blocks=2)
    assert plane(torch.zeros(2, 5, 6, 16)).shape == (2, 5, 6 * r, 16)
    net = SliceInterpolationNet(2, 3, r, widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1), num_attention_maps=3)
    result = net(torch.randn(2, 5, 4, 16, 24))
    assert result["output"].shape == (2, 5, r, 16, 24)
    assert result["uncertainty"].shape == (2, 1, r, 16, 24)
    uncertainty = result["uncertainty"].detach()
    assert float(uncertainty.min()) > 0 and float(uncertainty.max()) < 1


def test_untrained_slice_net_is_the_interpolation_prior():
    net = SliceInterpolationNet(1, 2, 4, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1))
    frames = torch.zeros(1, 3, 4, 8, 8)
    frames[:, 0] = torch.tensor([-3.0, 1.0, 5.0, 9.0]).view(4, 1, 1)  # a linear ramp: cubic keeps it exactly
    frames[:, 2, 1] = 1.0  # label: class 1 on frame 1, class 0 on frame 2
    frames[:, 1, 2] = 1.0
    out = net(frames)["output"][0, :, :, 0, 0].detach()
    # HR slices between LR centres k and k+1 sit at fractions 1/8, 3/8, 5/8, 7/8
    np.testing.assert_allclose(out[0].numpy(), [1.5, 2.5, 3.5, 4.5], atol=1e-5)
    np.testing.assert_array_equal(out[1:].argmax(0).numpy(), [1, 1, 0, 0])


def test_uncertainty_head_starts_from_the_stage_1b_output_plus_noise():
    plain = SliceInterpolationNet(1, 2, 3, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1))
    torch.nn.init.normal_(plain.out.weight, std=0.05)
    uasr = SliceInterpolationNet(1, 2, 3, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), num_attention_maps=16,
                                 attention_kernel=1)
    uasr.init_uncertainty_head_from(plain.out, torch.Generator().manual_seed(0))
    heads = uasr.reconstructions.weight.detach().view(16, *plain.out.weight.shape)
    noise = heads - plain.out.weight.detach()
    # every head is 1b's layer plus its own noise of half 1b's weight spread (0.025)
    assert 0.02 < float(noise.std()) < 0.03
    assert float((noise[0] - noise[1]).abs().mean()) > 0.01
    torch.testing.assert_close(heads.mean(0), plain.out.weight.detach(), atol=0.03, rtol=0)
    torch.testing.assert_close(uasr.reconstructions.bias.view(16, -1), plain.out.bias.detach().repeat(16, 1))
    assert uasr.attention.kernel_size == (1, 1)


def test_sigma_starts_near_a_typical_error_and_can_span_it():
    net = SliceInterpolationNet(1, 2, 4, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), num_attention_maps=4)
    sigma = net(torch.randn(2, 3, 4, 16, 16))["uncertainty"].detach()
    assert 0.01 < float(sigma.median()) < 0.2
    # attending one head alone moves sigma's logit by its weight: -2 ... 2 around logit(0.05)
    w = net.uncertainty.weight.detach().flatten()
    b = float(net.uncertainty.bias.detach())
    lowest, highest = torch.sigmoid(b + w.min()), torch.sigmoid(b + w.max())
    assert float(lowest) < 0.01 and float(highest) > 0.25


def flavr_state_dict(in_channels=3, n_outputs=3):
    """A state dict with FLAVR's (unet_18, 4x) parameter names and shapes, random values."""
    g = torch.Generator().manual_seed(0)
    shapes = {"module.encoder.stem.0.weight": (64, in_channels, 3, 7, 7), "module.encoder.stem.0.bias": (64,)}
    widths = [64, 128, 256, 512]
    previous = 64
    for layer, width in enumerate(widths, start=1):
        for block in range(2):
            cin = previous if block == 0 else width
            p = f"module.encoder.layer{layer}.{block}."
            shapes[p + "conv1.0.weight"] = (width, cin, 3, 3, 3)
            shapes[p + "conv1.0.bias"] = (width,)
            shapes[p + "conv2.0.weight"] = (width, width, 3, 3, 3)
            shapes[p + "conv2.0.bias"] = (width,)
            shapes[p + "fg.attn_layer.0.weight"] = (width, width, 1, 1, 1)
            shapes[p + "fg.attn_layer.0.bias"] = (width,)
            if block == 0 and cin != width:
                shapes[p + "downsample.0.weight"] = (width, cin, 1, 1, 1)
        previous = width
    for index, (kind, cin, cout, kernel) in enumerate([
            ("conv", 512, 256, (3, 3, 3)), ("upconv", 512, 128, (3, 4, 4)), ("upconv", 256, 64, (3, 4, 4)),
            ("conv", 128, 64, (3, 3, 3)), ("upconv", 128, 64, (3, 4, 4))]):
        p = f"module.decoder.{index}.{kind}."
        shapes[p + "0.weight"] = (cout, cin, *kernel) if kind == "conv" else (cin, cout, *kernel)
        shapes[p + "0.bias"] = (cout,)
        shapes[p + "1.attn_layer.0.weight"] = (cout, cout, 1, 1, 1)
        shapes[p + "1.attn_layer.0.bias"] = (cout,)
    shapes["module.feature_fuse.conv.0.weight"] = (64, 256, 1, 1)
    shapes["module.outconv.1.weight"] = (3 * n_outputs, 64, 7, 7)
    shapes["module.outconv.1.bias"] = (3 * n_outputs,)
    return {k: torch.randn(v, generator=g) for k, v in shapes.items()}


def test_flavr_key_mapping_loads_every_body_tensor():
    state = flavr_state_dict()
    net = SliceInterpolationNet(image_channels=1, num_classes=2, scale_factor=4)  # paper widths
    stem_before = net.encoder.stem.weight.detach().clone()
    report = load_flavr_weights(net, state)
    body = [k for k in state if not k.startswith(("module.encoder.stem", "module.outconv"))]
    assert len(report.loaded) == len(body) and not report.shape_mismatch and not report.unknown
    assert len(report.reinitialised) == 4
    own = net.state_dict()
    for name in body:
        assert torch.equal(own[map_flavr_name(name)], state[name]), name
    assert torch.equal(net.encoder.stem.weight, stem_before)
    assert map_flavr_name("module.decoder.1.upconv.0.weight") == "decoder.1.conv.weight"
    assert map_flavr_name("encoder.layer2.0.downsample.0.weight") == "encoder.stages.1.0.shortcut.weight"
    # a smaller network: the mapped names exist but shapes differ -> skipped, nothing loaded wrongly
    small = SliceInterpolationNet(1, 2, 4, widths=(16, 24, 32, 48), blocks=(1, 1, 1, 1))
    report = load_flavr_weights(small, state)
    assert not report.loaded and report.shape_mismatch


def test_training_pairs_are_aligned_on_the_cell_centred_grid():
    r = 4
    ramp = np.arange(32, dtype=np.float32)
    image = np.broadcast_to(ramp[None, None, :, None] + 0 * ramp[None, None, None, :], (1, 16, 32, 32)).copy()
    labels = np.zeros((16, 32, 32), np.int16)
    volume = DegradedVolume.build(image, labels, r, 0.0, "gaussian")  # no blur: LR = HR at the group centres
    # LR sample k sits at HR position 4k + 1.5 -> a linear ramp keeps that value exactly
    np.testing.assert_allclose(volume.degraded_images[2][0, 0, :, 0], 4 * np.arange(8) + 1.5, atol=1e-5)
    sampler = PlanePairSampler([volume], 2, r, 16)
    inputs, hr, hr_labels, known = sampler.sample(np.random.default_rng(0), 8)
    assert inputs.shape == (8, 3, 4, 16) and hr.shape == (8, 1, 16, 16) and hr_labels.shape == (8, 16, 16)
    frames = FramePairSampler([volume], 2, r, 16)
    f, hr, hr_labels, known = frames.sample(np.random.default_rng(1), 4)
    assert f.shape == (4, 3, 4, 16, 16) and hr.shape == (4, 1, 4, 16, 16)


def test_refining_network_starts_at_the_stage_1a_estimate():
    net = SliceInterpolationNet(1, 3, 2, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), num_attention_maps=2,
                                refine_prior=True)
    frames = torch.randn(2, 4, 4, 8, 16)
    prior = torch.cat([torch.randn(2, 1, 2, 8, 16), torch.softmax(torch.randn(2, 3, 2, 8, 16), 1)], 1)
    out = net(frames, prior)["output"].detach()
    torch.testing.assert_close(out[:, :1], prior[:, :1])
    assert torch.equal(out[:, 1:].argmax(1), prior[:, 1:].argmax(1))
    with pytest.raises(ValueError, match="prior"):
        net(frames)


def test_encoder_stops_at_the_requested_level():
    """The distillation teacher asks for level 1 only: same features, the deeper stages not computed."""
    torch.manual_seed(0)
    net = SliceInterpolationNet(1, 2, 4, widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1)).eval()
    frames = torch.randn(2, 3, 4, 16, 16)
    calls = []
    for stage in net.encoder.stages:
        stage.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        full = net.encode(frames)
        calls.clear()
        partial = net.encode(frames, up_to=1)
    assert len(full) == 5 and len(partial) == 2 and len(calls) == 1
    assert torch.equal(partial[1], full[1])
