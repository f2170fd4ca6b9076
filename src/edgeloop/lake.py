"""The lake: the only code that writes the shared tables and blobs.

Tables are Delta Lake tables under one lake root (a local path or any fsspec /
object-store URI); blobs are content-addressed files under the same root. Every
read records the Delta version it saw, so a run can say exactly what it read.

Example:
    >>> lake = Lake("data/lake")
    >>> images = lake.read("images")
    >>> images.attrs["delta_version"]
"""

from __future__ import annotations

import logging
import os
import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable, write_deltalake

from edgeloop.classmap import ClassMap
from edgeloop.features import ImageFeatures, MaskFeatures, mask_features
from edgeloop.imaging import decode_mask, encode_png, sha256

log = logging.getLogger(__name__)

_TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "images": pa.schema(
        [
            ("image_id", pa.string()),
            ("blob_uri", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("source", pa.string()),
            ("source_path", pa.string()),
            ("split", pa.string()),
            ("captured_at", _TS),
            ("brightness", pa.float64()),
            ("contrast", pa.float64()),
            ("n_objects", pa.int32()),
            ("objects_per_class", pa.list_(pa.int32())),
            ("largest_object_frac", pa.float64()),
            ("ingested_at", _TS),
        ]
    ),
    "labels": pa.schema(
        [
            ("label_id", pa.string()),
            ("image_id", pa.string()),
            ("mask_blob", pa.string()),
            ("origin", pa.string()),
            ("iteration", pa.int32()),
            ("annotator", pa.string()),
            ("created_at", _TS),
            ("condition_tags", pa.list_(pa.string())),
            ("class_pixels", pa.list_(pa.int64())),
            ("ignore_pixels", pa.int64()),
            ("n_objects", pa.int32()),
            ("object_fracs", pa.list_(pa.float64())),
        ]
    ),
    # The model registry: every trained model, promoted or not, and why.
    "models": pa.schema(
        [
            ("model_version", pa.string()),
            ("iteration", pa.int32()),
            ("architecture", pa.string()),
            ("parent_version", pa.string()),
            ("weights_uri", pa.string()),
            ("card_uri", pa.string()),
            ("metric", pa.string()),
            ("score", pa.float64()),
            ("slice_scores_json", pa.string()),
            ("metadata_json", pa.string()),
            ("promoted", pa.bool_()),
            ("reason", pa.string()),
            ("created_at", _TS),
        ]
    ),
    # Every prediction the server or batch scoring made, with its query image.
    "predictions": pa.schema(
        [
            ("request_id", pa.string()),
            ("ts", _TS),
            ("date", pa.string()),  # partition column: YYYY-MM-DD of ts (UTC)
            ("model_version", pa.string()),
            ("iteration", pa.int32()),
            ("image_id", pa.string()),
            ("image_blob", pa.string()),
            ("mask_blob", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("mean_max_prob", pa.float64()),
            ("mean_entropy", pa.float64()),
            ("mean_margin", pa.float64()),
            ("low_conf_frac", pa.float64()),
            ("class_fracs", pa.list_(pa.float64())),
            ("latency_ms", pa.float64()),
            ("source", pa.string()),  # api | batch
            ("client", pa.string()),
        ]
    ),
    # What customers said about predictions or images.
    "feedback": pa.schema(
        [
            ("feedback_id", pa.string()),
            ("request_id", pa.string()),
            ("image_id", pa.string()),
            ("ts", _TS),
            ("verdict", pa.string()),  # wrong | ok
            ("comment", pa.string()),
            ("tags", pa.list_(pa.string())),
            ("client", pa.string()),
        ]
    ),
    # What reviewers said about predictions (imported Label Studio exports).
    "review_verdicts": pa.schema(
        [
            ("verdict_id", pa.string()),
            ("request_id", pa.string()),
            ("image_id", pa.string()),
            ("verdict", pa.string()),  # correct | bug
            ("tags", pa.list_(pa.string())),
            ("comment", pa.string()),
            ("reviewer", pa.string()),
            ("ts", _TS),
        ]
    ),
    # Edge cases tracked as bugs: an append-only event log; a bug's state is
    # its latest row (open -> candidates -> labelled -> fixed).
    "edge_cases": pa.schema(
        [
            ("event_id", pa.string()),
            ("bug_id", pa.string()),
            ("tag", pa.string()),
            ("seed_image_ids", pa.list_(pa.string())),
            ("status", pa.string()),
            ("opened_iteration", pa.int32()),
            ("closed_iteration", pa.int32()),
            ("ts", _TS),
        ]
    ),
}
KEYS = {
    "images": "image_id",
    "labels": "label_id",
    "models": "model_version",
    "predictions": "request_id",
    "feedback": "feedback_id",
    "review_verdicts": "verdict_id",
    "edge_cases": "event_id",
}
# Partition columns: a dedupe on append reads only the partitions it writes to.
PARTITIONS: dict[str, list[str]] = {"predictions": ["date"]}
ORIGINS = ("seed", "human", "pseudo")


BLOB_DIR = "blobs"  # under the lake root


def blob_uri(data: bytes, *, kind: str, ext: str = "png") -> str:
    """The root-relative URI `Lake.put_blob` stores `data` under (its sha256)."""
    if not kind.isidentifier():
        raise LakeError(f"blob kind must be an identifier, got {kind!r}")
    digest = sha256(data)
    return f"{BLOB_DIR}/{kind}/{digest[:2]}/{digest}.{ext}"


class LakeError(ValueError):
    """A write the lake refuses: nothing was stored."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Lake:
    """A lake root holding Delta tables and content-addressed blobs.

    Args:
        root: Local path or fsspec URI (``s3://bucket/lake``, ``memory://x``...).
        storage_options: Passed to fsspec and delta-rs for object stores.
    """

    root: str
    storage_options: dict[str, str] | None = None
    reads: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = str(self.root).rstrip("/")
        self._fs, self._fs_root = fsspec.core.url_to_fs(
            self.root, **(self.storage_options or {})
        )
        self._local = "://" not in self.root or self.root.startswith("file://")
        if self._local:
            self._fs_root = os.path.abspath(self._fs_root)
            os.makedirs(self._fs_root, exist_ok=True)

    # -- blobs ---------------------------------------------------------------

    def put_blob(self, data: bytes, *, kind: str, ext: str = "png") -> str:
        """Stores bytes under their sha256 and returns the blob URI (root-relative).

        Writing the same bytes twice is a no-op, so blobs are never overwritten.
        """
        uri = blob_uri(data, kind=kind, ext=ext)
        path = self._path(uri)
        if self._fs.exists(path):
            return uri
        self._fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if self._local:
            # Write then rename: a crash never leaves a half blob at its address.
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        else:
            self._fs.pipe_file(path, data)
        return uri

    def get_blob(self, uri: str) -> bytes:
        return self._fs.cat_file(self._path(uri))

    def _path(self, rel: str) -> str:
        parts = rel.split("/")
        if rel.startswith("/") or "://" in rel or ".." in parts or "\\" in rel:
            raise LakeError(f"blob URI {rel!r} points outside the lake root")
        return posixpath.join(self._fs_root, rel)

    # -- tables --------------------------------------------------------------

    def table_uri(self, table: str) -> str:
        if table not in SCHEMAS:
            raise LakeError(f"unknown table {table!r}; valid tables: {sorted(SCHEMAS)}")
        if self._local:
            return os.path.join(self._fs_root, "tables", table)
        return f"{self.root}/tables/{table}"

    def version(self, table: str) -> int | None:
        """The table's current Delta version, or None if it does not exist yet."""
        uri = self.table_uri(table)
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            return None
        return DeltaTable(uri, storage_options=self.storage_options).version()

    def read(
        self,
        table: str,
        *,
        version: int | None = None,
        columns: list[str] | None = None,
    ) -> pd.DataFrame:
        """Reads a table (at a Delta version) and records the version read.

        A table that does not exist yet reads as empty, at version -1; reading
        version -1 gives any table as it was before its first commit.
        """
        uri = self.table_uri(table)
        schema = SCHEMAS[table]
        exists = DeltaTable.is_deltatable(uri, storage_options=self.storage_options)
        if exists and version != -1:
            dt = DeltaTable(uri, version=version, storage_options=self.storage_options)
            arrow = dt.to_pyarrow_table(columns=columns)
            seen = dt.version()
        else:
            # Version -1 is any table before its first commit: empty.
            if version not in (None, -1):
                raise LakeError(
                    f"table {table!r} has no version {version}: it is empty"
                )
            names = columns or schema.names
            arrow = pa.schema([schema.field(n) for n in names]).empty_table()
            seen = -1
        df = arrow.to_pandas(types_mapper=None)
        df.attrs["delta_table"] = table
        df.attrs["delta_version"] = seen
        self.reads[table] = seen
        log.info("read lake table %s at version %s (%d rows)", table, seen, len(df))
        return df

    def append(self, table: str, rows: pd.DataFrame | pa.Table) -> int | None:
        """Appends rows whose key is not stored yet, in one Delta commit.

        Returns:
            The new Delta version, or None when every row was already stored (a
            run that adds nothing makes no commit).
        """
        schema = SCHEMAS[table]
        key = KEYS[table]
        arrow = (
            rows
            if isinstance(rows, pa.Table)
            else pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
        )
        arrow = arrow.select(schema.names).cast(schema)
        keys = arrow.column(key).to_pylist()
        if len(set(keys)) != len(keys):
            raise LakeError(f"{table}: duplicate {key} values in one append")
        existing = self._existing_keys(table, arrow)
        mask = pa.array([k not in existing for k in keys])
        new = arrow.filter(mask)
        if new.num_rows == 0:
            log.info(
                "%s: nothing new (%d rows already stored), no commit", table, len(keys)
            )
            return None
        write_deltalake(
            self.table_uri(table),
            new,
            mode="append",
            partition_by=PARTITIONS.get(table),
            storage_options=self.storage_options,
        )
        version = self.version(table)
        log.info("%s: appended %d rows -> version %s", table, new.num_rows, version)
        return version

    def _existing_keys(self, table: str, new: pa.Table) -> set[str]:
        """Keys already stored, read from the partitions `new` writes to only."""
        key = KEYS[table]
        uri = self.table_uri(table)
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            return set()
        dt = DeltaTable(uri, storage_options=self.storage_options)
        expr = None
        for column in PARTITIONS.get(table, []):
            values = pc.unique(new.column(column)).to_pylist()
            cond = pc.field(column).isin(values)
            expr = cond if expr is None else expr & cond
        keys = dt.to_pyarrow_dataset().to_table(columns=[key], filter=expr)
        return set(keys.column(key).to_pylist())

    def dataset(self, table: str, *, version: int | None = None) -> pads.Dataset:
        """The table as a lazy Arrow dataset (for filtered, column-pruned scans).

        Raises:
            LakeError: the table does not exist yet.
        """
        uri = self.table_uri(table)
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            raise LakeError(f"table {table!r} does not exist yet in {self.root}")
        dt = DeltaTable(uri, version=version, storage_options=self.storage_options)
        self.reads[table] = dt.version()
        return dt.to_pyarrow_dataset()

    def optimize(self, table: str) -> dict[str, Any]:
        """Compacts a table's small files (one per writer commit) into big ones."""
        uri = self.table_uri(table)
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            return {"table": table, "skipped": "does not exist"}
        metrics = DeltaTable(
            uri, storage_options=self.storage_options
        ).optimize.compact()
        return {"table": table, **metrics}


@dataclass(frozen=True)
class ImageRecord:
    """One image to store: encoded PNG bytes plus what the source knew about it."""

    png: bytes
    width: int
    height: int
    source: str
    source_path: str
    features: ImageFeatures
    split: str | None = None
    captured_at: datetime | None = None
    objects_per_class: tuple[int, ...] | None = None
    largest_object_frac: float | None = None

    @property
    def image_id(self) -> str:
        return sha256(self.png)


def add_images(lake: Lake, records: Iterable[ImageRecord]) -> int | None:
    """Stores image blobs and their rows in one commit to `images`."""
    now = _utcnow()
    rows: list[dict[str, Any]] = []
    for rec in records:
        uri = lake.put_blob(rec.png, kind="images")
        rows.append(
            {
                "image_id": rec.image_id,
                "blob_uri": uri,
                "width": rec.width,
                "height": rec.height,
                "source": rec.source,
                "source_path": rec.source_path,
                "split": rec.split,
                "captured_at": rec.captured_at,
                "brightness": rec.features.brightness,
                "contrast": rec.features.contrast,
                "n_objects": (
                    None
                    if rec.objects_per_class is None
                    else sum(rec.objects_per_class)
                ),
                "objects_per_class": (
                    None
                    if rec.objects_per_class is None
                    else list(rec.objects_per_class)
                ),
                "largest_object_frac": rec.largest_object_frac,
                "ingested_at": now,
            }
        )
    if not rows:
        return None
    return lake.append("images", pd.DataFrame(rows))


@dataclass(frozen=True)
class LabelRecord:
    """One label to register.

    Attributes:
        image_id: The labelled image; it must already be in `images`.
        mask: (H, W) uint8 label map on the class map (ignore index allowed).
        origin: ``seed``, ``human`` or ``pseudo``.
        iteration: The loop iteration the label belongs to.
        annotator: Who (or what) produced it.
        condition_tags: Conditions the person or the source gave.
        mask_png: `mask` already encoded by `encode_png`, and
        features: `mask_features` of `mask`, both optional: a caller that made
            them in worker processes passes them on; otherwise they are made here.
    """

    image_id: str
    mask: np.ndarray
    origin: str
    iteration: int
    annotator: str
    condition_tags: tuple[str, ...] = ()
    mask_png: bytes | None = field(default=None, repr=False)
    features: MaskFeatures | None = field(default=None, repr=False)


class LabelRegistry:
    """The append-only label registry; every label enters through `append`."""

    def __init__(
        self, lake: Lake, class_map: ClassMap, object_classes: Iterable[str] = ()
    ):
        self.lake = lake
        self.class_map = class_map
        names = tuple(object_classes) or tuple(
            n for n in class_map.names if n != "background"
        )
        self.object_ids = tuple(class_map.id_of(n) for n in names)

    def append(self, records: Iterable[LabelRecord]) -> int | None:
        """Validates every record, then stores masks and rows in one commit.

        Raises:
            LakeError: if any record is invalid; nothing is stored then.
        """
        records = list(records)
        cm = self.class_map
        valid_values = np.zeros(256, dtype=bool)
        valid_values[list(cm.ids)] = True
        valid_values[cm.ignore_index] = True
        images = self.lake.read("images", columns=["image_id", "width", "height"])
        sizes = dict(
            zip(
                images["image_id"],
                zip(images["width"], images["height"], strict=True),
                strict=True,
            )
        )
        for rec in records:
            if rec.origin not in ORIGINS:
                raise LakeError(f"label origin {rec.origin!r} not in {list(ORIGINS)}")
            if rec.iteration < 0:
                raise LakeError(f"label iteration must be >= 0, got {rec.iteration}")
            if rec.image_id not in sizes:
                raise LakeError(f"label for unknown image_id {rec.image_id[:12]}…")
            if rec.mask.dtype != np.uint8 or rec.mask.ndim != 2:
                raise LakeError(
                    f"mask must be (H, W) uint8, got {rec.mask.dtype} {rec.mask.shape}"
                )
            w, h = sizes[rec.image_id]
            if rec.mask.shape != (h, w):
                raise LakeError(
                    f"mask shape {rec.mask.shape} does not match image {(h, w)} "
                    f"for image_id {rec.image_id[:12]}…"
                )
            bad = np.unique(rec.mask[~valid_values[rec.mask]])
            if bad.size:
                raise LakeError(
                    f"mask values {bad.tolist()} are not in the class map "
                    f"{list(cm.ids)} (ignore {cm.ignore_index})"
                )
        now = _utcnow()
        rows = []
        for rec in records:
            png = rec.mask_png or encode_png(rec.mask)
            uri = self.lake.put_blob(png, kind="masks")
            feats = rec.features or mask_features(
                rec.mask, cm.ids, self.object_ids, cm.ignore_index
            )
            tags = sorted(set(rec.condition_tags))
            identity = "|".join(
                [
                    rec.image_id,
                    uri,
                    rec.origin,
                    str(rec.iteration),
                    rec.annotator,
                    *tags,
                ]
            )
            rows.append(
                {
                    "label_id": sha256(identity.encode()),
                    "image_id": rec.image_id,
                    "mask_blob": uri,
                    "origin": rec.origin,
                    "iteration": rec.iteration,
                    "annotator": rec.annotator,
                    "created_at": now,
                    "condition_tags": tags,
                    "class_pixels": list(feats.class_pixels),
                    "ignore_pixels": feats.ignore_pixels,
                    "n_objects": feats.n_objects,
                    "object_fracs": list(feats.object_fracs),
                }
            )
        if not rows:
            return None
        return self.lake.append("labels", pd.DataFrame(rows))

    def load_mask(self, mask_blob: str) -> np.ndarray:
        return decode_mask(self.lake.get_blob(mask_blob))


def labels_at_iteration(labels: pd.DataFrame, iteration: int) -> pd.DataFrame:
    """The label of each image at iteration k.

    It is the latest human or seed row with iteration <= k; a pseudo row is used
    only for images with no such row (a pseudo label never overrides a human one).
    """
    rows = labels[labels["iteration"] <= iteration]
    if rows.empty:
        return rows.copy()
    trusted = rows["origin"].isin(["seed", "human"])
    rows = rows.assign(_trusted=trusted.astype(int))
    rows = rows.sort_values(
        ["image_id", "_trusted", "iteration", "created_at", "label_id"], kind="stable"
    )
    latest = rows.groupby("image_id", sort=True).tail(1)
    return latest.drop(columns="_trusted").reset_index(drop=True)


@dataclass(frozen=True)
class LabelBatch:
    """Label records plus the class map they are on, ready for the registry."""

    records: list[LabelRecord]
    class_map: ClassMap
    object_classes: tuple[str, ...] = ()
