from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from edgeloop.features import ImageFeatures
from edgeloop.imaging import encode_png, sha256
from edgeloop.lake import (
    ImageRecord,
    LabelRecord,
    LabelRegistry,
    LakeError,
    add_images,
    labels_at_iteration,
)


def _image(seed: int, size=(16, 16)) -> ImageRecord:
    rng = np.random.default_rng(seed)
    png = encode_png(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return ImageRecord(
        png=png,
        width=size[1],
        height=size[0],
        source="test",
        source_path=f"img{seed}.png",
        features=ImageFeatures(0.5, 0.1),
    )


def test_blobs_are_content_addressed_and_stay_inside_the_root(lake):
    uri = lake.put_blob(b"hello", kind="images")
    assert uri == f"blobs/images/{sha256(b'hello')[:2]}/{sha256(b'hello')}.png"
    assert lake.put_blob(b"hello", kind="images") == uri
    assert lake.get_blob(uri) == b"hello"
    with pytest.raises(LakeError, match="outside the lake root"):
        lake.get_blob("../../etc/passwd")


def test_append_is_idempotent_and_makes_no_empty_commit(lake):
    records = [_image(0), _image(1)]
    assert add_images(lake, records) == 0
    assert add_images(lake, records) is None
    assert lake.version("images") == 0
    assert add_images(lake, [_image(1), _image(2)]) == 1
    images = lake.read("images")
    assert len(images) == 3
    assert images.attrs["delta_version"] == 1
    assert lake.reads == {"images": 1}


def test_time_travel_reads_an_old_version(lake):
    add_images(lake, [_image(0)])
    add_images(lake, [_image(1)])
    assert len(lake.read("images", version=0)) == 1
    assert lake.reads["images"] == 0


def test_registry_rejects_a_bad_batch_whole(lake, class_map):
    image = _image(0)
    add_images(lake, [image])
    registry = LabelRegistry(lake, class_map)
    good = LabelRecord(image.image_id, np.zeros((16, 16), np.uint8), "seed", 0, "a")
    bad = LabelRecord(image.image_id, np.full((16, 16), 9, np.uint8), "human", 1, "b")
    with pytest.raises(LakeError, match=r"mask values \[9\] are not in the class map"):
        registry.append([good, bad])
    assert lake.version("labels") is None
    wrong_size = LabelRecord(image.image_id, np.zeros((8, 8), np.uint8), "seed", 0, "a")
    with pytest.raises(LakeError, match="does not match image"):
        registry.append([wrong_size])
    unknown = LabelRecord("f" * 64, np.zeros((16, 16), np.uint8), "seed", 0, "a")
    with pytest.raises(LakeError, match="unknown image_id"):
        registry.append([unknown])
    with pytest.raises(LakeError, match="origin"):
        registry.append([LabelRecord(image.image_id, good.mask, "guess", 0, "a")])
    assert registry.append([good]) == 0
    assert registry.append([good]) is None


def test_registry_stores_stats_and_mask_blob(lake, class_map):
    image = _image(0)
    add_images(lake, [image])
    mask = np.zeros((16, 16), np.uint8)
    mask[:4, :4] = 2
    registry = LabelRegistry(lake, class_map)
    registry.append([LabelRecord(image.image_id, mask, "seed", 0, "src", ("night",))])
    row = lake.read("labels").iloc[0]
    assert list(row["class_pixels"]) == [240, 0, 16, 0]
    assert list(row["condition_tags"]) == ["night"]
    assert list(row["object_fracs"]) == [16 / 256]
    assert np.array_equal(registry.load_mask(row["mask_blob"]), mask)


def _labels(rows):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    return pd.DataFrame(
        [
            {
                "label_id": f"l{i}",
                "image_id": img,
                "origin": origin,
                "iteration": it,
                "created_at": base.replace(minute=i),
            }
            for i, (img, origin, it) in enumerate(rows)
        ]
    )


def test_label_at_iteration_is_latest_trusted_row():
    labels = _labels(
        [
            ("a", "seed", 0),
            ("a", "human", 2),
            ("a", "pseudo", 3),  # never overrides a human label
            ("b", "pseudo", 1),  # no trusted label: the pseudo one is used
            ("c", "human", 5),  # not yet at iteration 3
        ]
    )
    at1 = labels_at_iteration(labels, 1).set_index("image_id")
    assert at1.loc["a", "label_id"] == "l0"
    at3 = labels_at_iteration(labels, 3).set_index("image_id")
    assert at3.loc["a", "label_id"] == "l1"
    assert at3.loc["b", "origin"] == "pseudo"
    assert "c" not in at3.index
