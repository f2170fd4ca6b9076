"""Pre-annotation methods: SLIC, an off-the-shelf checkpoint, scores."""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.classmap import ClassMap
from edgeloop.pseudo import (
    SEGMENT_LABEL,
    UNLABELED,
    PreLabel,
    agreement,
    class_mapping,
    class_mask,
    load_off_the_shelf,
    quality,
    save_checkpoint,
    slic_prelabel,
    superpixel_vote,
    train_stand_in,
)
from edgeloop.synthetic import render_scene, sample_spec

NAMES = ("background", "fighter_jet", "airliner", "light_aircraft")
CM = ClassMap(NAMES, (0, 1, 2, 3), ((0, 0, 0),) * 4)


def _two_tone() -> tuple[np.ndarray, np.ndarray]:
    """A dark left half and a bright right half; the truth splits at column 20."""
    image = np.zeros((32, 40, 3), np.uint8)
    image[:, 20:] = 230
    truth = np.zeros((32, 40), np.uint8)
    truth[:, 20:] = 2
    return image, truth


def test_superpixel_vote_snaps_a_sloppy_model_mask_to_the_image_edge():
    image, truth = _two_tone()
    sloppy = truth.copy()
    sloppy[:, 17:20] = 2  # the model bleeds 3 columns over the edge
    pre = slic_prelabel(image, class_names=NAMES, model_mask=sloppy, n_segments=40)
    assert pre.method == "slic" and pre.labels == NAMES
    np.testing.assert_array_equal(pre.mask, truth)
    assert 0.85 < pre.confidence < 1.0  # the vote overruled the bleed


def test_slic_without_a_model_exports_unnamed_regions():
    image, _ = _two_tone()
    pre = slic_prelabel(image, class_names=NAMES, n_segments=20)
    assert set(pre.labels) == {SEGMENT_LABEL} and pre.confidence == 0.0
    assert len(pre.labels) == int(pre.mask.max()) + 1 >= 2
    assert (class_mask(pre, CM) == 255).all()  # nothing counts as a class yet


def test_superpixel_vote_keeps_all_ignored_segments_blank():
    seg = np.array([[0, 0, 1, 1]])
    mask = np.array([[3, 3, UNLABELED, UNLABELED]], np.uint8)
    voted, purity = superpixel_vote(seg, mask)
    assert voted.tolist() == [[3, 3, UNLABELED, UNLABELED]] and purity == 1.0


def test_class_mapping_makes_generic_brushes_for_one_to_many():
    lut, labels = class_mapping(
        ["__background__", "aeroplane", "bus"],
        {"__background__": "background", "aeroplane": list(NAMES[1:])},
        NAMES,
    )
    assert labels == (*NAMES, "aeroplane?")
    assert lut.tolist() == [0, 4, UNLABELED]
    with pytest.raises(ValueError, match="does not have"):
        class_mapping(["a"], {"zeppelin": "background"}, NAMES)
    with pytest.raises(ValueError, match="not among our classes"):
        class_mapping(["a"], {"a": "tank"}, NAMES)


def test_agreement_counts_a_generic_brush_as_agreeing_with_its_members():
    a = PreLabel("own_model", np.array([[0, 2, 2, 1]], np.uint8), NAMES, 0.9)
    generic = (*NAMES, "aeroplane?")
    b = PreLabel("off_the_shelf", np.array([[0, 4, 4, 0]], np.uint8), generic, 0.8)
    members = {"aeroplane?": list(NAMES[1:])}
    assert agreement(a, b, CM, generic_members=members) == pytest.approx(3 / 4)
    assert agreement(a, b, CM) == pytest.approx(1 / 4)
    assert quality(0.9, [0.75]) == pytest.approx(0.825)
    assert quality(0.9, []) == pytest.approx(0.9)


def test_off_the_shelf_is_skipped_without_a_checkpoint(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = {"architecture": "lraspp_mobilenet_v3_large", "checkpoint": None}
    assert load_off_the_shelf(spec, NAMES) is None
    assert "not in the torch cache" in caplog.text
    missing = {"checkpoint": str(tmp_path / "nope.pt")}
    assert load_off_the_shelf(missing, NAMES) is None


@pytest.mark.slow
def test_a_two_class_checkpoint_we_trained_pre_labels_aircraft_generically(tmp_path):
    """A background/aircraft model finds the aircraft; the person names the type."""
    rng = np.random.default_rng(0)
    images, masks = [], []
    for _ in range(16):
        image, mask = render_scene(sample_spec(rng, kind="eval"), size=64)
        images.append(image)
        masks.append((mask > 0).astype(np.uint8))  # 1 = any aircraft
    model = train_stand_in(
        images, masks, categories=["background", "aircraft"], steps=60, size=64
    )
    path = tmp_path / "aircraft.pt"
    save_checkpoint(path, model, categories=["background", "aircraft"])
    spec = {
        "architecture": "lraspp_mobilenet_v3_large",
        "checkpoint": str(path),
        "class_mapping": {
            "background": "background",
            "aircraft": ["fighter_jet", "airliner", "light_aircraft"],
        },
    }
    shelf = load_off_the_shelf(spec, NAMES)
    assert shelf is not None and shelf.categories == ("background", "aircraft")
    pres = shelf.prelabel(images)
    assert pres[0].labels == (*NAMES, "aircraft?")
    found = np.stack([p.mask == 4 for p in pres])
    truth = np.stack(masks).astype(bool)
    iou = (found & truth).sum() / (found | truth).sum()
    assert iou > 0.3, iou  # it learned where the aircraft are
    assert not np.isin(np.stack([p.mask for p in pres]), [1, 2, 3]).any()
