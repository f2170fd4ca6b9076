"""Metadata features of images and masks, stored with them in the lake."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def object_profile(
    mask: np.ndarray,
    object_ids: tuple[int, ...],
    *,
    bins: int = 10,
    min_pixels: int = 4,
) -> np.ndarray:
    """How many objects of which sizes a label map shows, as a vector.

    An object is an 8-connected component of object-class pixels (any object
    class, so an aircraft drawn in two classes is one object) of at least
    `min_pixels` pixels. The vector (float32, `bins + 2`) holds the number of
    objects in each of `bins` log-spaced bins of area relative to the image,
    from `min_pixels` pixels to the whole image; log(1 + number of objects);
    and a constant 1, so no vector is all zeros (cosine needs that).

    Used for KNN on predicted masks: "images with many or tiny aircraft" is
    something whole-image CNN features do not see.

    Raises:
        ValueError: `mask` not 2-D, `bins` < 1 or `min_pixels` < 1.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if bins < 1 or min_pixels < 1:
        raise ValueError(f"bins and min_pixels must be >= 1, got {bins}, {min_pixels}")
    is_object = np.zeros(max(256, int(mask.max()) + 1), dtype=bool)
    is_object[list(object_ids)] = True
    regions, n = measure.label(is_object[mask], connectivity=2, return_num=True)
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    fracs = sizes[sizes >= min_pixels] / float(mask.size)
    edges = np.logspace(np.log10(min_pixels / mask.size), 0.0, bins + 1)
    edges[0], edges[-1] = 0.0, np.inf
    counts = np.histogram(fracs, bins=edges)[0]
    return np.r_[counts, np.log1p(len(fracs)), 1.0].astype(np.float32)


@dataclass(frozen=True)
class ObjectProfiles:
    """`object_profile` behind the embedder interface of `embed_frame`.

    Its inputs are label maps (predicted masks), keyed in the embedding store
    by the mask's content address, so each mask is profiled once.
    """

    object_ids: tuple[int, ...]
    bins: int = 10
    batch_size: int = 256

    @property
    def backbone(self) -> str:
        return f"object-profile{self.bins}"

    @property
    def weights(self) -> str:
        return "objects-" + "-".join(str(i) for i in self.object_ids)

    @property
    def dim(self) -> int:
        return self.bins + 2

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "weights": self.weights, "dim": self.dim}

    def embed(self, masks: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(masks), self.dim), dtype=np.float32)
        for i, mask in enumerate(masks):
            out[i] = object_profile(mask, self.object_ids, bins=self.bins)
        return out
