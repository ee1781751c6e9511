"""SR inference API: pseudo-HR outputs on the exact HR grid."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.sr.infer import SuperResolver

c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
DIRECTION = (c, 0, s, 0, 1, 0, -s, 0, c)  # rotation about y; z column = (s, 0, c)


def lr_case(shape=(10, 24, 32), spacing=(1.0, 1.0, 4.0), origin=(-5.0, 3.0, 12.0)):
    rng = np.random.default_rng(1)
    images = []
    for channel in range(2):
        image = sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32) * (channel + 1))
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(DIRECTION)
        images.append(image)
    label = sitk.GetImageFromArray((rng.random(shape) > 0.7).astype(np.uint8) * 2)
    label.CopyInformation(images[0])
    return images, label


@pytest.mark.parametrize("with_label", [True, False])
def test_pseudohr_geometry_is_the_hr_grid(trained_sr_model, with_label):
    images, label = lr_case()
    result = SuperResolver(trained_sr_model["model"], "cpu")(images, label if with_label else None)
    # hand-computed: 40 slices of 1 mm; origin shifted by -d * 4 * 3/8 = -1.5 * (s, 0, c)
    expected_origin = (-5.0 - 1.5 * s, 3.0, 12.0 - 1.5 * c)
    for out in result.images + [result.label, result.uncertainty]:
        assert out.GetSize() == (32, 24, 40)
        np.testing.assert_allclose(out.GetSpacing(), (1.0, 1.0, 1.0))
        np.testing.assert_allclose(out.GetOrigin(), expected_origin, atol=1e-9)
        np.testing.assert_allclose(out.GetDirection(), DIRECTION)
    uncertainty = sitk.GetArrayFromImage(result.uncertainty)
    assert uncertainty.min() >= 0 and uncertainty.max() <= 1 and uncertainty.max() > uncertainty.min()
    assert set(np.unique(sitk.GetArrayFromImage(result.label))) <= {0, 1, 2}
    # intensities come back in scanner units: channel 1 was scaled x2
    hr = [sitk.GetArrayFromImage(im) for im in result.images]
    assert 1.3 < hr[1].std() / hr[0].std() < 3.0


@pytest.mark.bad_input
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 2.0), (1.0, 1.0, 3.0), (1.0, 1.0, 4.6), (4.0, 1.0, 1.0)])
def test_incompatible_case_is_rejected(trained_sr_model, spacing):
    """The SR API follows the thick-slice rule of every command: slices must hold r HR slices when rounded
    (3.5-4.5 mm for 4 mm and r = 4; a 3 mm case passed the old 25 % tolerance) along the model's axis."""
    images, label = lr_case(spacing=spacing)
    with pytest.raises(RehrsegInputError, match=r"x.nii.gz has spacing .* 4 mm slices along z \(r = 4: 3.5-4.5 mm"):
        SuperResolver(trained_sr_model["model"], "cpu")(images, label, source="x.nii.gz")
    images, label = lr_case(spacing=(1.0, 1.0, 4.4))  # within the rule: accepted
    SuperResolver(trained_sr_model["model"], "cpu")(images, label, source="x.nii.gz")
    with pytest.raises(RehrsegInputError, match="channel"):
        SuperResolver(trained_sr_model["model"], "cpu")(images[:1], label, source="x.nii.gz")
