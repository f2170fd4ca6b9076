import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CAMVID
from helpers import make_folder_source, make_pair, write_png
from PIL import Image

from edgeloop.ingest import IngestLimits, ingest_source
from edgeloop.lake import LabelRegistry, add_images
from edgeloop.sources import SourceConfig, SourceError

OBJECTS = ("fighter_jet", "airliner", "light_aircraft")


def _ingest(root, class_map, lake=None, limits=None, **source):
    config = SourceConfig.from_params({"kind": "folders", "root": str(root), **source})
    batch = ingest_source(
        config,
        class_map,
        limits=limits or IngestLimits(),
        object_classes=OBJECTS,
        iteration=0,
        progress=False,
    )
    if lake is not None:
        add_images(lake, batch.images)
        LabelRegistry(lake, class_map).append(batch.labels)
    return batch


def test_good_folder_source_gives_images_labels_and_tags(tmp_path, class_map, lake):
    root = make_folder_source(tmp_path / "src", n=4, tags=["night"])
    batch = _ingest(root, class_map, lake)
    assert len(batch.images) == 4 and len(batch.labels) == 4
    assert batch.quarantine.empty
    assert batch.labels[0].condition_tags == ("night",)
    images = lake.read("images")
    assert set(images["width"]) == {32} and set(images["height"]) == {24}
    assert set(images["n_objects"]) == {2}
    assert images["largest_object_frac"].iloc[0] == pytest.approx(180 / 768)
    assert len(lake.read("labels")) == 4


