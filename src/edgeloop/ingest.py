"""Reading, validating and encoding source items; the ingest pipeline's core.

Every format goes through `read_item`, so the checks are the same everywhere:
a bad item is quarantined with a reason and ingest carries on.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.classmap import ClassMap
from edgeloop.features import MaskFeatures, image_features, mask_features
from edgeloop.imaging import (
    ImageDecodeError,
    decode_image,
    decode_mask,
    encode_png,
    image_size,
)
from edgeloop.lake import ImageRecord, LabelRecord
from edgeloop.progress import tqdm
from edgeloop.sources import (
    RawItem,
    SourceConfig,
    SourceError,
    list_source,
    resolve_inside,
)

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["name", "image_path", "mask_path", "reason"]


class ItemError(ValueError):
    """One item is bad; it is quarantined with this message as the reason."""


@dataclass(frozen=True)
class IngestLimits:
    """Per-item limits (the `ingest.limits` parameters)."""

    max_image_pixels: int = 25_000_000
    max_file_bytes: int = 50_000_000
    workers: int = 2

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> IngestLimits:
        params = params or {}
        return cls(
            **{k: int(v) for k, v in params.items() if k in cls.__dataclass_fields__}
        )


@dataclass(frozen=True)
class ReadItem:
    """A validated item: the image to store and, if labeled, its class-map mask."""

    image: ImageRecord
    mask: np.ndarray | None
    tags: tuple[str, ...]
    mask_png: bytes | None = None
    mask_features: MaskFeatures | None = None


@dataclass(frozen=True)
class IngestBatch:
    """What one ingest run produced: good items and the quarantine report."""

    images: list[ImageRecord]
    labels: list[LabelRecord]
    quarantine: pd.DataFrame
    n_listed: int


def _read_file(root: Path, rel: str, what: str, limits: IngestLimits) -> bytes:
    path = resolve_inside(root, rel)
    if path is None:
        raise ItemError(f"{what} path {rel!r} resolves outside the source root")
    if not path.is_file():
        raise ItemError(f"{what} file {rel!r} is missing")
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise ItemError(
            f"{what} file is {size} bytes, over the limit of {limits.max_file_bytes}"
        )
    return path.read_bytes()


def read_item(
    root: Path,
    item: RawItem,
    *,
    source: str,
    class_map: ClassMap,
    value_map: Mapping[int, int],
    object_ids: tuple[int, ...],
    limits: IngestLimits,
) -> ReadItem:
    """Reads, checks and re-encodes one item.

    Raises:
        ItemError: naming what is wrong with the item.
    """
    data = _read_file(root, item.image_path, "image", limits)
    try:
        width, height = image_size(data)
        if width * height > limits.max_image_pixels:
            raise ItemError(
                f"image is {width}x{height}, over the limit of "
                f"{limits.max_image_pixels} pixels"
            )
        pixels = decode_image(data)
    except ImageDecodeError as err:
        raise ItemError(str(err)) from err
    mask = None
    feats = None
    if item.mask_path is not None:
        mask_data = _read_file(root, item.mask_path, "mask", limits)
        try:
            raw = decode_mask(mask_data)
        except ImageDecodeError as err:
            raise ItemError(str(err)) from err
        if raw.shape != pixels.shape[:2]:
            raise ItemError(
                f"size mismatch: image is {width}x{height}, mask is "
                f"{raw.shape[1]}x{raw.shape[0]}"
            )
        mask, invalid = class_map.remap(raw, value_map)
        if invalid:
            raise ItemError(
                f"mask values {invalid[:10]} are outside the class map "
                f"(ids {list(class_map.ids)}, ignore {class_map.ignore_index}, "
                f"value_map {dict(value_map)})"
            )
        feats = mask_features(mask, class_map.ids, object_ids, class_map.ignore_index)
    record = ImageRecord(
        png=encode_png(pixels),
        width=width,
        height=height,
        source=source,
        source_path=item.image_path,
        features=image_features(pixels),
        split=item.split,
        captured_at=item.captured_at,
        objects_per_class=feats.objects_per_class if feats else None,
        largest_object_frac=feats.largest_object_frac if feats else None,
    )
    return ReadItem(
        image=record,
        mask=mask,
        tags=item.tags,
        mask_png=None if mask is None else encode_png(mask),
        mask_features=feats,
    )


def _read_or_reason(root: Path, item: RawItem, **kwargs: Any) -> ReadItem | str:
    try:
        return read_item(root, item, **kwargs)
    except ItemError as err:
        return str(err)


def ingest_source(
    config: SourceConfig,
    class_map: ClassMap,
    *,
    limits: IngestLimits,
    object_classes: tuple[str, ...],
    iteration: int,
    progress: bool = True,
) -> IngestBatch:
    """Reads every item of a source; bad items go to the quarantine report.

    Raises:
        SourceError: if the source is unusable or yields no good item.
    """
    items = list_source(config)
    if not items:
        raise SourceError(f"source {config.kind} at {config.root} lists no items")
    root = Path(config.root)
    object_ids = tuple(class_map.id_of(n) for n in object_classes)

    work = partial(
        _read_or_reason,
        root,
        source=config.name,
        class_map=class_map,
        value_map=config.value_map,
        object_ids=object_ids,
        limits=limits,
    )
    # Decoding, feature extraction and PNG encoding are CPU-bound and partly
    # hold the GIL: worker processes scale on 2 cores where threads do not.
    # Starting workers costs about a second: not worth it for a handful of items.
    n_workers = max(1, limits.workers) if len(items) >= 64 else 1
    with ExitStack() as stack:
        if n_workers > 1:
            ctx = multiprocessing.get_context("forkserver")
            pool = stack.enter_context(ProcessPoolExecutor(n_workers, mp_context=ctx))
            results_iter = pool.map(work, items, chunksize=8)
        else:
            results_iter = map(work, items)
        results = list(
            tqdm(
                results_iter,
                total=len(items),
                desc=f"ingest {config.name}",
                unit="img",
                disable=not progress,
            )
        )
    images: list[ImageRecord] = []
    labels: list[LabelRecord] = []
    quarantine: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for item, result in zip(items, results, strict=True):
        if isinstance(result, ReadItem):
            image_id = result.image.image_id
            if image_id in seen:
                result = f"duplicate: same content (sha256) as {seen[image_id]!r}"
            else:
                seen[image_id] = item.name
        if isinstance(result, str):
            log.warning("quarantined %s: %s", item.name, result)
            quarantine.append(
                {
                    "name": item.name,
                    "image_path": item.image_path,
                    "mask_path": item.mask_path,
                    "reason": result,
                }
            )
            continue
        images.append(result.image)
        if result.mask is not None:
            labels.append(
                LabelRecord(
                    image_id=result.image.image_id,
                    mask=result.mask,
                    origin="seed",
                    iteration=iteration,
                    annotator=f"source:{config.name}",
                    condition_tags=result.tags,
                    mask_png=result.mask_png,
                    features=result.mask_features,
                )
            )
    if not images:
        reasons = sorted({q["reason"] for q in quarantine})[:3]
        raise SourceError(
            f"source {config.kind} at {config.root} yielded no good item "
            f"({len(quarantine)} quarantined, e.g. {reasons})"
        )
    log.info(
        "ingest %s: %d listed, %d good, %d quarantined",
        config.name,
        len(items),
        len(images),
        len(quarantine),
    )
    return IngestBatch(
        images=images,
        labels=labels,
        quarantine=pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS),
        n_listed=len(items),
    )
