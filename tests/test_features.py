import numpy as np
import pytest

from edgeloop.features import (
    ObjectProfiles,
    image_features,
    mask_features,
    object_profile,
)


def test_mask_features_count_objects_per_class():
    mask = np.zeros((10, 10), np.uint8)
    mask[0:2, 0:2] = 1  # 4 px
    mask[5:7, 5:7] = 1  # 4 px, a second class-1 object
    mask[0:5, 8:10] = 2  # 10 px
    mask[9, 9] = 255
    f = mask_features(mask, (0, 1, 2, 3), (1, 2, 3), 255)
    assert f.class_pixels == (81, 8, 10, 0)
    assert f.ignore_pixels == 1
    assert f.objects_per_class == (0, 2, 1, 0)
    assert f.n_objects == 3
    assert f.object_fracs == (0.1, 0.04, 0.04)
    assert f.largest_object_frac == 0.1


def test_image_features_brightness_and_contrast():
    flat = np.full((8, 8, 3), 255, np.uint8)
    assert image_features(flat).brightness == 1.0
    assert image_features(flat).contrast == 0.0
    half = np.zeros((8, 8, 3), np.uint8)
    half[:4] = 255
    assert image_features(half).contrast == 0.5


def test_object_profile_counts_objects_by_relative_size():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[0:40, 0:40] = 2  # 1600 px = 16% of the image
    mask[50:52, 50:52] = 1  # 4 px, touching diagonally ...
    mask[52:54, 52:54] = 3  # ... another class: one 8-connected object of 8 px
    mask[90, 90:93] = 1  # 3 px: a speck, not an object
    mask[70:80, 0:10] = 255  # ignored pixels are not objects
    v = object_profile(mask, (1, 2, 3), bins=4, min_pixels=4)
    assert v.dtype == np.float32 and v.shape == (6,)
    # Bins are log-spaced from 4 px (0.04%) to 100%: edges 0.04%, 0.28%, 2%,
    # 14.1%, 100%. 8 px = 0.08% is in the first, 16% in the fourth.
    np.testing.assert_allclose(v, [1, 0, 0, 1, np.log1p(2), 1], rtol=1e-6)
    empty = object_profile(np.zeros((10, 10), np.uint8), (1, 2, 3), bins=4)
    np.testing.assert_array_equal(empty, [0, 0, 0, 0, 0, 1])  # never all zero
    profiles = ObjectProfiles((1, 2, 3), bins=4)
    assert profiles.dim == 6 and profiles.backbone == "object-profile4"
    np.testing.assert_array_equal(profiles.embed([mask, mask])[1], v)
    with pytest.raises(ValueError, match=r"mask must be \(H, W\)"):
        object_profile(np.zeros((4, 4, 3), np.uint8), (1,))
    with pytest.raises(ValueError, match="bins and min_pixels must be >= 1"):
        object_profile(mask, (1,), bins=0)
