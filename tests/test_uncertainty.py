"""Stage 1c's uncertainty and the pseudo-HR intensities, on a model trained long enough to learn.

The session's ``trained_sr_model`` runs 4 steps per stage; these properties need a model that has
learned something, so this module trains its own (a few hundred steps on two 48^3 phantoms, ~1 min).
"""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantoms import phantom_hr, write_thick_slice_dataset
from scipy import ndimage

from rehrseg_nnunet.degradation import simulate_thick_slices
from rehrseg_nnunet.sr.config import SRConfig
from rehrseg_nnunet.sr.infer import SuperResolver, load_stage_network
from rehrseg_nnunet.sr.train import SRTrainingOptions, train_sr

R = 4
MARGIN = 6


@pytest.fixture(scope="module")
def learned_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("uasr")
    raw = root / "raw"
    write_thick_slice_dataset(str(raw), dataset_id=511, num_cases=2, r=R, background_margin=MARGIN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("nnUNet_raw", str(raw))
        options = SRTrainingOptions(output=str(root / "model"), device="cpu", steps=(300, 150, 400), save_every=1000)
        model = train_sr("511", options)
    return model


def lr_phantom(seed: int, hr: np.ndarray | None = None, labels: np.ndarray | None = None):
    """An unseen thick-slice case (1 x 1 x 4 mm) with its HR truth, zero background at the in-plane border."""
    if hr is None:
        hr, labels = phantom_hr((48, 48, 48), seed=seed)
    hr[:, :MARGIN], hr[:, -MARGIN:], hr[:, :, :MARGIN], hr[:, :, -MARGIN:] = 0, 0, 0, 0
    image = sitk.GetImageFromArray(hr)
    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(image)
    lr_image, lr_label = simulate_thick_slices(image, 2, R, label=label)
    return lr_image, sitk.Cast(lr_label, sitk.sitkUInt8), hr, labels


def test_sigma_is_high_at_edges_and_low_in_flat_regions(learned_model):
    lr_image, lr_label, hr, labels = lr_phantom(seed=7)
    result = SuperResolver(learned_model, "cpu")([lr_image], lr_label)
    sigma = sitk.GetArrayFromImage(result.raw_uncertainty)
    boundary = ndimage.morphological_gradient(labels, size=3) > 0  # the blobs' surfaces: step edges
    far = ndimage.distance_transform_edt(~boundary) >= 4
    inside = np.zeros_like(boundary)
    inside[:, MARGIN + 2:-MARGIN - 2, MARGIN + 2:-MARGIN - 2] = True
    edges, flat = sigma[boundary & inside].mean(), sigma[far & inside].mean()
    assert edges > 1.5 * flat, (edges, flat)


def test_uncertainty_has_one_fixed_scale_for_every_case(learned_model):
    config = SRConfig.load(learned_model)
    with open(os.path.join(learned_model, "config.json")) as handle:
        assert json.load(handle)["uncertainty_scale"] == config.uncertainty_scale
    assert 0 < config.uncertainty_scale < 1
    resolver = SuperResolver(learned_model, "cpu")
    maxima = []
    for seed in (7, 8):
        lr_image, lr_label, _, _ = lr_phantom(seed)
        result = resolver([lr_image], lr_label)
        written = sitk.GetArrayFromImage(result.uncertainty)
        sigma = sitk.GetArrayFromImage(result.raw_uncertainty)
        kept = written > 0  # background is written as 0
        np.testing.assert_allclose(written[kept], np.minimum(sigma[kept] / config.uncertainty_scale, 1), rtol=1e-5)
        maxima.append(written.max())
    assert 0 <= min(maxima) and max(maxima) <= 1


def test_pseudohr_keeps_the_source_background_and_range(learned_model):
    lr_image, lr_label, _, _ = lr_phantom(seed=9)
    lr = sitk.GetArrayFromImage(lr_image)
    assert (lr == 0).mean() > 0.3 and lr.min() < 0  # an exact-zero background around tissue that goes below it
    result = SuperResolver(learned_model, "cpu")([lr_image], lr_label)
    hr = sitk.GetArrayFromImage(result.images[0])
    written = sitk.GetArrayFromImage(result.uncertainty)
    # hand-computed: the in-plane border of every LR slice is 0, so is every HR slice's
    border = np.ones(hr.shape, dtype=bool)
    border[:, MARGIN:-MARGIN, MARGIN:-MARGIN] = False
    assert np.all(hr[border] == 0) and np.all(written[border] == 0)
    assert hr.min() >= lr.min() and hr.max() <= lr.max()


def test_no_banding_with_the_slice_period(learned_model):
    """A phantom whose content does not change along z: every HR slice phase is equally (un)certain."""
    hr, labels = phantom_hr((48, 48, 48), seed=3)
    hr = np.repeat(hr[24:25], 48, axis=0)
    labels = np.repeat(labels[24:25], 48, axis=0)
    lr_image, lr_label, _, _ = lr_phantom(0, hr, labels)
    written = sitk.GetArrayFromImage(SuperResolver(learned_model, "cpu")([lr_image], lr_label).uncertainty)
    by_phase = np.array([written[phase::R].mean() for phase in range(R)])
    assert by_phase.mean() > 0
    assert np.all(np.abs(by_phase / by_phase.mean() - 1) <= 0.2), by_phase


def test_the_m_reconstructions_differ_and_the_attention_chooses(learned_model):
    net = load_stage_network(learned_model, "1c", torch.device("cpu"))
    m = net.num_attention_maps
    weights = net.reconstructions.weight.detach().view(m, -1)
    spread = (weights - weights.mean(0)).norm(dim=1) / weights.mean(0).norm()
    assert float(spread.min()) > 0.1, spread
    resolver = SuperResolver(learned_model, "cpu")
    captured = []
    resolver.net.attention.register_forward_hook(lambda module, args, out: captured.append(out.detach()))
    lr_image, lr_label, _, _ = lr_phantom(seed=7)
    resolver([lr_image], lr_label)
    logits = torch.cat(captured)
    attention = torch.softmax(logits.view(logits.shape[0], m, -1), dim=1)
    # uniform attention (max 1/M everywhere) would carry no information into sigma
    assert float(attention.max(1).values.mean()) > 1.5 / m
