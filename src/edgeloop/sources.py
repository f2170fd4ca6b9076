"""Segmentation sources: the formats ingest reads.

A source lists `RawItem`s (paths plus what the source says about them); reading
and validating the bytes is ingest's job, so every format shares one set of checks.

Formats:
    folders: ``images/`` and ``masks/`` with matching stems, and an optional
        ``metadata.jsonl`` (stem, split, captured_at, tags) sidecar.
    voc: PASCAL VOC: ``JPEGImages``, ``SegmentationClass`` palette PNGs and the
        ``ImageSets/Segmentation/{train,val,test}.txt`` lists (the official split).
    camvid: SegNet/CamVid list files, ``<image> <mask>`` per line, with a path
        prefix to strip; the list file names the official split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SOURCE_KINDS = ("synthetic", "folders", "voc", "camvid")


class SourceError(ValueError):
    """The source itself is unusable (missing root, no items, bad config)."""


@dataclass(frozen=True)
class RawItem:
    """One image (and optional mask) as a source lists it.

    Attributes:
        name: A stable, human-readable id within the source (e.g. the stem).
        image_path: Path as listed, not yet checked against the root.
        mask_path: Path of the label map, or None for unlabeled images.
        split: The official split, if the source has one.
        captured_at: When the image was taken, if known.
        tags: Condition tags the source gave.
    """

    name: str
    image_path: str
    mask_path: str | None = None
    split: str | None = None
    captured_at: datetime | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceConfig:
    """Where and how to read a source (the `ingest.source` parameters)."""

    kind: str
    root: str
    name: str = ""
    value_map: Mapping[int, int] = field(default_factory=dict)
    strip_prefix: str = ""
    list_files: Mapping[str, str] = field(default_factory=dict)
    subsets: Sequence[str] = ()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SourceConfig:
        kind = params.get("kind")
        if kind not in SOURCE_KINDS:
            raise SourceError(
                f"ingest.source.kind {kind!r} is not one of {list(SOURCE_KINDS)}"
            )
        if not params.get("root"):
            raise SourceError("ingest.source.root is required")
        return cls(
            kind=kind,
            root=str(params["root"]),
            name=str(params.get("name") or kind),
            value_map={
                int(k): int(v) for k, v in (params.get("value_map") or {}).items()
            },
            strip_prefix=str(params.get("strip_prefix") or ""),
            list_files=dict(params.get("list_files") or {}),
            subsets=tuple(params.get("subsets") or ()),
        )


def resolve_inside(root: Path, rel: str) -> Path | None:
    """Resolves `rel` under `root`; None if it escapes the root (.., abs, symlink)."""
    if not rel:
        return None
    resolved = (root / rel).resolve()
    try:
        resolved.relative_to(root.resolve())
    except ValueError:
        return None
    return resolved


def _read_sidecar(path: Path) -> dict[str, dict[str, Any]]:
    meta: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return meta
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                meta[str(row["stem"])] = row
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise SourceError(f"{path}:{n}: bad metadata line ({err})") from err
    return meta


def _parse_ts(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value))


def list_folders(root: Path, *, prefix: str = "") -> list[RawItem]:
    """Lists a paired-folder source: ``images/<stem>.*`` and ``masks/<stem>.png``."""
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise SourceError(f"paired-folder source {root} has no images/ folder")
    masks = {}
    if (root / "masks").is_dir():
        masks = {p.stem: p for p in sorted((root / "masks").iterdir()) if p.is_file()}
    meta = _read_sidecar(root / "metadata.jsonl")
    items = []
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTS:
            continue
        row = meta.get(path.stem, {})
        mask = masks.get(path.stem)
        items.append(
            RawItem(
                name=f"{prefix}{path.stem}",
                image_path=os.path.relpath(path, root),
                mask_path=os.path.relpath(mask, root) if mask else None,
                split=row.get("split"),
                captured_at=_parse_ts(row.get("captured_at")),
                tags=tuple(row.get("tags") or ()),
            )
        )
    return items


def list_voc(root: Path) -> list[RawItem]:
    """Lists a PASCAL VOC layout; the Segmentation lists give the official split."""
    lists = root / "ImageSets" / "Segmentation"
    if not lists.is_dir():
        raise SourceError(f"VOC source {root} has no ImageSets/Segmentation folder")
    items: dict[str, RawItem] = {}
    for split in ("train", "val", "test"):
        list_file = lists / f"{split}.txt"
        if not list_file.is_file():
            continue
        for line in list_file.read_text().split():
            stem = line.strip()
            items.setdefault(
                stem,
                RawItem(
                    name=stem,
                    image_path=f"JPEGImages/{stem}.jpg",
                    mask_path=f"SegmentationClass/{stem}.png",
                    split=split,
                ),
            )
    return list(items.values())


def list_camvid(
    root: Path, list_files: Mapping[str, str], strip_prefix: str
) -> list[RawItem]:
    """Lists SegNet/CamVid list files (``<image> <mask>`` per line)."""
    files = list_files or {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
    items = []
    for split, list_name in files.items():
        list_path = resolve_inside(root, list_name)
        if list_path is None or not list_path.is_file():
            raise SourceError(f"CamVid list file {list_name!r} not found under {root}")
        for n, line in enumerate(list_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise SourceError(
                    f"{list_path}:{n}: expected '<image> <mask>', got {line!r}"
                )
            image, mask = (p.removeprefix(strip_prefix) for p in parts)
            items.append(
                RawItem(
                    name=Path(image).stem, image_path=image, mask_path=mask, split=split
                )
            )
    return items


def list_source(config: SourceConfig) -> list[RawItem]:
    """Lists the items of a configured source (synthetic = its folder subsets)."""
    root = Path(config.root)
    if not root.is_dir():
        raise SourceError(f"source root {root} does not exist or is not a folder")
    if config.kind == "folders":
        return list_folders(root)
    if config.kind == "voc":
        return list_voc(root)
    if config.kind == "camvid":
        return list_camvid(root, config.list_files, config.strip_prefix)
    # synthetic: the generator wrote each labeled subset as a paired folder.
    items: list[RawItem] = []
    for subset in config.subsets or ("collected", "eval"):
        sub = root / subset
        if not sub.is_dir():
            raise SourceError(f"synthetic subset {sub} is missing")
        items.extend(
            RawItem(
                name=it.name,
                image_path=f"{subset}/{it.image_path}",
                mask_path=f"{subset}/{it.mask_path}" if it.mask_path else None,
                split=it.split,
                captured_at=it.captured_at,
                tags=it.tags,
            )
            for it in list_folders(sub, prefix=f"{subset}/")
        )
    return items
