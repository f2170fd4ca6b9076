"""In-memory segmentation set with joint image/mask augmentation, and its loader.

Images and masks travel together through every transform: masks resize with
nearest neighbour and pad with 255 (the ignore index). Augmentation runs in torch
on one sample at a time and its randomness is a function of (seed, epoch, index)
only, so a sample looks the same whatever the sampler order or worker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from edgeloop.checks import check_int
from edgeloop.models import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """How strongly to augment; every transform derives from one `strength`.

    With strength ``s`` in [0, 1] (0 = no augmentation):

    - horizontal flip with p = 0.5 when ``s > 0``;
    - random scale in ``[1 - 0.5 s, 1 + 0.5 s]``, then a random crop or pad back to
      the input size (image padded with the normalisation-neutral value, i.e. 0
      after normalisation; mask padded with 255);
    - colour jitter: brightness, contrast and saturation factors each in
      ``[1 - 0.4 s, 1 + 0.4 s]``, applied in that order.

    Apart from that, `weather` is the probability that an image also gets one
    of three photometric weather effects, drawn uniformly (`apply_weather`):
    fog, low light with a colour cast, or a sun glare. They stand for the
    deployment conditions that the first labelled data rarely holds (as
    albumentations' RandomFog, RandomBrightnessContrast/RGBShift and
    RandomSunFlare do).

    Attributes:
        strength: In [0, 1].
        weather: In [0, 1].
    """

    strength: float = 0.5
    weather: float = 0.0

    def __post_init__(self) -> None:
        for name in ("strength", "weather"):
            s = getattr(self, name)
            if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {s!r}")

    @property
    def enabled(self) -> bool:
        return self.strength > 0 or self.weather > 0

    @property
    def hflip_p(self) -> float:
        return 0.5 if self.strength > 0 else 0.0

    @property
    def scale_range(self) -> tuple[float, float]:
        return 1.0 - 0.5 * self.strength, 1.0 + 0.5 * self.strength

    @property
    def jitter(self) -> float:
        """Half-width of the brightness / contrast / saturation factor range."""
        return 0.4 * self.strength


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if (
        len(size) != 2
        or not all(isinstance(v, int | np.integer) for v in size)
        or min(size) < 1
    ):
        raise ValueError(f"size must be (height, width) positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output pixel for a nearest resize (pixel centres)."""
    idx = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)).long()
    return idx.clamp_(max=n_in - 1)


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # (H, W) -> (h, w), values only ever copied, never mixed
    rows = _nearest_index(mask.shape[0], size[0])
    cols = _nearest_index(mask.shape[1], size[1])
    return mask.index_select(0, rows).index_select(1, cols)


