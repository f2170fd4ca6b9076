import numpy as np

from edgeloop.features import image_features, mask_features


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
