"""A Kedro dataset writing image sets as paired folders (images/, masks/, metadata)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset

from edgeloop.imaging import encode_png


@dataclass(frozen=True)
class FolderItem:
    """One file set of a paired folder: an image and/or a mask, and metadata."""

    stem: str
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class SceneFolderDataset(AbstractDataset[Mapping[str, Sequence[FolderItem]], dict]):
    """Writes subsets as ``<path>/<subset>/{images,masks}/<stem>.png`` + metadata.

    A save replaces the whole folder atomically (write beside, then swap), so
    a smaller re-generation never leaves stale files behind for ingest to find.
    Loading returns a manifest: the root and the number of items per subset.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def save(self, data: Mapping[str, Sequence[FolderItem]]) -> None:
        tmp = self._path.with_name(f".{self._path.name}.{uuid.uuid4().hex}")
        for subset, items in data.items():
            base = tmp / subset
            base.mkdir(parents=True)
            lines = []
            for item in items:
                for kind, array in (("images", item.image), ("masks", item.mask)):
                    if array is None:
                        continue
                    (base / kind).mkdir(exist_ok=True)
                    (base / kind / f"{item.stem}.png").write_bytes(encode_png(array))
                lines.append(json.dumps({"stem": item.stem, **item.meta}, default=str))
            (base / "metadata.jsonl").write_text("".join(f"{ln}\n" for ln in lines))
        old = None
        if self._path.exists():
            old = self._path.with_name(f".{self._path.name}.old-{uuid.uuid4().hex}")
            self._path.rename(old)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(self._path)
        if old is not None:
            shutil.rmtree(old)

    def load(self) -> dict:
        subsets = {}
        if self._path.is_dir():
            for sub in sorted(p for p in self._path.iterdir() if p.is_dir()):
                meta = sub / "metadata.jsonl"
                subsets[sub.name] = (
                    sum(1 for ln in meta.read_text().splitlines() if ln.strip())
                    if meta.is_file()
                    else 0
                )
        # Relative to the working folder, so the same project in another folder
        # gives the same manifest (and the same provenance fingerprint).
        return {"root": os.path.relpath(self._path), "subsets": subsets}

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
