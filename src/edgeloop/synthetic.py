"""Procedural, deterministic aerial scenes of aircraft for segmentation.

This is the project's built-in default dataset. Every scene is described by a
small, hashable :class:`SceneSpec`; :func:`render_scene` turns a spec into an
RGB image and a per-pixel class mask, and :func:`generate_scenes` produces the
three standard sets:

* ``collected``: the seed labeled data, almost exclusively easy conditions.
* ``stream``: an unlabeled, timestamped production stream whose traffic and
  conditions follow the time of day, so rare conditions show up at a few
  percent each.
* ``eval``: a fixed labeled evaluation set that covers every condition tag.

With ``rare_look="silhouette"`` the aircraft of scenes with a rare condition
are flat dark outlines (see :data:`RARE_LOOKS`); the default leaves them in
colour. Mask values are the indices of :data:`CLASS_NAMES`. Rendering uses only
vectorised numpy plus PIL polygon filling; per-size textures are generated
lazily and cached so that a 128 px scene costs about a millisecond.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image, ImageDraw
from scipy.spatial import cKDTree

__all__ = [
    "BACKGROUNDS",
    "CLASS_NAMES",
    "CONDITION_TAGS",
    "EFFECTS",
    "KINDS",
    "LIGHTINGS",
    "RARE_CONDITIONS",
    "RARE_LOOKS",
    "STREAM_RARE_RATE",
    "AircraftSpec",
    "Scene",
    "SceneSpec",
    "generate_scenes",
    "render_scene",
    "sample_spec",
]

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "fighter_jet",
    "airliner",
    "light_aircraft",
)
LIGHTINGS: tuple[str, ...] = ("day", "overcast", "dusk", "night")
BACKGROUNDS: tuple[str, ...] = ("sky", "ground")
EFFECTS: tuple[str, ...] = ("glare", "haze", "cloud")
CONDITION_TAGS: tuple[str, ...] = LIGHTINGS + BACKGROUNDS + EFFECTS
RARE_CONDITIONS: tuple[str, ...] = ("dusk", "night", "glare", "haze", "cloud")
# How aircraft look in a scene with a rare condition. "colour": like in any
# other scene (the condition changes only the light, which a model largely
# learns from common scenes). "silhouette": the camera sees outlines, not
# liveries (backlit by a low sun or glare, at night, in haze or cloud): every
# part of an aircraft takes one flat dark tone, so its class shows only in its
# shape and a model must see such scenes to learn them.
RARE_LOOKS: tuple[str, ...] = ("colour", "silhouette")
KINDS: tuple[str, ...] = ("collected", "stream", "eval")

_MIN_SIZE = 32
# Integer types accepted for counts and sizes (numpy ints come from arrays).
_INTEGERS = (int, np.integer)
_DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)

# Relative aircraft area is log-uniform over this range so that tiny (<0.5 %),
# medium and large (>25 % of the image) aircraft all occur.
_MIN_REL_AREA = 0.0015
_MAX_REL_AREA = 0.5
# Extra aircraft in a scene stay smaller so one big plane is not hidden by
# another big plane most of the time.
_MAX_EXTRA_REL_AREA = 0.12

# Hour-of-day traffic profile of the stream: quiet at night, flat by day.
_HOUR_WEIGHTS: tuple[float, ...] = (
    0.3, 0.3, 0.3, 0.3, 0.3, 0.4,  # 00-05
    0.6, 0.8, 1.0, 1.0, 1.0, 1.0,  # 06-11
    1.0, 1.0, 1.0, 1.0, 1.0, 0.9,  # 12-17
    0.8, 0.6, 0.5, 0.4, 0.35, 0.3,  # 18-23
)  # fmt: skip
_NIGHT_HOURS = frozenset({21, 22, 23, 0, 1, 2, 3, 4, 5})
_DUSK_HOURS = frozenset({5, 6, 7, 17, 18, 19, 20})
_GLARE_HOURS = frozenset({10, 11, 12, 13, 14})
# Each rare condition should make up roughly this share of the stream; the
# per-hour probabilities are derived from it and the traffic profile.
STREAM_RARE_RATE = 0.06


# --------------------------------------------------------------------------
# Specs and scenes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AircraftSpec:
    """One aircraft in a scene.

    Attributes:
        cls: Class index into :data:`CLASS_NAMES` (1, 2 or 3).
        rel_area: Nominal silhouette area as a fraction of the image area
            (before clipping at the border or occlusion).
        rotation_deg: Heading in degrees, any value in [0, 360).
        cx: Horizontal centre as a fraction of the image width, in [0, 1].
        cy: Vertical centre as a fraction of the image height, in [0, 1].
    """

    cls: int
    rel_area: float
    rotation_deg: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        """Validates the fields.

        Raises:
            ValueError: If a field is out of range.
        """
        if self.cls not in (1, 2, 3):
            raise ValueError(f"cls must be 1, 2 or 3, got {self.cls!r}")
        if not 0.0 < self.rel_area <= 1.0:
            raise ValueError(f"rel_area must be in (0, 1], got {self.rel_area!r}")
        for name in ("cx", "cy"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class SceneSpec:
    """Everything that determines a rendered scene.

    Attributes:
        background: One of :data:`BACKGROUNDS`.
        lighting: One of :data:`LIGHTINGS`.
        glare: Whether a sun glare washes out part of the image.
        haze: Whether the image is blended toward a haze colour.
        cloud: Whether cloud blobs are drawn over the aircraft (occluding the
            mask where they are dense).
        aircraft: The aircraft, in drawing order (later ones win).
        seed: Seed of the renderer's random generator (textures, colours).
    """

    background: str
    lighting: str
    glare: bool
    haze: bool
    cloud: bool
    aircraft: tuple[AircraftSpec, ...]
    seed: int

    def __post_init__(self) -> None:
        """Validates the fields.

        Raises:
            ValueError: If the background or lighting is unknown.
        """
        if self.background not in BACKGROUNDS:
            raise ValueError(
                f"background must be one of {BACKGROUNDS}, got {self.background!r}"
            )
        if self.lighting not in LIGHTINGS:
            raise ValueError(
                f"lighting must be one of {LIGHTINGS}, got {self.lighting!r}"
            )

    def tags(self) -> tuple[str, ...]:
        """Returns the sorted condition tags of this scene.

        Returns:
            The lighting, the background and each effect present, sorted,
            e.g. ``("day", "glare", "sky")``.
        """
        present = [self.lighting, self.background]
        present += [
            name
            for name, on in zip(
                EFFECTS, (self.glare, self.haze, self.cloud), strict=True
            )
            if on
        ]
        return tuple(sorted(present))


# eq=False: dataclass equality would compare numpy arrays element-wise and
# raise; scenes are compared through their arrays explicitly where needed.
@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene.

    Attributes:
        name: Stable name such as ``"stream_00042"``.
        image: RGB image, uint8, shape (H, W, 3).
        mask: Class mask, uint8, shape (H, W), values in {0, 1, 2, 3}.
        spec: The spec the scene was rendered from.
        captured_at: Capture time for stream scenes, otherwise None.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    spec: SceneSpec
    captured_at: datetime | None

    @property
    def tags(self) -> tuple[str, ...]:
        """The sorted condition tags of the scene's spec."""
        return self.spec.tags()


