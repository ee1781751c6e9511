import math

import numpy as np
import pytest
import SimpleITK as sitk

from rehrseg_nnunet.degradation import (
    added_blur_fwhm,
    degradation_matrix,
    degrade_axis,
    labels_to_lr,
    profile_fwhm,
    simulate_thick_slices,
    slice_profile,
)


def measured_fwhm(fwhm: float, kind: str) -> float:
    x = np.linspace(-20, 20, 400001)
    y = slice_profile(x, fwhm, kind)
    above = x[y >= y.max() / 2]
    return above[-1] - above[0]


@pytest.mark.parametrize("fwhm", [1.7, 3.873, 6.0])
def test_gaussian_profile_has_requested_fwhm(fwhm):
    assert measured_fwhm(fwhm, "gaussian") == pytest.approx(fwhm, rel=1e-3)


def test_fwhm_from_variance_subtraction():
    # 4 mm slice from 1 mm voxels: sqrt(16 - 1) = 3.873 voxels
    assert added_blur_fwhm(4.0, 1.0) == pytest.approx(math.sqrt(15))
    assert profile_fwhm(6.5, 0.78, "gaussian") == pytest.approx(math.sqrt(6.5 ** 2 - 0.78 ** 2) / 0.78)
    assert profile_fwhm(4.0, 1.0, "box") == pytest.approx(4.0)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_box_profile_of_width_r_averages_each_group(r):
    fine = np.random.default_rng(r).normal(size=(6 * r, 3))
    thick = degrade_axis(fine, 0, r, float(r), "box")
    np.testing.assert_allclose(thick, fine.reshape(6, r, 3).mean(1), atol=1e-5)


def test_degradation_matrix_rows_are_normalised_and_centred():
    matrix = degradation_matrix(40, 4, math.sqrt(15))
    np.testing.assert_allclose(matrix.sum(1), 1, atol=1e-6)
    centre_of_mass = matrix[3] @ np.arange(40)
    assert centre_of_mass == pytest.approx(4 * 3 + 1.5, abs=1e-4)
    constant = degrade_axis(np.full((40, 5), 7.0), 0, 4, math.sqrt(15))
    np.testing.assert_allclose(constant, 7.0, rtol=1e-6)


def test_label_majority_with_centre_tie_break():
    labels = np.array([1, 1, 1, 0,   0, 2, 2, 0,   3, 3, 1, 1], dtype=np.int16)  # r = 4
    # group 1: majority 1; group 2: tie 0/2 -> centre slice (index 2 of group) = 2; group 3: tie 3/1 -> centre = 1
    np.testing.assert_array_equal(labels_to_lr(labels, 0, 4), [1, 2, 1])
    volume = np.stack([labels, labels[::-1]], axis=1)
    np.testing.assert_array_equal(labels_to_lr(volume, 0, 4)[:, 0], [1, 2, 1])


def test_simulated_thick_slices_have_exact_geometry():
    hr = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(10, 6, 5)).astype(np.float32))  # 10 slices
    hr.SetSpacing((1.0, 1.0, 1.0))
    hr.SetOrigin((5.0, 6.0, 7.0))
    hr.SetDirection((0, 0, 1, 0, 1, 0, -1, 0, 0))  # z column = (1, 0, 0)
    label = sitk.GetImageFromArray(np.zeros((10, 6, 5), np.uint8))
    label.CopyInformation(hr)
    lr, lr_label = simulate_thick_slices(hr, 2, 4, label=label)
    assert lr.GetSize() == (5, 6, 3)  # 10 slices padded to 12, / 4
    assert lr.GetSpacing() == (1.0, 1.0, 4.0)
    # LR origin = HR origin + d * h * (r - 1) / 2 = (5, 6, 7) + (1, 0, 0) * 1.5
    np.testing.assert_allclose(lr.GetOrigin(), (6.5, 6.0, 7.0))
    assert lr_label.GetSize() == lr.GetSize() and lr_label.GetOrigin() == lr.GetOrigin()


@pytest.mark.parametrize("scale_factor", [2, 3, 4, 5])
def test_lr_labels_on_tensors_equal_the_numpy_rule(scale_factor):
    """The trainer's vectorised LR targets (on the batch's device) follow labels_to_lr exactly, ties included."""
    import torch

    from rehrseg_nnunet.degradation import labels_to_lr_tensor

    rng = np.random.default_rng(scale_factor)
    labels = rng.integers(0, 4, size=(2, 1, 3 * scale_factor, 5, 6)).astype(np.int16)  # many ties among 4 classes
    labels[1, 0, :, 0, 0] = 3  # a column of one class
    labels[1, 0, :, 0, 1] = 0
    expected = np.stack([labels_to_lr(labels[b, 0], 0, scale_factor) for b in range(2)])[:, None]
    result = labels_to_lr_tensor(torch.from_numpy(labels), scale_factor, num_classes=4)
    assert result.dtype == torch.int16
    np.testing.assert_array_equal(result.numpy(), expected)


def test_centre_slice_rule_takes_slice_r_over_2_of_each_group():
    """The lrCentre ablation's LR target: slice r // 2 of every group of r (index 2, 6, 10 for r = 4)."""
    import torch

    from rehrseg_nnunet.degradation import centre_slice_labels

    labels = torch.arange(12, dtype=torch.int16).view(1, 1, 12, 1, 1).expand(1, 1, 12, 2, 3).contiguous()
    result = centre_slice_labels(labels, 4)
    assert result.shape == (1, 1, 3, 2, 3)
    assert result[0, 0, :, 0, 0].tolist() == [2, 6, 10]
    majority_differs = torch.tensor([1, 1, 0, 1], dtype=torch.int16).view(1, 1, 4, 1, 1)
    assert centre_slice_labels(majority_differs, 4).item() == 0  # the majority (1) is not what this rule takes
    with pytest.raises(ValueError, match="not a multiple of r = 4"):
        centre_slice_labels(labels[:, :, :10], 4)