def test_bad_items_are_quarantined_with_reasons_and_the_rest_stored(
    tmp_path, class_map, lake
):
    root = make_folder_source(tmp_path / "src", n=3)
    rng = np.random.default_rng(7)
    # corrupt image: a truncated PNG
    data = (root / "images" / "img000.png").read_bytes()
    (root / "images" / "bad_corrupt.png").write_bytes(data[: len(data) // 2])
    write_png(root / "masks" / "bad_corrupt.png", make_pair(rng)[1])
    # mask values outside the class map
    image, mask = make_pair(rng)
    mask[0, 0] = 7
    write_png(root / "images" / "bad_values.png", image)
    write_png(root / "masks" / "bad_values.png", mask)
    # image/mask size mismatch
    write_png(root / "images" / "bad_size.png", image)
    write_png(root / "masks" / "bad_size.png", np.zeros((10, 10), np.uint8))
    # a duplicate of img001 (same pixels, hence same sha)
    shutil.copy(root / "images" / "img001.png", root / "images" / "dup.png")
    shutil.copy(root / "masks" / "img001.png", root / "masks" / "dup.png")
    # a path escaping the root through a symlink
    outside = write_png(tmp_path / "outside.png", image)
    os.symlink(outside, root / "images" / "escape.png")

    batch = _ingest(root, class_map, lake)
    reasons = dict(
        zip(batch.quarantine["name"], batch.quarantine["reason"], strict=True)
    )
    assert set(reasons) == {"bad_corrupt", "bad_values", "bad_size", "img001", "escape"}
    assert reasons["bad_corrupt"].startswith("corrupt or unreadable image")
    assert "mask values [7] are outside the class map" in reasons["bad_values"]
    assert reasons["bad_size"] == "size mismatch: image is 32x24, mask is 10x10"
    assert "duplicate: same content (sha256) as 'dup'" in reasons["img001"]
    assert "resolves outside the source root" in reasons["escape"]
    assert len(lake.read("images")) == 3  # dup, img000, img002
    assert len(lake.read("labels")) == 3


def test_oversized_image_is_quarantined(tmp_path, class_map):
    root = make_folder_source(tmp_path / "src", n=2)
    rng = np.random.default_rng(3)
    write_png(root / "images" / "huge.png", rng.integers(0, 255, (64, 64, 3), np.uint8))
    batch = _ingest(root, class_map, limits=IngestLimits(max_image_pixels=1000))
    assert len(batch.images) == 2
    assert list(batch.quarantine["reason"]) == [
        "image is 64x64, over the limit of 1000 pixels"
    ]


def test_empty_source_fails_clearly(tmp_path, class_map):
    (tmp_path / "src" / "images").mkdir(parents=True)
    with pytest.raises(SourceError, match="lists no items"):
        _ingest(tmp_path / "src", class_map)
    with pytest.raises(SourceError, match="does not exist"):
        _ingest(tmp_path / "nowhere", class_map)


def test_reingest_adds_nothing_and_makes_no_commit(tmp_path, class_map, lake):
    root = make_folder_source(tmp_path / "src", n=3)
    _ingest(root, class_map, lake)
    versions = (lake.version("images"), lake.version("labels"))
    _ingest(root, class_map, lake)
    assert (lake.version("images"), lake.version("labels")) == versions == (0, 0)
    assert len(lake.read("images")) == 3


def test_image_ids_are_stable_across_runs(tmp_path, class_map):
    root = make_folder_source(tmp_path / "src", n=2)
    first = [r.image_id for r in _ingest(root, class_map).images]
    second = [r.image_id for r in _ingest(root, class_map).images]
    assert first == second


def _palette_png(path: Path, mask: np.ndarray) -> None:
    img = Image.fromarray(mask, mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [224, 224, 192] * 252)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_voc_layout_keeps_official_split_and_border_is_ignored(tmp_path, class_map):
    root = tmp_path / "voc"
    rng = np.random.default_rng(0)
    for stem in ("2007_000001", "2007_000002", "2007_000003"):
        image, mask = make_pair(rng)
        mask[0, :] = 255  # VOC's void border
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        _palette_png(root / "SegmentationClass" / f"{stem}.png", mask)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000001\n2007_000002\n")
    (lists / "val.txt").write_text("2007_000003\n")
    batch = _ingest(root, class_map, kind="voc")
    assert batch.quarantine.empty
    assert sorted(r.split for r in batch.images) == ["train", "train", "val"]
    assert all((label.mask[0] == 255).all() for label in batch.labels)


def test_camvid_list_files_strip_prefix_and_reject_escapes(tmp_path, class_map):
    root = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        image, mask = make_pair(rng)
        mask[0, 0] = 11  # CamVid's Unlabelled
        write_png(root / "train" / f"f{i}.png", image)
        write_png(root / "trainannot" / f"f{i}.png", mask)
        lines.append(
            f"/SegNet/CamVid/train/f{i}.png /SegNet/CamVid/trainannot/f{i}.png"
        )
    lines.append("/SegNet/CamVid/../../etc/passwd /SegNet/CamVid/trainannot/f0.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    batch = _ingest(
        root,
        class_map,
        kind="camvid",
        strip_prefix="/SegNet/CamVid/",
        list_files={"train": "train.txt"},
        value_map={11: 255},
    )
    assert len(batch.images) == 3
    assert batch.labels[0].mask[0, 0] == 255
    assert list(batch.quarantine["reason"]) == [
        "image path '../../etc/passwd' resolves outside the source root"
    ]


needs_camvid = pytest.mark.skipif(not CAMVID.is_dir(), reason="CamVid not present")


@needs_camvid
@pytest.mark.slow
def test_camvid_copy_with_corrupted_files(tmp_path, lake):
    from edgeloop.classmap import ClassMap

    names = [f"c{i}" for i in range(11)]
    cm = ClassMap(tuple(names), tuple(range(11)), tuple((i, i, i) for i in range(11)))
    root = tmp_path / "camvid"
    lines = (CAMVID / "val.txt").read_text().splitlines()[:12]
    for line in lines:
        for rel in line.split():
            rel = rel.removeprefix("/SegNet/CamVid/")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(CAMVID / rel, root / rel)
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    first_img = root / lines[0].split()[0].removeprefix("/SegNet/CamVid/")
    first_img.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    second_mask = root / lines[1].split()[1].removeprefix("/SegNet/CamVid/")
    second_mask.write_bytes(second_mask.read_bytes()[:200])
    config = SourceConfig.from_params(
        {
            "kind": "camvid",
            "root": str(root),
            "strip_prefix": "/SegNet/CamVid/",
            "list_files": {"val": "val.txt"},
            "value_map": {11: 255},
        }
    )
    batch = ingest_source(
        config,
        cm,
        limits=IngestLimits(),
        object_classes=("c8",),
        iteration=0,
        progress=False,
    )
    assert len(batch.images) == 10
    reasons = batch.quarantine.set_index("name")["reason"]
    assert reasons[first_img.stem].startswith("corrupt or unreadable image")
    assert reasons[second_mask.stem].startswith("corrupt or unreadable mask")
    assert {r.split for r in batch.images} == {"val"}
    add_images(lake, batch.images)
    assert len(lake.read("images")) == 10