# --------------------------------------------------------------------------
# Aircraft silhouettes (unit frame: nose toward +x, span along y)
# --------------------------------------------------------------------------

# Part indices used when rasterising; each gets its own colour.
_BODY, _ACCENT, _DARK, _WING = 1, 2, 3, 4


def _mirror(points: list[tuple[float, float]]) -> np.ndarray:
    """Closes a half outline (from nose to tail, +y side) symmetrically."""
    half = np.asarray(points, dtype=np.float64)
    other = half[::-1].copy()
    other[:, 1] *= -1.0
    return np.concatenate([half, other])


def _quad(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """An axis-aligned rectangle."""
    return np.asarray([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 12) -> np.ndarray:
    """A polygonal ellipse."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _flip_y(poly: np.ndarray) -> np.ndarray:
    """Mirrors a polygon across the fuselage axis."""
    out = poly.copy()
    out[:, 1] *= -1.0
    return out


@functools.cache
def _shapes() -> dict[int, tuple[tuple[int, np.ndarray], ...]]:
    """Unit-frame silhouettes per class as (part, polygon) in drawing order."""
    fighter_body = _mirror(
        [
            (0.50, 0.0), (0.36, 0.035), (0.15, 0.06), (0.02, 0.09),
            (-0.26, 0.40), (-0.34, 0.40), (-0.31, 0.09), (-0.37, 0.09),
            (-0.46, 0.19), (-0.51, 0.19), (-0.47, 0.055), (-0.50, 0.04),
        ]
    )  # fmt: skip
    fighter = (
        (_BODY, fighter_body),
        (_DARK, _ellipse(0.27, 0.0, 0.09, 0.028)),
        (_ACCENT, _quad(-0.50, -0.44, -0.04, 0.04)),
    )

    airliner_fuselage = _mirror(
        [
            (0.50, 0.0), (0.485, 0.025), (0.45, 0.042), (0.40, 0.048),
            (-0.30, 0.048), (-0.45, 0.030), (-0.52, 0.010),
        ]
    )  # fmt: skip
    wing = np.asarray([(0.10, 0.04), (-0.19, 0.50), (-0.27, 0.50), (-0.12, 0.04)])
    htail = np.asarray([(-0.34, 0.02), (-0.45, 0.19), (-0.50, 0.19), (-0.46, 0.02)])
    engine = _quad(-0.03, 0.09, 0.155, 0.21)
    airliner = (
        (_WING, wing),
        (_WING, _flip_y(wing)),
        (_DARK, engine),
        (_DARK, _flip_y(engine)),
        (_BODY, airliner_fuselage),
        (_ACCENT, htail),
        (_ACCENT, _flip_y(htail)),
        (_ACCENT, _quad(-0.52, -0.30, -0.014, 0.014)),
    )

    light_fuselage = _mirror(
        [(0.44, 0.0), (0.43, 0.05), (0.30, 0.07), (0.05, 0.07), (-0.50, 0.022)]
    )
    light = (
        (_BODY, light_fuselage),
        (_ACCENT, _quad(-0.50, -0.38, -0.19, 0.19)),
        (_WING, _quad(0.02, 0.20, -0.64, 0.64)),
        (_ACCENT, _quad(0.02, 0.20, -0.64, -0.56)),
        (_ACCENT, _quad(0.02, 0.20, 0.56, 0.64)),
    )
    return {1: fighter, 2: airliner, 3: light}


# The optional propeller disc of light aircraft, seen edge-on from above.
_PROPELLER = _quad(0.45, 0.48, -0.16, 0.16)
# Navigation-light positions (left tip, right tip, tail) per class.
_NAV_LIGHTS: dict[int, np.ndarray] = {
    1: np.asarray([(-0.30, 0.40), (-0.30, -0.40), (-0.50, 0.0)]),
    2: np.asarray([(-0.23, 0.50), (-0.23, -0.50), (-0.52, 0.0)]),
    3: np.asarray([(0.11, 0.64), (0.11, -0.64), (-0.50, 0.0)]),
}


@functools.cache
def _unit_stats() -> dict[int, tuple[float, float]]:
    """Silhouette area (unit²) and bounding radius (unit) per class.

    The area is measured by rasterising at a fine resolution because the parts
    overlap, so summing polygon areas would overestimate it.
    """
    res = 512
    stats = {}
    for cls, parts in _shapes().items():
        canvas = Image.new("L", (res, res), 0)
        draw = ImageDraw.Draw(canvas)
        for _, poly in parts:
            pts = (poly * (res / 1.5) + res / 2).ravel().tolist()
            draw.polygon(pts, fill=1)
        area = float(np.count_nonzero(np.asarray(canvas))) / (res / 1.5) ** 2
        radius = max(float(np.hypot(p[:, 0], p[:, 1]).max()) for _, p in parts)
        stats[cls] = (area, radius)
    return stats


# --------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------

_TAIL_COLOURS = np.asarray(
    [
        (0.80, 0.10, 0.12), (0.10, 0.20, 0.55), (0.15, 0.50, 0.85),
        (0.10, 0.55, 0.30), (0.95, 0.55, 0.10), (0.45, 0.15, 0.55),
        (0.90, 0.80, 0.15),
    ],
    dtype=np.float32,
)  # fmt: skip
_BRIGHT_COLOURS = np.asarray(
    [
        (0.90, 0.15, 0.12), (0.98, 0.80, 0.10), (0.98, 0.50, 0.08),
        (0.15, 0.35, 0.90), (0.20, 0.70, 0.30), (0.95, 0.95, 0.92),
        (0.85, 0.20, 0.60), (0.10, 0.75, 0.80),
    ],
    dtype=np.float32,
)  # fmt: skip
_FIELD_COLOURS = np.asarray(
    [
        (0.30, 0.45, 0.18), (0.40, 0.55, 0.22), (0.22, 0.36, 0.14),
        (0.52, 0.45, 0.28), (0.45, 0.36, 0.22), (0.62, 0.58, 0.34),
        (0.35, 0.42, 0.25), (0.56, 0.50, 0.40),
    ],
    dtype=np.float32,
)  # fmt: skip


def _part_colours(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Colour lookup table (5, 3) indexed by part for one aircraft."""
    lut = np.zeros((5, 3), dtype=np.float32)
    jitter = rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    if cls == 1:
        # Fighters: low-visibility greys with a slight blue or green cast.
        grey = rng.uniform(0.38, 0.62)
        cast = np.asarray(
            [-0.02, 0.0, 0.04] if rng.random() < 0.7 else [-0.03, 0.02, -0.04]
        )
        body = grey + cast + jitter * 0.5
        lut[_BODY] = body
        lut[_ACCENT] = body * 0.7
        lut[_WING] = body
        lut[_DARK] = (0.12, 0.13, 0.17) if rng.random() < 0.7 else (0.45, 0.38, 0.15)
    elif cls == 2:
        # Airliners: white or light-grey livery, coloured tail, grey engines.
        white = rng.uniform(0.82, 0.97)
        lut[_BODY] = white + jitter * 0.4
        lut[_WING] = white * rng.uniform(0.82, 0.92) + jitter * 0.4
        lut[_ACCENT] = _TAIL_COLOURS[rng.integers(len(_TAIL_COLOURS))] + jitter
        lut[_DARK] = rng.uniform(0.45, 0.62) + jitter * 0.3
    else:
        # Light aircraft: varied bright colours, often white wings.
        body = _BRIGHT_COLOURS[rng.integers(len(_BRIGHT_COLOURS))] + jitter
        lut[_BODY] = body
        lut[_ACCENT] = _BRIGHT_COLOURS[rng.integers(len(_BRIGHT_COLOURS))] + jitter
        lut[_WING] = (0.93, 0.93, 0.90) if rng.random() < 0.5 else body
        lut[_DARK] = (0.10, 0.10, 0.10)
    return np.clip(lut, 0.0, 1.0)


# --------------------------------------------------------------------------
# Per-size caches (coordinate grids and texture banks)
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1] as float32 (gx, gy), shape (S, S)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    gy, gx = np.meshgrid(axis, axis, indexing="ij")
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def _bank_geometry(size: int) -> tuple[int, int]:
    """Bank side length and number of textures for an output size."""
    side = size + size // 2
    # Fewer textures for big sizes keeps the cache at a few tens of MB.
    count = 12 if size <= 256 else 6
    return side, count


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """Smooth fractal noise textures in [0, 1], float32 (K, B, B), B > size.

    Scenes take random crops and flips of these, which is far cheaper than
    synthesising fresh noise per scene. A fixed seed keeps it deterministic.
    """
    side, count = _bank_geometry(size)
    rng = np.random.default_rng(0x5EED)
    bank = np.empty((count, side, side), dtype=np.float32)
    for k in range(count):
        acc = np.zeros((side, side), dtype=np.float32)
        amplitude = 1.0
        for cells in (3, 6, 12, 24, 48):
            coarse = rng.random((cells, cells), dtype=np.float32)
            img = Image.fromarray(coarse, mode="F").resize(
                (side, side), Image.Resampling.BICUBIC
            )
            acc += amplitude * np.asarray(img, dtype=np.float32)
            amplitude *= 0.55
        acc -= acc.min()
        acc /= max(float(acc.max()), 1e-6)
        bank[k] = acc
    bank.setflags(write=False)
    return bank


@functools.lru_cache(maxsize=4)
def _field_bank(size: int) -> np.ndarray:
    """Voronoi field label maps, uint8 (K, B, B), labels < 8.

    Irregular Voronoi cells look like agricultural field plots from above.
    """
    side, count = _bank_geometry(size)
    rng = np.random.default_rng(0xF1E1D)
    yy, xx = np.mgrid[0:side, 0:side]
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float32)
    bank = np.empty((count, side, side), dtype=np.uint8)
    for k in range(count):
        n_cells = int(rng.integers(8, 20))
        seeds = rng.random((n_cells, 2)) * side
        _, nearest = cKDTree(seeds).query(pts)
        labels = rng.integers(0, len(_FIELD_COLOURS), n_cells).astype(np.uint8)
        bank[k] = labels[nearest].reshape(side, side)
    bank.setflags(write=False)
    return bank


