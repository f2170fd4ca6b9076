"""Metadata features of images and masks, stored with them in the lake."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# 4-connectivity keeps thin touching objects apart, as annotators count them.
_STRUCTURE = ndimage.generate_binary_structure(2, 1)


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
    counts = np.bincount(mask.ravel(), minlength=256)
    class_pixels = tuple(int(counts[i]) for i in class_ids)
    objects: list[int] = []
    fracs: list[float] = []
    for class_id, n_pix in zip(class_ids, class_pixels, strict=True):
        if class_id not in object_ids or n_pix == 0:
            objects.append(0)
            continue
        labelled, n = ndimage.label(mask == class_id, structure=_STRUCTURE)
        objects.append(int(n))
        sizes = np.bincount(labelled.ravel())[1:]
        fracs.extend(float(s) / area for s in sizes)
    return MaskFeatures(
        class_pixels=class_pixels,
        ignore_pixels=int(counts[ignore_index]),
        objects_per_class=tuple(objects),
        object_fracs=tuple(round(f, 8) for f in sorted(fracs, reverse=True)),
    )
