"""Tests for the procedural aircraft scene generator."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import ndimage

from edgeloop import synthetic as syn


def _tag_fractions(scenes: list[syn.Scene]) -> dict[str, float]:
    counts = Counter(tag for scene in scenes for tag in scene.tags)
    return {tag: counts[tag] / len(scenes) for tag in syn.CONDITION_TAGS}


@pytest.fixture(scope="module")
def stream() -> list[syn.Scene]:
    return syn.generate_scenes("stream", 2000, size=64, seed=0)


def test_vocabulary() -> None:
    assert syn.CONDITION_TAGS == syn.LIGHTINGS + syn.BACKGROUNDS + syn.EFFECTS
    assert set(syn.RARE_CONDITIONS) <= set(syn.CONDITION_TAGS)
    assert syn.CLASS_NAMES[0] == "background"
    assert len(syn.CLASS_NAMES) == 4


@pytest.mark.parametrize("kind", ["collected", "stream", "eval"])
def test_determinism(kind: str) -> None:
    first = syn.generate_scenes(kind, 12, size=48, seed=3)
    again = syn.generate_scenes(kind, 12, size=48, seed=3)
    other = syn.generate_scenes(kind, 12, size=48, seed=4)
    for a, b in zip(first, again, strict=True):
        assert a.name == b.name
        assert a.tags == b.tags
        assert a.spec == b.spec
        assert a.captured_at == b.captured_at
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert any(
        not np.array_equal(a.image, b.image) for a, b in zip(first, other, strict=True)
    )


def test_render_scene_is_deterministic() -> None:
    spec = syn.sample_spec(np.random.default_rng(1), kind="eval", force="cloud")
    image_a, mask_a = syn.render_scene(spec, size=64)
    image_b, mask_b = syn.render_scene(spec, size=64)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)


def test_kinds_use_independent_streams() -> None:
    collected = syn.generate_scenes("collected", 4, size=32, seed=0)
    evaluation = syn.generate_scenes("eval", 4, size=32, seed=0)
    assert [s.spec.seed for s in collected] != [s.spec.seed for s in evaluation]


@pytest.mark.parametrize("size", [32, 64, 100])
def test_shapes_and_values(size: int) -> None:
    scenes = syn.generate_scenes("eval", 27, size=size, seed=1)
    for i, scene in enumerate(scenes):
        assert scene.name == f"eval_{i:05d}"
        assert scene.image.shape == (size, size, 3)
        assert scene.image.dtype == np.uint8
        assert scene.mask.shape == (size, size)
        assert scene.mask.dtype == np.uint8
        assert set(np.unique(scene.mask).tolist()) <= {0, 1, 2, 3}
        assert scene.captured_at is None
        assert scene.tags == tuple(sorted(scene.tags))


def test_spec_tags() -> None:
    spec = syn.SceneSpec(
        background="sky",
        lighting="day",
        glare=True,
        haze=False,
        cloud=False,
        aircraft=(),
        seed=0,
    )
    assert spec.tags() == ("day", "glare", "sky")


def test_zero_scenes() -> None:
    assert syn.generate_scenes("stream", 0) == []


def test_stream_timestamps(stream: list[syn.Scene]) -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    times = [scene.captured_at for scene in stream]
    assert all(t is not None for t in times)
    assert times == sorted(times)
    assert min(times) >= start
    assert max(times) < start + timedelta(days=3)
    # Traffic is heavier by day than by night.
    hours = Counter(t.hour for t in times)
    assert hours[12] > 2 * hours[2]


def test_stream_custom_window() -> None:
    start = datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    scenes = syn.generate_scenes("stream", 200, size=32, start=start, days=1)
    assert all(start <= s.captured_at < start + timedelta(days=1) for s in scenes)


def test_stream_conditions_follow_hour(stream: list[syn.Scene]) -> None:
    for scene in stream:
        hour = scene.captured_at.hour
        if scene.spec.lighting == "night":
            assert hour >= 21 or hour <= 5
        if scene.spec.lighting == "dusk":
            assert 5 <= hour <= 7 or 17 <= hour <= 20
        if scene.spec.glare:
            assert 10 <= hour <= 14


def test_stream_rare_rates(stream: list[syn.Scene]) -> None:
    fractions = _tag_fractions(stream)
    for tag in syn.RARE_CONDITIONS:
        assert 0.03 <= fractions[tag] <= 0.10, (tag, fractions[tag])
    assert 0.2 <= fractions["ground"] <= 0.4


def test_stream_rare_rate_is_a_parameter() -> None:
    rarer = _tag_fractions(syn.generate_scenes("stream", 2000, size=32, rare_rate=0.02))
    for tag in syn.RARE_CONDITIONS:
        assert 0.005 <= rarer[tag] <= 0.04, (tag, rarer[tag])
    # 0 leaves every rare condition out; the eval set does not use the rate.
    none = _tag_fractions(syn.generate_scenes("stream", 300, size=32, rare_rate=0))
    assert all(none[tag] == 0 for tag in syn.RARE_CONDITIONS)
    assert [s.spec for s in syn.generate_scenes("eval", 5, size=32, rare_rate=0)] == [
        s.spec for s in syn.generate_scenes("eval", 5, size=32)
    ]


def test_collected_is_mostly_easy() -> None:
    scenes = syn.generate_scenes("collected", 1000, size=32, seed=0)
    fractions = _tag_fractions(scenes)
    for tag in syn.RARE_CONDITIONS:
        assert fractions[tag] < 0.01, (tag, fractions[tag])
    assert fractions["day"] > 0.7
    assert 0.1 <= fractions["ground"] <= 0.3


def test_eval_covers_every_tag() -> None:
    scenes = syn.generate_scenes("eval", 300, size=32, seed=0)
    counts = Counter(tag for scene in scenes for tag in scene.tags)
    for tag in syn.CONDITION_TAGS:
        assert counts[tag] >= 30, (tag, counts[tag])


def test_small_eval_is_spread() -> None:
    scenes = syn.generate_scenes("eval", 18, size=32, seed=0)
    counts = Counter(tag for scene in scenes for tag in scene.tags)
    assert all(counts[tag] >= 2 for tag in syn.CONDITION_TAGS)


@pytest.mark.parametrize("kind", ["collected", "stream", "eval"])
def test_every_class_is_common(kind: str) -> None:
    scenes = syn.generate_scenes(kind, 200, size=48, seed=2)
    for cls in (1, 2, 3):
        present = sum(bool((scene.mask == cls).any()) for scene in scenes)
        assert present >= 0.2 * len(scenes), (cls, present)


def test_scale_range() -> None:
    size = 64
    scenes = syn.generate_scenes("stream", 500, size=size, seed=0)
    areas = []
    for scene in scenes:
        for cls in (1, 2, 3):
            labels, count = ndimage.label(scene.mask == cls)
            if count:
                sizes = np.bincount(labels.ravel())[1:]
                areas.extend((sizes / size**2).tolist())
    areas_arr = np.asarray(areas)
    assert (areas_arr < 0.005).sum() >= 10
    assert (areas_arr > 0.25).sum() >= 5
    spec_areas = np.asarray([a.rel_area for s in scenes for a in s.spec.aircraft])
    assert (spec_areas < 0.005).any() and (spec_areas > 0.25).any()


def test_cloud_occludes_mask() -> None:
    rng = np.random.default_rng(0)
    specs = [syn.sample_spec(rng, kind="eval", force="cloud") for _ in range(40)]
    hidden = 0
    for spec in specs:
        clear = syn.SceneSpec(
            background=spec.background,
            lighting=spec.lighting,
            glare=spec.glare,
            haze=spec.haze,
            cloud=False,
            aircraft=spec.aircraft,
            seed=spec.seed,
        )
        _, cloudy_mask = syn.render_scene(spec, size=64)
        _, clear_mask = syn.render_scene(clear, size=64)
        # Clouds only ever remove aircraft pixels.
        assert not ((cloudy_mask > 0) & (clear_mask == 0)).any()
        hidden += int((cloudy_mask < clear_mask).any())
    assert hidden >= 10


def test_force_and_hour() -> None:
    rng = np.random.default_rng(0)
    for tag in syn.CONDITION_TAGS:
        for kind in syn.KINDS:
            spec = syn.sample_spec(rng, kind=kind, hour=12, force=tag)
            assert tag in spec.tags()
    for _ in range(200):
        spec = syn.sample_spec(rng, kind="stream", hour=12)
        assert spec.lighting not in ("night", "dusk")


def test_image_brightness_by_lighting() -> None:
    rng = np.random.default_rng(5)
    means = {}
    for lighting in ("day", "night"):
        values = []
        for _ in range(10):
            spec = syn.sample_spec(rng, kind="eval", force=lighting)
            if spec.glare or spec.haze:
                continue
            image, _ = syn.render_scene(spec, size=48)
            values.append(image.mean())
        means[lighting] = float(np.mean(values))
    assert means["night"] < 0.4 * means["day"]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"kind": "bogus", "n": 1}, "kind"),
        ({"kind": "stream", "n": -1}, "n"),
        ({"kind": "stream", "n": 1, "size": 16}, "size"),
        ({"kind": "stream", "n": 1, "days": 0}, "days"),
        ({"kind": "stream", "n": 1, "rare_rate": 0.5}, "rare_rate"),
        ({"kind": "stream", "n": 1, "rare_rate": -0.01}, "rare_rate"),
    ],
)
def test_generate_scenes_bad_args(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        syn.generate_scenes(**kwargs)


def test_kind_error_lists_valid_kinds() -> None:
    with pytest.raises(ValueError, match="collected.*stream.*eval"):
        syn.generate_scenes("train", 1)


def test_sample_spec_bad_args() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="kind"):
        syn.sample_spec(rng, kind="bogus")
    with pytest.raises(ValueError, match="force"):
        syn.sample_spec(rng, kind="eval", force="fog")
    with pytest.raises(ValueError, match="hour"):
        syn.sample_spec(rng, kind="stream", hour=24)


def test_render_scene_bad_size() -> None:
    spec = syn.sample_spec(np.random.default_rng(0), kind="collected")
    with pytest.raises(ValueError, match="size"):
        syn.render_scene(spec, size=8)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="lighting"):
        syn.SceneSpec("sky", "noon", False, False, False, (), 0)
    with pytest.raises(ValueError, match="background"):
        syn.SceneSpec("sea", "day", False, False, False, (), 0)
    with pytest.raises(ValueError, match="cls"):
        syn.AircraftSpec(cls=4, rel_area=0.1, rotation_deg=0.0, cx=0.5, cy=0.5)
    with pytest.raises(ValueError, match="cx"):
        syn.AircraftSpec(cls=1, rel_area=0.1, rotation_deg=0.0, cx=1.5, cy=0.5)


def test_silhouette_look_flattens_aircraft_under_rare_conditions_only() -> None:
    airliner = (
        syn.AircraftSpec(cls=2, rel_area=0.2, rotation_deg=30.0, cx=0.5, cy=0.5),
    )

    def render(lighting: str, look: str) -> tuple[np.ndarray, np.ndarray]:
        spec = syn.SceneSpec(
            background="sky",
            lighting=lighting,
            glare=False,
            haze=False,
            cloud=False,
            aircraft=airliner,
            seed=3,
        )
        return syn.render_scene(spec, size=48, rare_look=look)

    # A common condition looks the same either way.
    day, day_mask = render("day", "colour")
    same, same_mask = render("day", "silhouette")
    assert np.array_equal(day, same) and np.array_equal(day_mask, same_mask)
    # Dusk (rare): the same mask, a dark flat aircraft instead of a white one,
    # and nothing else in the image changes (up to the 3x3 optics blur).
    colour, mask = render("dusk", "colour")
    flat, flat_mask = render("dusk", "silhouette")
    assert np.array_equal(mask, flat_mask)
    plane = mask > 0
    assert colour[plane].mean() > 90 and flat[plane].mean() < 35
    near = ndimage.binary_dilation(plane, structure=np.ones((3, 3), bool))
    assert (colour != flat).any(-1)[~near].sum() == 0


def test_rare_look_changes_only_rare_scenes_and_keeps_masks() -> None:
    colour = syn.generate_scenes("eval", 40, size=32)
    flat = syn.generate_scenes("eval", 40, size=32, rare_look="silhouette")
    rare = set(syn.RARE_CONDITIONS)
    changed = [
        not np.array_equal(a.image, b.image) for a, b in zip(colour, flat, strict=True)
    ]
    assert all(
        np.array_equal(a.mask, b.mask) for a, b in zip(colour, flat, strict=True)
    )
    assert [a.spec for a in colour] == [b.spec for b in flat]
    # Only scenes with a rare condition (and a visible aircraft) change.
    assert not any(
        c for c, s in zip(changed, colour, strict=True) if not rare & set(s.tags)
    )
    assert sum(changed) >= 20


def test_rare_look_must_be_known() -> None:
    with pytest.raises(ValueError, match=r"rare_look.*colour.*silhouette.*'outline'"):
        syn.generate_scenes("eval", 1, rare_look="outline")
    spec = syn.generate_scenes("eval", 1, size=32)[0].spec
    with pytest.raises(ValueError, match="rare_look"):
        syn.render_scene(spec, size=32, rare_look="")
