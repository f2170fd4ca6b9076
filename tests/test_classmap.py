import numpy as np
import pytest

from edgeloop.classmap import ClassMap


def test_remap_maps_void_value_to_ignore_index(class_map):
    raw = np.array([[0, 1], [11, 3]], dtype=np.uint8)
    mapped, invalid = class_map.remap(raw, {11: 255})
    assert invalid == []
    assert mapped.tolist() == [[0, 1], [255, 3]]


def test_remap_reports_values_outside_the_class_map(class_map):
    raw = np.array([[0, 7], [9, 255]], dtype=np.uint8)
    _, invalid = class_map.remap(raw)
    assert invalid == [7, 9]


def test_value_map_to_unknown_class_fails_loudly(class_map):
    with pytest.raises(ValueError, match="neither a class id"):
        class_map.remap(np.zeros((2, 2), np.uint8), {5: 9})


def test_from_params_checks_lengths():
    with pytest.raises(ValueError, match="same length"):
        ClassMap.from_params({"names": ["a", "b"], "palette": [[0, 0, 0]]})


def test_unknown_class_name_lists_valid_ones(class_map):
    with pytest.raises(ValueError, match="valid classes"):
        class_map.id_of("helicopter")
