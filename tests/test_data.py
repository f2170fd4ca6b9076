"""The in-memory segmentation set, its joint augmentation and the loader."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from edgeloop.data import AugmentConfig, SegmentationSet, make_loader, resize_pair
from edgeloop.models import IMAGENET_MEAN, IMAGENET_STD


def _data(n: int = 4, h: int = 24, w: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    masks = rng.choice(np.array([0, 2, 5], dtype=np.uint8), size=(n, h, w))
    masks[:, :3] = 255  # some ignored pixels
    return images, masks


def _normalised(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def test_augment_config_validates_strength() -> None:
    assert AugmentConfig().strength == 0.5
    assert AugmentConfig(0.0).hflip_p == 0.0
    assert AugmentConfig(1.0).scale_range == (0.5, 1.5)
    assert AugmentConfig(1.0).jitter == pytest.approx(0.4)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            AugmentConfig(bad)


@pytest.mark.parametrize("size", [(12, 16), (50, 41), (24, 32)])
def test_resize_pair_uses_nearest_for_masks(size: tuple[int, int]) -> None:
    images, masks = _data(1)
    image, mask = resize_pair(images[0], masks[0], size)
    assert image.shape == (*size, 3) and image.dtype == np.uint8
    assert mask.shape == size and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= set(np.unique(masks[0]))
    image, none = resize_pair(images[0], None, size)
    assert none is None and image.shape == (*size, 3)


def test_resize_pair_validates() -> None:
    images, masks = _data(1)
    with pytest.raises(ValueError, match="mask"):
        resize_pair(images[0], masks[0, :5], (8, 8))
    with pytest.raises(ValueError, match="image"):
        resize_pair(images[0, ..., 0], None, (8, 8))
    with pytest.raises(ValueError, match="size"):
        resize_pair(images[0], masks[0], (0, 8))


def test_set_validates_shapes() -> None:
    images, masks = _data(3)
    with pytest.raises(ValueError, match=r"masks.*\(2, 24, 32\)"):
        SegmentationSet(images, masks[:2])
    with pytest.raises(ValueError, match="images"):
        SegmentationSet(images[..., :2], masks)
    with pytest.raises(ValueError, match="seed"):
        SegmentationSet(images, masks, seed=-1)


@pytest.mark.parametrize("augment", [None, AugmentConfig(strength=0.0)])
def test_no_augmentation_returns_the_normalised_input(
    augment: AugmentConfig | None,
) -> None:
    images, masks = _data()
    dataset = SegmentationSet(images, masks, augment=augment)
    assert len(dataset) == 4
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert x.dtype == torch.float32 and x.shape == (3, 24, 32)
        assert y.dtype == torch.int64
        assert torch.equal(x, _normalised(images[i]))
        assert torch.equal(y, torch.from_numpy(masks[i]).long())


def test_strong_augmentation_keeps_masks_and_images_together() -> None:
    images, masks = _data(n=16)
    masks[masks == 255] = 0  # so that 255 in the output means padding
    dataset = SegmentationSet(images, masks, augment=AugmentConfig(1.0), seed=3)
    allowed = set(np.unique(masks).tolist()) | {255}
    changed = padded = 0
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert x.shape == (3, 24, 32) and x.dtype == torch.float32
        assert y.shape == (24, 32) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= allowed
        changed += not torch.equal(y, torch.from_numpy(masks[i]).long())
        pad = y == 255
        assert (x[:, pad] == 0).all()  # neutral after normalisation
        assert (x[:, ~pad] != 0).any()
        padded += bool(pad.any())
    assert changed >= 12 and padded >= 1


def _interior(region: torch.Tensor) -> torch.Tensor:
    """Pixels of a (H, W) bool region whose horizontal neighbours are in it too."""
    return region & torch.roll(region, 1, 1) & torch.roll(region, -1, 1)


def test_geometry_moves_image_and_mask_together() -> None:
    # A vertical stripe: after flip / scale, image brightness and mask agree.
    images = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((8, 32, 32), dtype=np.uint8)
    images[:, :, 4:12] = 255
    masks[:, :, 4:12] = 1
    dataset = SegmentationSet(images, masks, augment=AugmentConfig(0.6), seed=0)
    flipped = 0
    for i in range(8):
        x, y = dataset[i]
        bright = x.mean(0) > 0.5
        assert bright[_interior(y == 1)].all()
        assert not bright[_interior(y == 0)].any()
        flipped += bool((y[:, 20:] == 1).any())
    assert 1 <= flipped <= 7


def test_set_epoch_is_deterministic() -> None:
    images, masks = _data()
    a = SegmentationSet(images, masks, augment=AugmentConfig(0.8), seed=7)
    b = SegmentationSet(images, masks, augment=AugmentConfig(0.8), seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    order = [3, 1, 0, 2]
    seen = {i: b[i] for i in order}  # access order does not matter
    for i in range(4):
        xa, ya = a[i]
        assert torch.equal(xa, seen[i][0]) and torch.equal(ya, seen[i][1])
    x2, _ = a[1]
    a.set_epoch(3)
    x3, _ = a[1]
    assert not torch.equal(x2, x3)
    with pytest.raises(ValueError, match="epoch"):
        a.set_epoch(-1)


def test_loader_batches_and_is_seeded() -> None:
    images, masks = _data(n=10)
    dataset = SegmentationSet(images, masks)
    loader = make_loader(dataset, batch_size=4, seed=1)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3, 24, 32)] * 2 + [(2, 3, 24, 32)]
    assert batches[0][1].shape == (4, 24, 32)
    again = list(make_loader(dataset, batch_size=4, seed=1))
    assert all(torch.equal(p[1], q[1]) for p, q in zip(batches, again, strict=True))
    ordered = list(make_loader(dataset, batch_size=5, shuffle=False, drop_last=True))
    assert torch.equal(ordered[0][1], torch.from_numpy(masks[:5]).long())
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(dataset, batch_size=0)
    with pytest.raises(ValueError, match="weights"):
        make_loader(dataset, batch_size=2, weights=np.ones(3))


def test_weighted_loader_samples_the_heavy_item_most() -> None:
    n = 10
    images = np.zeros((n, 4, 4, 3), dtype=np.uint8)
    masks = np.arange(n, dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)
    weights = np.ones(n)
    weights[6] = 50.0
    loader = make_loader(
        SegmentationSet(images, masks), batch_size=5, weights=weights, seed=0
    )
    counts: Counter[int] = Counter()
    for _ in range(20):
        for _, y in loader:
            counts.update(y[:, 0, 0].tolist())
    assert sum(counts.values()) == 20 * n
    assert counts.most_common(1)[0][0] == 6
    assert counts[6] > 0.6 * 20 * n


def test_weather_only_touches_colours_and_is_seeded() -> None:
    images, masks = _data(n=24)
    plain = SegmentationSet(images, masks, augment=AugmentConfig(0.0, weather=0.0))
    wet = SegmentationSet(
        images, masks, augment=AugmentConfig(0.0, weather=1.0), seed=2
    )
    again = SegmentationSet(
        images, masks, augment=AugmentConfig(0.0, weather=1.0), seed=2
    )
    changed = 0
    for i in range(len(wet)):
        (x0, y0), (x1, y1), (x2, y2) = plain[i], wet[i], again[i]
        assert torch.equal(y1, y0)  # no geometry: the mask is untouched
        assert torch.equal(x1, x2) and torch.equal(y1, y2)  # seeded
        changed += not torch.equal(x1, x0)
    assert changed == len(wet)  # p = 1: every image gets an effect
    with pytest.raises(ValueError, match="weather must be a number in"):
        AugmentConfig(0.5, weather=1.5)


@pytest.mark.parametrize("effect", ["fog", "low_light", "glare"])
def test_each_weather_effect_by_hand(effect) -> None:
    from edgeloop.data import apply_weather

    x = torch.full((3, 8, 10), 0.5)
    x[:, :, :5] = 0.1  # a dark left half
    draws = {
        "effect": effect,
        "shape": (8, 10),
        "amount": 0.5,
        "gradient": False,
        "gain": np.array([0.2, 0.3, 0.6], dtype=np.float32),
        "centre": np.array([0.95, 0.5]),
        "sigma": 0.2,
        "peak": 1.0,
    }
    out = apply_weather(x.clone(), draws)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    if effect == "fog":  # halfway to light grey: contrast halves
        assert out[0, 0, 0].item() == pytest.approx(0.1 + (0.78 - 0.1) * 0.5)
        assert (out[:, :, 5:].mean() - out[:, :, :5].mean()) == pytest.approx(0.2)
    elif effect == "low_light":  # per-channel gains: darker and bluer
        assert out[:, 0, 9].tolist() == pytest.approx([0.1, 0.15, 0.3])
    else:  # brighter near the glare's centre (right edge) than far from it
        gain = out - x
        assert (gain >= 0).all() and gain[:, 4, 9].mean() > 5 * gain[:, 4, 0].mean()
