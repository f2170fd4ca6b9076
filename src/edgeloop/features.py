"""Metadata features of images and masks, stored with them in the lake."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import measure


@dataclass(frozen=True)
class ImageFeatures:
    """Photometric features of an image, both in [0, 1]."""

    brightness: float
    contrast: float


@dataclass(frozen=True)
class MaskFeatures:
    """Per-class statistics of a label map.

    Attributes:
        class_pixels: Pixel count per class, in class-map order.
        ignore_pixels: Pixels with the ignore index.
        objects_per_class: Connected components per class (0 for non-object classes).
        object_fracs: Area of every object relative to the image, largest first.
    """

    class_pixels: tuple[int, ...]
    ignore_pixels: int
    objects_per_class: tuple[int, ...]
    object_fracs: tuple[float, ...]

    @property
    def n_objects(self) -> int:
        return int(sum(self.objects_per_class))

    @property
    def largest_object_frac(self) -> float:
        return self.object_fracs[0] if self.object_fracs else 0.0


def image_features(image: np.ndarray) -> ImageFeatures:
    """Brightness (mean luma) and contrast (luma std) of an (H, W, 3) uint8 image."""
    luma = image[..., :3].astype(np.float32) @ np.array(
        [0.299, 0.587, 0.114], dtype=np.float32
    )
    return ImageFeatures(
        brightness=round(float(luma.mean()) / 255.0, 6),
        contrast=round(float(luma.std()) / 255.0, 6),
    )


def mask_features(
    mask: np.ndarray,
    class_ids: tuple[int, ...],
    object_ids: tuple[int, ...],
    ignore_index: int,
) -> MaskFeatures:
    """Counts pixels and connected objects per class in an (H, W) label map."""
    area = float(mask.size)
    flat = mask.ravel()
    counts = np.bincount(flat, minlength=256)
    class_pixels = tuple(int(counts[i]) for i in class_ids)
    is_object = np.zeros(256, dtype=bool)
    is_object[list(object_ids)] = True
    # One labelling pass for all classes: a region is a 4-connected run of one
    # object class; every other pixel is background (-1) here.
    objects_only = np.where(is_object[mask], mask.astype(np.int16), np.int16(-1))
    regions, n = measure.label(
        objects_only, background=-1, connectivity=1, return_num=True
    )
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    region_class = np.full(n + 1, -1, dtype=np.int16)
    region_class[regions.ravel()] = objects_only.ravel()
    per_class = np.bincount(region_class[1:], minlength=256)
    return MaskFeatures(
        class_pixels=class_pixels,
        ignore_pixels=int(counts[ignore_index]),
        objects_per_class=tuple(int(per_class[i]) for i in class_ids),
        object_fracs=tuple(round(float(s) / area, 8) for s in np.sort(sizes)[::-1]),
    )
