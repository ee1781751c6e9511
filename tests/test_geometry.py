import math

import numpy as np
import pytest

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.geometry import Grid, detect_slice_axis, infer_scale_factor, parse_slice_axis

ROT_X_90 = (1, 0, 0, 0, 0, -1, 0, 1, 0)  # columns: x -> (1,0,0), y -> (0,0,1), z -> (0,-1,0)
c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
ROT_Z_30 = (c, -s, 0, s, c, 0, 0, 0, 1)  # columns: x -> (c, s, 0), y -> (-s, c, 0), z -> (0, 0, 1)
FLIP_XY = (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # LPS <-> RAS style flip


@pytest.mark.parametrize("direction, slice_axis, r, spacing, expected_origin", [
    # identity, z thick: shift = -(0,0,1) * 4 * 3/8 = (0, 0, -1.5)
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), 2, 4, (1.0, 1.0, 4.0), (10.0, 20.0, 28.5)),
    # identity, r = 2, 3 mm: shift = -3 * 1/4 = -0.75 along z
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), 2, 2, (1.0, 1.0, 3.0), (10.0, 20.0, 29.25)),
    # rotation about x, z column = (0, -1, 0); r = 3, s = 3: shift = +(0, 1, 0) * 3 * 2/6 = (0, 1, 0)
    (ROT_X_90, 2, 3, (0.5, 0.5, 3.0), (10.0, 21.0, 30.0)),
    # 30 degree rotation, thick axis x: column (c, s, 0); r = 4, s = 6: shift = -(c, s, 0) * 6 * 3/8 = -2.25 (c, s, 0)
    (ROT_Z_30, 0, 4, (6.0, 1.5, 1.5), (10.0 - 2.25 * c, 20.0 - 2.25 * s, 30.0)),
    # flipped axes, thick axis y: column (0, -1, 0); r = 3, s = 4.5: shift = +(0, 1, 0) * 4.5 * 2/6 = (0, 1.5, 0)
    (FLIP_XY, 1, 3, (1.5, 4.5, 1.5), (10.0, 21.5, 30.0)),
])
def test_hr_grid_against_hand_computed_values(direction, slice_axis, r, spacing, expected_origin):
    lr = Grid((8, 9, 10), spacing, (10.0, 20.0, 30.0), direction)
    hr = lr.refine(slice_axis, r)
    expected_size = [8, 9, 10]
    expected_size[slice_axis] *= r
    expected_spacing = list(spacing)
    expected_spacing[slice_axis] /= r
    assert hr.size == tuple(expected_size)
    np.testing.assert_allclose(hr.spacing, expected_spacing)
    np.testing.assert_allclose(hr.origin, expected_origin, atol=1e-9)
    assert hr.direction == direction
    # round trip
    back = hr.coarsen(slice_axis, r)
    assert back.size == lr.size
    np.testing.assert_allclose(back.origin, lr.origin, atol=1e-9)
    np.testing.assert_allclose(back.spacing, lr.spacing)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_lr_slice_centre_is_mean_of_its_hr_slices_in_physical_space(r):
    lr = Grid((5, 6, 7), (0.8, 0.8, 2.4 * r / 2), (-3.0, 4.0, 7.5), ROT_Z_30)
    hr = lr.refine(2, r)
    lr_image = lr.image_from_array(np.zeros((7, 6, 5), np.float32))
    hr_image = hr.image_from_array(np.zeros((7 * r, 6, 5), np.float32))
    for k in (0, 3, 6):
        centre = np.asarray(lr_image.TransformIndexToPhysicalPoint((2, 1, k)))
        hr_points = [hr_image.TransformIndexToPhysicalPoint((2, 1, r * k + j)) for j in range(r)]
        np.testing.assert_allclose(np.mean(hr_points, axis=0), centre, atol=1e-9)


def test_image_from_array_carries_geometry():
    grid = Grid((4, 5, 6), (0.5, 0.6, 3.0), (1.0, 2.0, 3.0), ROT_X_90)
    image = grid.image_from_array(np.ones((6, 5, 4), np.float32))
    assert image.GetSize() == (4, 5, 6)
    assert image.GetSpacing() == (0.5, 0.6, 3.0)
    assert image.GetOrigin() == (1.0, 2.0, 3.0)
    assert image.GetDirection() == tuple(float(v) for v in ROT_X_90)
    with pytest.raises(ValueError):
        grid.image_from_array(np.ones((4, 5, 6), np.float32))


def test_slice_axis_detection_and_scale_factor():
    assert detect_slice_axis((0.78, 0.78, 6.5)) == 2
    assert detect_slice_axis((5.0, 1.0, 1.0)) == 0
    assert infer_scale_factor((0.78, 0.78, 6.5), 2) == 8
    assert infer_scale_factor((1.0, 1.0, 3.0), 2) == 3
    with pytest.raises(RehrsegInputError, match="isotropic"):
        detect_slice_axis((1.0, 1.0, 1.2), "a.nii.gz")
    with pytest.raises(RehrsegInputError, match="ambiguous.*--slice-axis"):
        detect_slice_axis((1.0, 3.0, 3.2), "a.nii.gz")
    with pytest.raises(RehrsegInputError, match="2D"):
        detect_slice_axis((1.0, 3.0), "a.nii.gz")
    with pytest.raises(RehrsegInputError, match="--scale-factor"):
        infer_scale_factor((0.5, 0.5, 6.0), 2)  # r = 12
    assert parse_slice_axis("z") == 2 and parse_slice_axis("0") == 0 and parse_slice_axis(None) is None
    with pytest.raises(RehrsegInputError):
        parse_slice_axis("w")
