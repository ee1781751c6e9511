"""The embedded example: MNI template from nilearn's wheel, thick slices simulated along z."""

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("nilearn", reason="nilearn (the example data's package) is not installed")

from rehrseg_nnunet.example_data import write_example_dataset  # noqa: E402


def test_example_dataset_is_a_thick_slice_raw_dataset(tmp_path):
    folder, cases = write_example_dataset(str(tmp_path), dataset_id=990, num_cases=2, scale_factor=4)
    assert [c.identifier for c in cases] == ["mni000", "mni001"]
    for case in cases:
        lr = sitk.ReadImage(f"{folder}/imagesTr/{case.identifier}_0000.nii.gz")
        label = sitk.ReadImage(f"{folder}/labelsTr/{case.identifier}.nii.gz")
        hr_size = case.hr_image.GetSize()
        assert lr.GetSpacing() == (1.0, 1.0, 4.0)
        assert lr.GetSize() == (197, 233, -(-hr_size[2] // 4))
        # the template's z direction is +z: LR origin = HR origin + 1.5 mm along z
        expected = np.asarray(case.hr_image.GetOrigin()) + (0.0, 0.0, 1.5)
        np.testing.assert_allclose(lr.GetOrigin(), expected, atol=1e-6)
        assert lr.GetDirection() == case.hr_image.GetDirection()
        assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1, 2}
    # the two cases sample the anatomy at different slice phases (2 mm apart)
    assert cases[1].hr_image.GetOrigin()[2] - cases[0].hr_image.GetOrigin()[2] == pytest.approx(2.0)
