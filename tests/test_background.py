"""Pseudo-HR images keep the source's exact background value and intensity range."""

import numpy as np

from rehrseg_nnunet.image_quality import auroc
from rehrseg_nnunet.sr.background import background_value, hr_background_mask, restore_source_intensities


def test_hr_background_is_each_thick_slices_background_on_its_r_slices():
    lr = np.array([True, True, False, True])[:, None, None]  # 4 LR slices, background except slice 2
    mask = hr_background_mask(lr, 2)[:, 0, 0]
    # r = 2: HR slices 2k and 2k + 1 lie inside thick slice k (and are nnU-Net's nearest copies of it)
    np.testing.assert_array_equal(mask, [True, True, True, True, False, False, True, True])


def test_non_zero_region_equals_the_thick_slice_images():
    """An SR estimate clipped onto the background value outside the thick-slice background is moved off it,
    so nnU-Net's non-zero mask of the pseudo-HR image is the thick-slice image's, copied onto the HR grid."""
    lr = np.zeros((1, 3, 4, 4), dtype=np.float32)
    lr[0, 1, 1:3, 1:3] = [[0.25, 6.0], [7.0, 8.0]]  # thick slice 1 holds tissue, 0.25 the darkest
    hr = np.full((1, 6, 4, 4), 5.0, dtype=np.float32)
    hr[0, 2, 1, 1] = -1.0  # an SR undershoot inside the tissue: clipped to 0, then moved off the background
    background = restore_source_intensities(hr, lr, 2)
    np.testing.assert_array_equal(hr[0] != 0, np.repeat(lr[0] != 0, 2, axis=0))
    assert hr[0, 2, 1, 1] == 0.25
    np.testing.assert_array_equal(background, np.repeat(lr[0] == 0, 2, axis=0))


def test_background_value_is_the_exact_value_around_the_anatomy():
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(4, 8, 8))
    assert background_value(noisy) is None  # no exact background in a noise-only scan
    masked = noisy.copy()
    masked[:, :2], masked[:, -2:], masked[:, :, :2], masked[:, :, -2:] = 0.0, 0.0, 0.0, 0.0
    masked[:, 3, 3] = -9.0  # z-scored tissue goes below the background: the minimum is not the background
    assert background_value(masked) == 0.0


def test_restore_clips_to_the_source_range_and_writes_the_background():
    lr = np.zeros((2, 3, 4, 4), dtype=np.float32)
    lr[0, :, 1:3, 1:3] = [[5.0, 6.0], [7.0, 8.0]]
    lr[1] = 2.0
    lr[1, :, 1:3, 1:3] = 4.0
    hr = np.full((2, 6, 4, 4), 9.5, dtype=np.float32)
    hr[:, :, 0, 0] = -3.0
    background = restore_source_intensities(hr, lr, 2)
    assert hr[0].min() == 0.0 and hr[0].max() == 8.0
    assert hr[1].min() == 2.0 and hr[1].max() == 4.0
    expected = np.ones((4, 4), dtype=bool)
    expected[1:3, 1:3] = False
    np.testing.assert_array_equal(background[0], expected)
    np.testing.assert_array_equal(hr[0][:, ~expected], 8.0)  # inside: the network's 9.5, clipped to the maximum
    np.testing.assert_array_equal(hr[0][:, expected], 0.0)
    np.testing.assert_array_equal(hr[1][:, expected], 2.0)


def test_a_channel_without_background_gives_no_common_mask():
    lr = np.zeros((2, 2, 10, 10), dtype=np.float32)
    lr[1] = np.arange(200, dtype=np.float32).reshape(2, 10, 10)  # its minimum is 1 voxel in 200: no background
    hr = np.ones((2, 4, 10, 10), dtype=np.float32)
    assert restore_source_intensities(hr, lr, 2) is None
    assert np.all(hr[0] == 0.0)  # channel 0 is all background


def test_auroc_hand_computed():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == 0.75
    assert auroc(np.array([1.0, 1.0, 0.0]), np.array([True, False, False])) == 0.75  # a tie counts half
    assert np.isnan(auroc(np.array([1.0, 2.0]), np.array([False, False])))