@functools.lru_cache(maxsize=4)
def _white_noise_bank(size: int) -> np.ndarray:
    """Standard-normal pixel noise, float32 (K, B, B, 3), for sensor noise."""
    side, count = _bank_geometry(size)
    rng = np.random.default_rng(0x0DDBA11)
    bank = rng.standard_normal((max(count // 3, 1), side, side, 3), np.float32)
    bank.setflags(write=False)
    return bank


def _crop(bank: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of one bank texture with random flips (a view)."""
    k = int(rng.integers(bank.shape[0]))
    span = bank.shape[1] - size + 1
    oy, ox = (int(v) for v in rng.integers(0, span, 2))
    view = bank[k, oy : oy + size, ox : ox + size]
    flips = int(rng.integers(4))
    if flips & 1:
        view = view[::-1]
    if flips & 2:
        view = view[:, ::-1]
    return view


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _sky(size: int, rng: np.random.Generator) -> np.ndarray:
    """Vertical blue-to-light gradient with soft noise clouds."""
    _, gy = _grid(size)
    top = np.asarray([0.20, 0.40, 0.78], np.float32) + rng.uniform(-0.06, 0.06, 3)
    bottom = np.asarray([0.70, 0.82, 0.95], np.float32) + rng.uniform(-0.05, 0.04, 3)
    # The gradient only varies by row: compute one column, then broadcast.
    t = gy[:, :1, None] ** np.float32(rng.uniform(0.7, 1.4))
    column = top.astype(np.float32) + (bottom - top).astype(np.float32) * t
    img = np.repeat(column, size, axis=1)
    cover = rng.uniform(0.0, 0.7)
    if cover > 0.1:
        noise = _crop(_noise_bank(size), size, rng)
        alpha = np.clip((noise - (1.0 - cover * 0.6)) * 3.0, 0.0, 0.8)[:, :, None]
        img += (np.float32(0.96) - img) * alpha
    return img


def _ground(size: int, rng: np.random.Generator) -> np.ndarray:
    """Textured fields in greens and browns with a few road-like stripes."""
    labels = _crop(_field_bank(size), size, rng)
    palette = _FIELD_COLOURS + rng.uniform(-0.05, 0.05, _FIELD_COLOURS.shape)
    img = palette.astype(np.float32)[labels]
    noise = _crop(_noise_bank(size), size, rng)
    img *= (0.8 + 0.4 * noise)[:, :, None]
    gx, gy = _grid(size)
    for _ in range(int(rng.integers(0, 3))):
        angle = rng.uniform(0.0, np.pi)
        offset = rng.uniform(0.1, 0.9)
        half_width = rng.uniform(0.006, 0.02)
        dist = np.abs((gx - 0.5) * math.cos(angle) + (gy - 0.5) * math.sin(angle))
        road = np.abs(dist - (offset - 0.5)) < half_width
        img[road] = rng.uniform(0.42, 0.6)
    return img


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shifts a boolean mask with zero fill (no wrap-around like np.roll)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    ys, yd = (
        (slice(0, h - dy), slice(dy, h))
        if dy >= 0
        else (slice(-dy, h), slice(0, h + dy))
    )
    xs, xd = (
        (slice(0, w - dx), slice(dx, w))
        if dx >= 0
        else (slice(-dx, w), slice(0, w + dx))
    )
    out[yd, xd] = mask[ys, xs]
    return out


def _transform(points: np.ndarray, air: AircraftSpec, size: int) -> np.ndarray:
    """Maps unit-frame points to pixel coordinates (x, y)."""
    area, _ = _unit_stats()[air.cls]
    scale = math.sqrt(air.rel_area * size * size / area)
    theta = math.radians(air.rotation_deg)
    c, s = math.cos(theta), math.sin(theta)
    x = points[:, 0] * c - points[:, 1] * s
    y = points[:, 0] * s + points[:, 1] * c
    return np.stack([x * scale + air.cx * size, y * scale + air.cy * size], axis=1)


def _draw_aircraft(
    img: np.ndarray,
    mask: np.ndarray,
    air: AircraftSpec,
    rng: np.random.Generator,
    *,
    shadow: tuple[float, float] | None,
    tone: float | None = None,
) -> None:
    """Rasterises one aircraft into the image and mask in place.

    With a ``tone``, every part takes that flat grey (a silhouette); the
    colours are still drawn from ``rng``, so the scene's later draws (and
    with them the rest of the image) stay the same.
    """
    size = mask.shape[0]
    parts = list(_shapes()[air.cls])
    if air.cls == 3 and rng.random() < 0.6:
        parts.append((_DARK, _PROPELLER))
    colour_lut = _part_colours(air.cls, rng)
    if tone is not None:
        colour_lut[:] = np.float32(tone)
    light = rng.uniform(0.0, 2.0 * np.pi)
    texture_full = _crop(_noise_bank(size), size, rng)
    # Transform every part at once, then work only inside the bounding box
    # (plus the shadow offset): tiny aircraft then cost almost nothing.
    pts = _transform(np.concatenate([poly for _, poly in parts]), air, size)
    reach = math.sqrt(air.rel_area) * size * 0.15
    dy, dx = (
        (0, 0)
        if shadow is None
        else (
            int(shadow[0] * reach),
            int(shadow[1] * reach),
        )
    )
    x0 = max(int(math.floor(pts[:, 0].min())) - 1 - max(0, -dx), 0)
    y0 = max(int(math.floor(pts[:, 1].min())) - 1 - max(0, -dy), 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + 2 + max(0, dx), size)
    y1 = min(int(math.ceil(pts[:, 1].max())) + 2 + max(0, dy), size)
    if x1 <= x0 or y1 <= y0:
        return
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(canvas)
    local = pts - np.asarray([x0, y0], dtype=np.float64)
    first = 0
    for part, poly in parts:
        draw.polygon(local[first : first + len(poly)].ravel().tolist(), fill=part)
        first += len(poly)
    part_map = np.asarray(canvas)
    sel = part_map > 0
    if not sel.any():
        return
    window = img[y0:y1, x0:x1]
    if shadow is not None:
        # Parked aircraft cast an offset shadow on the ground.
        dark = _shift(sel, dy, dx) & ~sel
        window[dark] *= np.float32(0.55)
    gx, gy = _grid(size)
    gx, gy = gx[y0:y1, x0:x1][sel], gy[y0:y1, x0:x1][sel]
    # Directional shading plus a faint texture keeps surfaces from being flat.
    extent = max(math.sqrt(air.rel_area), 0.02)
    ramp = (gx - air.cx) * math.cos(light) + (gy - air.cy) * math.sin(light)
    shade = 1.0 + 0.18 * np.clip(ramp / extent, -1.5, 1.5)
    shade *= 0.92 + 0.16 * texture_full[y0:y1, x0:x1][sel]
    window[sel] = colour_lut[part_map[sel]] * shade[:, None]
    mask[y0:y1, x0:x1][sel] = air.cls


def _nav_lights(img: np.ndarray, air: AircraftSpec) -> None:
    """Red, green and white navigation lights, visible at night."""
    size = img.shape[0]
    pts = np.rint(_transform(_NAV_LIGHTS[air.cls], air, size) - 0.5).astype(int)
    colours = ((1.0, 0.15, 0.1), (0.1, 1.0, 0.3), (1.0, 1.0, 1.0))
    for (x, y), colour in zip(pts, colours, strict=True):
        if 0 <= x < size and 0 <= y < size:
            img[y, x] = colour


def _cloud_alpha(spec: SceneSpec, size: int, rng: np.random.Generator) -> np.ndarray:
    """Opacity of cloud blobs, float32 (S, S) in [0, 1]."""
    gx, gy = _grid(size)
    blobs = np.zeros((size, size), dtype=np.float32)
    n_blobs = int(rng.integers(1, 4))
    for i in range(n_blobs):
        # Usually centre one blob on an aircraft so the occlusion case occurs.
        if i == 0 and spec.aircraft and rng.random() < 0.75:
            target = spec.aircraft[int(rng.integers(len(spec.aircraft)))]
            cx = target.cx + rng.normal(0.0, 0.05)
            cy = target.cy + rng.normal(0.0, 0.05)
        else:
            cx, cy = rng.uniform(0.0, 1.0, 2)
        sigma = rng.uniform(0.1, 0.25)
        d2 = (gx - cx) ** 2 + (gy - cy) ** 2
        blobs = np.maximum(blobs, np.exp(d2 * np.float32(-0.5 / sigma**2)))
    noise = _crop(_noise_bank(size), size, rng)
    density = blobs * (0.55 + 0.9 * noise)
    return np.clip((density - 0.35) * 2.2, 0.0, 1.0) * np.float32(rng.uniform(0.9, 1.0))


def _apply_lighting(
    img: np.ndarray, lighting: str, rng: np.random.Generator
) -> np.ndarray:
    """Global colour/contrast transform for the time of day and weather."""
    if lighting == "day":
        return img * np.float32(rng.uniform(0.95, 1.08))
    if lighting == "overcast":
        grey = img.mean(axis=2, keepdims=True)
        img = grey + (img - grey) * np.float32(rng.uniform(0.25, 0.45))
        tint = np.asarray([0.56, 0.58, 0.6], np.float32)
        return tint + (img - tint) * np.float32(rng.uniform(0.5, 0.65))
    if lighting == "dusk":
        gain = np.asarray([1.0, 0.66, 0.45], np.float32) * rng.uniform(0.65, 0.85)
        return img * gain.astype(np.float32) + np.asarray([0.10, 0.04, 0.0], np.float32)
    # Night: very dark, bluish, compressed contrast.
    gain = np.asarray([0.10, 0.12, 0.2], np.float32) * rng.uniform(0.7, 1.3)
    return img * gain.astype(np.float32) + np.asarray([0.01, 0.015, 0.04], np.float32)


def _glare(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Screen-blends a bright radial sun glare and lens streak."""
    size = img.shape[0]
    gx, gy = _grid(size)
    sx, sy = rng.uniform(-0.1, 1.1, 2)
    sigma = rng.uniform(0.2, 0.4)
    d2 = (gx - sx) ** 2 + (gy - sy) ** 2
    glow = np.exp(d2 * np.float32(-0.5 / sigma**2)) * np.float32(rng.uniform(0.75, 1.0))
    angle = rng.uniform(0.0, np.pi)
    across = (gx - sx) * math.sin(angle) - (gy - sy) * math.cos(angle)
    streak = np.exp(across**2 * np.float32(-0.5 / 0.015**2)) * np.float32(0.6)
    strength = np.clip(glow + streak * np.exp(d2 * np.float32(-1.0)), 0.0, 1.0)
    colour = np.asarray([1.0, 0.97, 0.88], np.float32)
    return 1.0 - (1.0 - img) * (1.0 - strength[:, :, None] * colour)


def _blur3(img: np.ndarray, weight: float) -> np.ndarray:
    """Separable 3-tap blur [w, 1 - 2w, w]; border pixels are left as is.

    A weight of 0.08-0.25 is roughly a Gaussian of sigma 0.4-0.7 px, and this
    is several times faster than a general Gaussian filter at these sizes.
    """
    w = np.float32(weight)
    rows = img.astype(np.float32, copy=True)
    rows[1:-1] += w * (img[:-2] + img[2:] - 2.0 * img[1:-1])
    out = rows.copy()
    out[:, 1:-1] += w * (rows[:, :-2] + rows[:, 2:] - 2.0 * rows[:, 1:-1])
    return out


def render_scene(
    spec: SceneSpec, *, size: int = 128, rare_look: str = "colour"
) -> tuple[np.ndarray, np.ndarray]:
    """Renders a scene spec into an image and a class mask.

    Deterministic: the same spec, size and look give identical arrays, because
    all randomness comes from ``spec.seed``.

    Args:
        spec: What to draw.
        size: Side length in pixels of the square output, at least 32.
        rare_look: One of :data:`RARE_LOOKS`: how aircraft look when the
            scene has a rare condition. The mask and everything else in the
            image are the same for both looks.

    Returns:
        ``(image, mask)``: RGB uint8 (size, size, 3) and uint8 (size, size)
        with values in {0, 1, 2, 3}.

    Raises:
        ValueError: If ``size`` is below 32 or ``rare_look`` is unknown.
    """
    _check_size(size)
    _check_rare_look(rare_look)
    size = int(size)
    rng = np.random.default_rng(spec.seed)
    tones: list[float | None] = [None] * len(spec.aircraft)
    if rare_look == "silhouette" and set(spec.tags()) & set(RARE_CONDITIONS):
        # A generator of its own, so the scene's other draws stay the same.
        tone_rng = np.random.default_rng([spec.seed, 1])
        tones = [float(t) for t in tone_rng.uniform(0.04, 0.16, len(spec.aircraft))]
    if spec.background == "sky":
        img = _sky(size, rng)
        shadow = None
    else:
        img = _ground(size, rng)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        shadow = (math.sin(angle), math.cos(angle))
    mask = np.zeros((size, size), dtype=np.uint8)
    for air, tone in zip(spec.aircraft, tones, strict=True):
        _draw_aircraft(img, mask, air, rng, shadow=shadow, tone=tone)

    if spec.cloud:
        # Clouds come before lighting so they are lit like the rest of the scene.
        alpha = _cloud_alpha(spec, size, rng)
        shade = np.float32(rng.uniform(0.8, 0.97))
        img += (shade - img) * alpha[:, :, None]
        mask[alpha > 0.5] = 0
    img = _apply_lighting(img, spec.lighting, rng)
    if spec.lighting == "night":
        for air in spec.aircraft:
            _nav_lights(img, air)
        if spec.background == "ground":
            # Scattered ground lights (roads, buildings).
            n_lights = int(rng.integers(3, 12))
            ys, xs = rng.integers(0, size, (2, n_lights))
            img[ys, xs] = (1.0, 0.85, 0.5)
    if spec.haze:
        _, gy = _grid(size)
        amount = rng.uniform(0.35, 0.6)
        # Haze is a bit thicker toward one edge, like distance haze.
        h = (amount * (0.8 + 0.4 * gy))[:, :, None] if rng.random() < 0.5 else amount
        colour = np.asarray([0.78, 0.8, 0.82], np.float32)
        if spec.lighting == "night":
            colour *= np.float32(0.2)
        img = img + (colour - img) * h
    if spec.glare:
        img = _glare(img, rng)

    # Slight optics blur, then sensor noise (crops of a cached white-noise
    # bank are far cheaper than fresh normal draws).
    img = _blur3(img, float(rng.uniform(0.08, 0.25)))
    noise = _crop(_white_noise_bank(size), size, rng)
    img += noise * np.float32(rng.uniform(0.01, 0.035))
    image = np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return image, mask


# --------------------------------------------------------------------------
# Sampling specs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _ConditionProbs:
    """Per-scene probabilities of each condition."""

    ground: float
    overcast: float  # share of overcast among non-rare lighting
    dusk: float
    night: float
    glare: float
    haze: float
    cloud: float


@functools.cache
def _stream_hour_rates(rate: float) -> tuple[float, float, float]:
    """Per-hour (night, dusk, glare) probabilities inside their windows.

    Derived from the traffic profile so each lands near ``rate`` of the whole
    stream.
    """
    total = sum(_HOUR_WEIGHTS)

    def share(hours: frozenset[int]) -> float:
        return sum(_HOUR_WEIGHTS[h] for h in hours) / total

    night = rate / share(_NIGHT_HOURS)
    # Night is decided first, so at hours in both windows dusk only gets the
    # remaining probability mass; compensate for that.
    dusk_mass = sum(
        _HOUR_WEIGHTS[h] * (1.0 - night if h in _NIGHT_HOURS else 1.0)
        for h in _DUSK_HOURS
    )
    dusk = rate * total / dusk_mass
    glare = rate / share(_GLARE_HOURS)
    return night, dusk, glare


def _probs(
    kind: str, hour: int | None, rare_rate: float = STREAM_RARE_RATE
) -> _ConditionProbs:
    """Condition probabilities for a set, and for the stream an hour."""
    if kind == "collected":
        rare = 0.002
        return _ConditionProbs(0.2, 0.15, rare, rare, rare, rare, rare)
    if kind == "eval":
        return _ConditionProbs(0.5, 0.3, 0.18, 0.18, 0.2, 0.2, 0.2)
    assert hour is not None
    night, dusk, glare = _stream_hour_rates(rare_rate)
    return _ConditionProbs(
        ground=0.3,
        overcast=0.2,
        dusk=dusk if hour in _DUSK_HOURS else 0.0,
        night=night if hour in _NIGHT_HOURS else 0.0,
        glare=glare if hour in _GLARE_HOURS else 0.0,
        haze=rare_rate,
        cloud=rare_rate,
    )


def _sample_aircraft(rng: np.random.Generator) -> tuple[AircraftSpec, ...]:
    """One to three aircraft with log-uniform sizes and any heading."""
    count = int(rng.choice(3, p=(0.5, 0.3, 0.2))) + 1
    stats = _unit_stats()
    out = []
    for i in range(count):
        cls = int(rng.integers(1, 4))
        hi = _MAX_REL_AREA if i == 0 else _MAX_EXTRA_REL_AREA
        rel_area = float(np.exp(rng.uniform(math.log(_MIN_REL_AREA), math.log(hi))))
        area, radius = stats[cls]
        reach = math.sqrt(rel_area / area) * radius
        # Keep most of the aircraft in frame; big ones end up near the centre
        # and may be clipped a little.
        margin = min(0.5, 0.02 + 0.75 * reach)
        cx, cy = (float(v) for v in rng.uniform(margin, 1.0 - margin, 2))
        out.append(
            AircraftSpec(
                cls=cls,
                rel_area=rel_area,
                rotation_deg=float(rng.uniform(0.0, 360.0)),
                cx=cx,
                cy=cy,
            )
        )
    return tuple(out)


def _sample_hour(rng: np.random.Generator) -> int:
    """An hour of day drawn from the stream's traffic profile."""
    weights = np.asarray(_HOUR_WEIGHTS)
    return int(rng.choice(24, p=weights / weights.sum()))


def sample_spec(
    rng: np.random.Generator,
    *,
    kind: str,
    hour: int | None = None,
    force: str | None = None,
    rare_rate: float = STREAM_RARE_RATE,
) -> SceneSpec:
    """Samples a scene spec with the condition statistics of a set.

    Args:
        rng: Source of randomness.
        kind: ``"collected"``, ``"stream"`` or ``"eval"``.
        hour: Hour of day (0-23) the scene is captured at; only the stream
            uses it. If None for the stream, one is drawn from the traffic
            profile.
        force: A condition tag from :data:`CONDITION_TAGS` that must be
            present. It overrides the set's statistics (and the stream's hour
            rules); forcing ``"night"`` removes glare and forcing ``"glare"``
            replaces night lighting by day.
        rare_rate: The stream's share of each rare condition (see
            :func:`generate_scenes`).

    Returns:
        The sampled spec.

    Raises:
        ValueError: If ``kind``, ``hour`` or ``force`` is invalid.
    """
    _check_kind(kind)
    if hour is not None and not (isinstance(hour, _INTEGERS) and 0 <= hour <= 23):
        raise ValueError(f"hour must be an int in 0..23, got {hour!r}")
    if force is not None and force not in CONDITION_TAGS:
        raise ValueError(f"force must be one of {CONDITION_TAGS}, got {force!r}")
    if kind == "stream" and hour is None:
        hour = _sample_hour(rng)
    _check_rare_rate(rare_rate)
    p = _probs(kind, hour, rare_rate)
    u = rng.random(6)
    background = "ground" if u[0] < p.ground else "sky"
    if u[1] < p.night:
        lighting = "night"
    elif u[1] < p.night + p.dusk:
        lighting = "dusk"
    else:
        lighting = "overcast" if u[2] < p.overcast else "day"
    # A sun glare in a night sky makes no sense.
    glare = bool(u[3] < p.glare) and lighting != "night"
    haze = bool(u[4] < p.haze)
    cloud = bool(u[5] < p.cloud)
    if force in LIGHTINGS:
        lighting = force
        glare = glare and force != "night"
    elif force in BACKGROUNDS:
        background = force
    elif force == "glare":
        glare = True
        lighting = "day" if lighting == "night" else lighting
    elif force == "haze":
        haze = True
    elif force == "cloud":
        cloud = True
    return SceneSpec(
        background=background,
        lighting=lighting,
        glare=glare,
        haze=haze,
        cloud=cloud,
        aircraft=_sample_aircraft(rng),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


# --------------------------------------------------------------------------
# Sets
# --------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _check_rare_rate(rate: float) -> None:
    # Up to 0.1 keeps every per-hour probability derived from it below 1.
    if not isinstance(rate, (float, *_INTEGERS)) or not 0.0 <= rate <= 0.1:
        raise ValueError(f"rare_rate must be a number in [0, 0.1], got {rate!r}")


def _check_rare_look(look: str) -> None:
    if look not in RARE_LOOKS:
        raise ValueError(f"rare_look must be one of {RARE_LOOKS}, got {look!r}")


def _check_size(size: int) -> None:
    if not isinstance(size, _INTEGERS) or size < _MIN_SIZE:
        raise ValueError(f"size must be an int >= {_MIN_SIZE}, got {size!r}")


def _stream_times(
    rng: np.random.Generator, n: int, start: datetime, days: int
) -> list[datetime]:
    """Sorted capture times following the hour-of-day traffic profile."""
    slots = days * 24
    slot_hours = [(start + timedelta(hours=k)).hour for k in range(slots)]
    weights = np.asarray([_HOUR_WEIGHTS[h] for h in slot_hours])
    chosen = rng.choice(slots, size=n, p=weights / weights.sum())
    seconds = chosen * 3600.0 + rng.uniform(0.0, 3600.0, n)
    seconds.sort()
    return [start + timedelta(seconds=float(s)) for s in seconds]


def generate_scenes(
    kind: str,
    n: int,
    *,
    size: int = 128,
    seed: int = 0,
    start: datetime | None = None,
    days: int = 3,
    rare_rate: float = STREAM_RARE_RATE,
    rare_look: str = "colour",
) -> list[Scene]:
    """Generates one of the standard sets.

    Each kind draws from its own random stream derived from ``seed``, so the
    sets are independent and each is deterministic in (kind, n, size, seed)
    (plus ``start`` and ``days`` for the stream).

    Args:
        kind: ``"collected"`` (seed labeled data, easy conditions),
            ``"stream"`` (timestamped production traffic) or ``"eval"``
            (labeled set covering every condition tag).
        n: Number of scenes, at least 0.
        size: Side length in pixels, at least 32.
        seed: Base seed.
        start: Start of the stream's time window; defaults to
            2026-01-05 00:00 UTC. Only used by the stream.
        days: Length of the stream's time window in days, at least 1.
        rare_rate: The stream's share of each rare condition (dusk, night,
            glare, haze, cloud), in [0, 0.1]; ``STREAM_RARE_RATE`` by default.
            Only used by the stream (the eval set keeps 18-20% of each).
        rare_look: How aircraft look in scenes with a rare condition, one of
            :data:`RARE_LOOKS` (see :func:`render_scene`); every set.

    Returns:
        Scenes named ``f"{kind}_{i:05d}"``; the stream is sorted by time.

    Raises:
        ValueError: If an argument is invalid; the message names it.
    """
    _check_kind(kind)
    if not isinstance(n, _INTEGERS) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    _check_size(size)
    if not isinstance(days, _INTEGERS) or days < 1:
        raise ValueError(f"days must be an int >= 1, got {days!r}")
    _check_rare_rate(rare_rate)
    _check_rare_look(rare_look)
    n, size = int(n), int(size)
    start = _DEFAULT_START if start is None else start
    rng = np.random.default_rng(np.random.SeedSequence([seed, KINDS.index(kind)]))

    times: list[datetime | None] = [None] * n
    forces: list[str | None] = [None] * n
    if kind == "stream":
        times = list(_stream_times(rng, n, start, days))
    elif kind == "eval":
        # Force each tag in turn first, then sample naturally: with n >= 300
        # every tag is forced 30 times; smaller sets get an even spread.
        n_forced = min(n, 30 * len(CONDITION_TAGS))
        for i in range(n_forced):
            forces[i] = CONDITION_TAGS[i % len(CONDITION_TAGS)]

    scenes = []
    for i in range(n):
        when = times[i]
        spec = sample_spec(
            rng,
            kind=kind,
            hour=None if when is None else when.hour,
            force=forces[i],
            rare_rate=rare_rate,
        )
        image, mask = render_scene(spec, size=size, rare_look=rare_look)
        scenes.append(
            Scene(
                name=f"{kind}_{i:05d}",
                image=image,
                mask=mask,
                spec=spec,
                captured_at=when,
            )
        )
    return scenes
