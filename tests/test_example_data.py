"""The embedded example: MNI template from nilearn's wheel, thick slices simulated along z."""

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("nilearn", reason="nilearn (the example data's package) is not installed")

from rehrseg_nnunet.example_data import head_box, mni_template, write_example_dataset  # noqa: E402


def test_example_dataset_is_a_thick_slice_raw_dataset(tmp_path):
    folder, cases = write_example_dataset(str(tmp_path), dataset_id=990, num_cases=2, scale_factor=4)
    assert [c.identifier for c in cases] == ["mni000", "mni001"]
    for case in cases:
        lr = sitk.ReadImage(f"{folder}/imagesTr/{case.identifier}_0000.nii.gz")
        label = sitk.ReadImage(f"{folder}/labelsTr/{case.identifier}.nii.gz")
        hr_size = case.hr_image.GetSize()
        assert lr.GetSpacing() == (1.0, 1.0, 4.0)
        assert lr.GetSize() == (hr_size[0], hr_size[1], -(-hr_size[2] // 4))
        # the template's z direction is +z: LR origin = HR origin + 1.5 mm along z
        expected = np.asarray(case.hr_image.GetOrigin()) + (0.0, 0.0, 1.5)
        np.testing.assert_allclose(lr.GetOrigin(), expected, atol=1e-6)
        assert lr.GetDirection() == case.hr_image.GetDirection()
        assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1, 2}
    # the two cases sample the anatomy at different slice phases (2 mm apart)
    assert cases[1].hr_image.GetOrigin()[2] - cases[0].hr_image.GetOrigin()[2] == pytest.approx(2.0)


def test_cases_are_cropped_to_the_head_and_keep_every_tissue_voxel(tmp_path):
    _, cases = write_example_dataset(str(tmp_path), dataset_id=990, num_cases=2, scale_factor=4)
    t1, label = mni_template()
    full = sitk.GetArrayFromImage(label)
    # the crop is the head's box + 4 voxels: the template's 197 x 233 x 189 lose their zero surround
    start, size = head_box(t1)
    assert cases[0].hr_image.GetSize() == tuple(size)
    assert size[0] * size[1] * size[2] < 0.6 * 197 * 233 * 189
    nonzero = np.nonzero(sitk.GetArrayFromImage(t1))
    assert all(s <= int(axis.min()) and int(axis.max()) < s + n
               for s, n, axis in zip(start, size, nonzero[::-1], strict=True))
    # phase 0 holds every tissue voxel, and its origin is the template's at the box's first voxel
    assert int((sitk.GetArrayFromImage(cases[0].hr_label) > 0).sum()) == int((full > 0).sum())
    # by hand: the template's origin (98, 134, -72) mm and direction diag(-1, -1, 1), moved to the box's start
    assert t1.GetOrigin() == (98.0, 134.0, -72.0) and t1.GetDirection() == (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    np.testing.assert_allclose(cases[0].hr_image.GetOrigin(), (98.0 - start[0], 134.0 - start[1], -72.0 + start[2]),
                               atol=1e-6)