def resize_pair(
    image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resizes an image (bilinear, antialiased) and its mask (nearest) together.

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) uint8, or None.
        size: (height, width) to resize to.

    Returns:
        The (height, width, 3) uint8 image and (height, width) uint8 mask (None if
        `mask` was None). Always new arrays.

    Raises:
        ValueError: on wrong shapes or dtypes, or a bad `size`.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}"
        )
    if mask is not None and (mask.shape != image.shape[:2] or mask.dtype != np.uint8):
        raise ValueError(
            f"mask must be {image.shape[:2]} uint8 like image, "
            f"got {mask.shape} {mask.dtype}"
        )
    h, w = _check_size(size)
    if (h, w) == image.shape[:2]:
        return image.copy(), None if mask is None else mask.copy()
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(
        x, size=(h, w), mode="bilinear", align_corners=False, antialias=True
    )  # (1, 3, h, w)
    out = x[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    out_image = np.ascontiguousarray(out.numpy())
    if mask is None:
        return out_image, None
    out_mask = _resize_mask(torch.from_numpy(np.ascontiguousarray(mask)), (h, w))
    return out_image, out_mask.numpy().copy()


WEATHER_EFFECTS = ("fog", "low_light", "glare")


def _weather_draws(rng: np.random.Generator, shape: tuple[int, int]) -> dict:
    """The random choices of one weather effect (see `apply_weather`)."""
    effect = WEATHER_EFFECTS[int(rng.integers(len(WEATHER_EFFECTS)))]
    return {
        "effect": effect,
        "shape": tuple(int(v) for v in shape),
        "amount": float(rng.uniform(0.3, 0.65)),  # fog density
        "gradient": bool(rng.random() < 0.5),  # fog thicker toward one edge
        "gain": rng.uniform(0.1, 0.8, 3).astype(np.float32),  # low light, per channel
        "centre": rng.uniform(-0.1, 1.1, 2),  # glare centre, image fractions
        "sigma": float(rng.uniform(0.2, 0.4)),  # glare radius, image fractions
        "peak": float(rng.uniform(0.7, 1.0)),
    }


def apply_weather(x: torch.Tensor, draws: dict) -> torch.Tensor:
    """One photometric weather effect on a (3, H, W) image in [0, 1].

    - fog: blend toward a light grey, by `amount` (optionally growing down the
      image, like distance haze);
    - low_light: scale each channel by its `gain` (dark, colour-cast: dusk,
      night);
    - glare: screen-blend a bright radial glow centred at `centre`.

    Geometry is untouched, so the mask stays as it is.
    """
    h, w = draws["shape"]
    effect = draws["effect"]
    if effect == "fog":
        amount = torch.full((1, h, 1), draws["amount"])
        if draws["gradient"]:
            amount = amount * torch.linspace(0.8, 1.2, h).view(1, h, 1)
        grey = torch.tensor([0.78, 0.8, 0.82]).view(3, 1, 1)
        return (x + (grey - x) * amount).clamp_(0, 1)
    if effect == "low_light":
        return (x * torch.from_numpy(draws["gain"]).view(3, 1, 1)).clamp_(0, 1)
    gy = (torch.arange(h, dtype=torch.float32) + 0.5).view(h, 1) / h
    gx = (torch.arange(w, dtype=torch.float32) + 0.5).view(1, w) / w
    cx, cy = (float(v) for v in draws["centre"])
    d2 = (gx - cx) ** 2 + (gy - cy) ** 2
    glow = torch.exp(d2 * (-0.5 / draws["sigma"] ** 2)) * draws["peak"]  # (H, W)
    colour = torch.tensor([1.0, 0.97, 0.88]).view(3, 1, 1)
    return 1.0 - (1.0 - x) * (1.0 - glow[None] * colour)


def _window(n_src: int, n_dst: int, u: float) -> tuple[int, int, int]:
    """(source start, destination start, length) to crop or pad n_src to n_dst."""
    if n_src >= n_dst:  # crop
        return min(int(u * (n_src - n_dst + 1)), n_src - n_dst), 0, n_dst
    return 0, min(int(u * (n_dst - n_src + 1)), n_dst - n_src), n_src  # pad


class SegmentationSet(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images and masks held in memory, normalised and optionally augmented.

    The images are converted once, at construction, to an (N, 3, H, W) uint8
    tensor (a copy: later changes to the arrays passed in are not seen).

    Args:
        images: (N, H, W, 3) uint8.
        masks: (N, H, W) uint8 class ids (255 = ignore).
        augment: Augmentation; None or strength 0 for none.
        mean, std: Per-channel normalisation of images scaled to [0, 1].
        seed: Non-negative; with the epoch and index, fixes each sample's
            augmentation.

    Raises:
        ValueError: on mismatched or malformed images / masks, bad mean / std /
            seed.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        *,
        augment: AugmentConfig | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
    ) -> None:
        images, masks = np.asarray(images), np.asarray(masks)
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}"
            )
        if masks.shape != images.shape[:3] or masks.dtype != np.uint8:
            raise ValueError(
                f"masks must be (N, H, W) uint8 matching images {images.shape}, "
                f"got masks {masks.shape} {masks.dtype}"
            )
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values, got {mean!r}, {std!r}")
        if not all(math.isfinite(v) and v > 0 for v in std):
            raise ValueError(f"std must be positive, got {std!r}")
        self.seed = check_int(seed, "seed", minimum=0)
        self.augment = augment
        self.epoch = 0
        # (N, 3, H, W) uint8, one contiguous copy
        self._images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self._masks = torch.from_numpy(masks).clone()  # (N, H, W) uint8
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._luma = torch.tensor(_LUMA, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return self._images.shape[0]

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose augmentation `__getitem__` draws."""
        self.epoch = check_int(epoch, "epoch", minimum=0)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # Same ops as the Predictor, so training and inference match bit for bit.
        return (x.float() / 255.0 - self._mean) / self._std  # (3, H, W)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (3, H, W) float32 normalised image and (H, W) int64 mask."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        image = self._images[index]  # (3, H, W) uint8
        mask = self._masks[index]  # (H, W) uint8
        aug = self.augment
        if aug is None or not aug.enabled:
            return self._normalise(image), mask.long()
        return self._augment(image, mask, aug, index)

    def _augment(
        self, image: torch.Tensor, mask: torch.Tensor, aug: AugmentConfig, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # All draws happen up front, in a fixed order, from a generator seeded by
        # (seed, epoch, index) alone.
        rng = np.random.default_rng((self.seed, self.epoch, index))
        flip = rng.random() < aug.hflip_p
        scale = rng.uniform(*aug.scale_range)
        brightness, contrast, saturation = rng.uniform(
            1 - aug.jitter, 1 + aug.jitter, size=3
        )
        u_row, u_col = rng.random(2)
        # Drawn only when enabled, so weather = 0 leaves the other draws as they were.
        weather = (
            _weather_draws(rng, mask.shape)
            if aug.weather > 0 and rng.random() < aug.weather
            else None
        )

        if flip:
            image, mask = image.flip(-1), mask.flip(-1)
        x = image.float().div_(255.0)  # (3, H, W) in [0, 1]
        x.mul_(brightness).clamp_(0, 1)
        grey_mean = (x * self._luma).sum(0).mean()  # () mean luma
        x.sub_(grey_mean).mul_(contrast).add_(grey_mean).clamp_(0, 1)
        grey = (x * self._luma).sum(0, keepdim=True)  # (1, H, W)
        x.sub_(grey).mul_(saturation).add_(grey).clamp_(0, 1)
        if weather is not None:
            x = apply_weather(x, weather)
        x.sub_(self._mean).div_(self._std)  # normalised: padding with 0 is neutral

        h, w = mask.shape
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) == (h, w):
            return x, mask.long()
        # Crop and pad at once: copy the surviving window into a neutral canvas.
        sy, dy, ly = _window(nh, h, u_row)
        sx, dx, lx = _window(nw, w, u_col)
        rows = _nearest_index(h, nh)[sy : sy + ly]  # only the rows that survive
        cols = _nearest_index(w, nw)[sx : sx + lx]
        out_mask = torch.full((h, w), IGNORE_INDEX, dtype=torch.int64)
        out_mask[dy : dy + ly, dx : dx + lx] = mask.index_select(0, rows).index_select(
            1, cols
        )
        scaled = F.interpolate(
            x[None],
            size=(nh, nw),
            mode="bilinear",
            align_corners=False,
            antialias=scale < 1,
        )[0]  # (3, nh, nw)
        out = x.new_zeros(3, h, w)
        out[:, dy : dy + ly, dx : dx + lx] = scaled[:, sy : sy + ly, sx : sx + lx]
        return out, out_mask


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    weights: np.ndarray | None = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A single-process loader over an in-memory dataset.

    Args:
        dataset: Any sized dataset (typically a `SegmentationSet`).
        batch_size: Images per batch (>= 1).
        weights: (N,) non-negative sampling weights; when given, draws N samples
            with replacement (`WeightedRandomSampler`) and ignores `shuffle`.
        shuffle: Without weights, a seeded random permutation each pass (else in
            order).
        seed: Seeds the sampler's generator.
        drop_last: Drop a last incomplete batch.

    Raises:
        ValueError: on a bad `batch_size` or `weights`.
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(dataset)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(int(seed))
    sampler: Sampler[int]
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                "weights must be finite, non-negative, with a positive sum"
            )
        sampler = WeightedRandomSampler(
            torch.from_numpy(w), num_samples=n, replacement=True, generator=generator
        )
    elif shuffle:
        sampler = RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
    else:
        sampler = SequentialSampler(dataset)  # type: ignore[arg-type]
    # num_workers=0: the data is already in memory, and one process keeps the
    # augmentation and sampling order deterministic.
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=sampler,
        num_workers=0,
        drop_last=drop_last,
    )
