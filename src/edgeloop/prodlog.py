"""Production logging: every prediction and query image goes to the lake.

One writer for the server and for batch scoring:

- `PredictionLog.record()` turns a prediction into a `predictions` row and its
  blobs. The server calls it through the `Spool`; batch scoring calls it
  directly.
- `Spool` is the server's durability: each record is appended to a local file
  and fsync'd (many requests share one fsync: group commit) *before* the
  server answers. A background flusher moves spooled records into Delta; a
  restarted server replays whatever is left. `request_id` is the table's key
  and appends skip stored keys, so a replay never duplicates a row.
- `LakeWriter` batches rows into single Delta commits, by size and by age.

Everything lives under the lake root: the spool is `<lake>/_spool/`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from edgeloop.imaging import encode_png, sha256
from edgeloop.lake import Lake

log = logging.getLogger(__name__)

SOURCES = ("api", "batch")
VERDICTS = ("wrong", "ok")


def new_request_id() -> str:
    return uuid.uuid4().hex


# -- records -------------------------------------------------------------------


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class PredictionEvent:
    """One prediction to log, as the request path knows it.

    The heavy work (PNG encoding, hashing, blob writes) happens later, in
    `to_row`, off the request path. When the query image arrived as PNG,
    `image_png` holds those bytes: they are stored as they are (the image's id
    is their sha256), so nothing is re-encoded.
    """

    request_id: str
    ts: datetime
    model_version: str
    iteration: int
    image: np.ndarray | None  # (H, W, 3) uint8; None when image_png is set
    mask: np.ndarray  # (H, W) uint8
    scores: Mapping[str, float]
    latency_ms: float
    source: str = "api"
    client: str | None = None
    image_png: bytes | None = None

    @classmethod
    def of_query(cls, data: bytes, image: np.ndarray, **fields: Any) -> PredictionEvent:
        """The event of a query that arrived as `data` and decoded to `image`.

        PNG bytes are kept as they came (`image_png`); any other format keeps
        the decoded array. The server and the batch pipeline both log this way.
        """
        png = data.startswith(PNG_SIGNATURE)
        return cls(
            image=None if png else image, image_png=data if png else None, **fields
        )

    def __post_init__(self) -> None:
        if self.image is None and self.image_png is None:
            raise ValueError("a prediction event needs the image or its PNG bytes")
        if self.image_png is not None and not self.image_png.startswith(PNG_SIGNATURE):
            raise ValueError("image_png must hold PNG bytes")

    def to_json(self) -> str:
        """A self-contained spool line (arrays zlib'd + base64'd)."""
        image = (
            {"png": base64.b64encode(self.image_png).decode("ascii")}
            if self.image_png is not None
            else _pack(self.image)
        )
        return json.dumps(
            {
                "request_id": self.request_id,
                "ts": self.ts.isoformat(),
                "model_version": self.model_version,
                "iteration": int(self.iteration),
                "image": image,
                "mask": _pack(self.mask),
                "scores": {k: float(v) for k, v in self.scores.items()},
                "latency_ms": float(self.latency_ms),
                "source": self.source,
                "client": self.client,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> PredictionEvent:
        d = json.loads(line)
        png = d["image"].get("png")
        return cls(
            request_id=d["request_id"],
            ts=datetime.fromisoformat(d["ts"]),
            model_version=d["model_version"],
            iteration=int(d["iteration"]),
            image=None if png is not None else _unpack(d["image"]),
            image_png=None if png is None else base64.b64decode(png),
            mask=_unpack(d["mask"]),
            scores=d["scores"],
            latency_ms=float(d["latency_ms"]),
            source=d["source"],
            client=d.get("client"),
        )

    def to_row(self, lake: Lake, class_names: Iterable[str]) -> dict[str, Any]:
        """Writes the image and mask blobs and returns the `predictions` row."""
        png = self.image_png if self.image_png is not None else encode_png(self.image)
        image_blob = lake.put_blob(png, kind="images")
        mask_blob = lake.put_blob(encode_png(self.mask), kind="predictions")
        ts = self.ts.astimezone(UTC)
        height, width = self.mask.shape  # the mask has the image's size
        return {
            "request_id": self.request_id,
            "ts": ts,
            "date": ts.strftime("%Y-%m-%d"),
            "model_version": self.model_version,
            "iteration": int(self.iteration),
            "image_id": sha256(png),
            "image_blob": image_blob,
            "mask_blob": mask_blob,
            "width": int(width),
            "height": int(height),
            "mean_max_prob": self.scores.get("mean_max_prob"),
            "mean_entropy": self.scores.get("mean_entropy"),
            "mean_margin": self.scores.get("mean_margin"),
            "low_conf_frac": self.scores.get("low_conf_frac"),
            "class_fracs": [
                float(self.scores.get(f"frac:{n}", 0.0)) for n in class_names
            ],
            "latency_ms": float(self.latency_ms),
            "source": self.source,
            "client": self.client,
        }


def _pack(array: np.ndarray) -> dict[str, Any]:
    return {
        "shape": list(array.shape),
        "data": base64.b64encode(zlib.compress(array.tobytes(), 1)).decode("ascii"),
    }


def _unpack(d: Mapping[str, Any]) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(d["data"]))
    return np.frombuffer(raw, dtype=np.uint8).reshape(d["shape"]).copy()


def feedback_row(
    *,
    verdict: str,
    request_id: str | None = None,
    image_id: str | None = None,
    comment: str | None = None,
    tags: Iterable[str] = (),
    client: str | None = None,
    vocabulary: Iterable[str] | None = None,
    ts: datetime | None = None,
) -> dict[str, Any]:
    """A validated `feedback` row.

    Raises:
        ValueError: no request_id/image_id, an unknown verdict, or a tag outside
            the slicing vocabulary (use `other` plus a comment instead).
    """
    if not request_id and not image_id:
        raise ValueError("feedback needs a request_id or an image_id")
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    tags = [str(t) for t in tags]
    if vocabulary is not None:
        allowed = set(vocabulary) | {"other"}
        unknown = sorted(set(tags) - allowed)
        if unknown:
            raise ValueError(
                f"unknown tag(s) {unknown}; allowed: {sorted(allowed)} "
                "(use 'other' and describe it in the comment)"
            )
    return {
        "feedback_id": new_request_id(),
        "request_id": request_id,
        "image_id": image_id,
        "ts": ts or datetime.now(UTC),
        "verdict": verdict,
        "comment": comment,
        "tags": tags,
        "client": client,
    }


# -- the batching writer ---------------------------------------------------------


class LakeWriter:
    """Batches rows for one lake table into single Delta commits.

    Rows are committed when `max_rows` are pending, or when the oldest pending
    row is `max_seconds` old (checked on `add` and by `flush_due`). Thread-safe:
    concurrent `add` calls share commits, and one lock serialises commits.

    Args:
        lake: The lake to write to.
        table: `predictions` or `feedback` (any lake table works).
        max_rows: Commit when this many rows are pending.
        max_seconds: Commit rows older than this.
    """

    def __init__(
        self, lake: Lake, table: str, *, max_rows: int = 512, max_seconds: float = 2.0
    ) -> None:
        self.lake = lake
        self.table = table
        self.max_rows = int(max_rows)
        self.max_seconds = float(max_seconds)
        self.commits = 0
        self.rows_written = 0
        self._pending: list[dict[str, Any]] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for row in rows:
                self._pending.append(dict(row))
                if self._oldest is None:
                    self._oldest = time.monotonic()
            due = len(self._pending) >= self.max_rows
        if due:
            self.flush()
        else:
            self.flush_due()

    def flush_due(self) -> None:
        """Commits pending rows if the oldest is older than `max_seconds`."""
        with self._lock:
            due = (
                self._oldest is not None
                and time.monotonic() - self._oldest >= self.max_seconds
            )
        if due:
            self.flush()

    def flush(self) -> int | None:
        """Commits every pending row now; returns the new Delta version."""
        with self._commit_lock:
            with self._lock:
                rows, self._pending, self._oldest = self._pending, [], None
            if not rows:
                return None
            version = self.lake.append(self.table, pd.DataFrame(rows))
            if version is not None:
                self.commits += 1
            self.rows_written += len(rows)
            return version

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)


# -- the durable spool -----------------------------------------------------------


class Spool:
    """An fsync'd, group-committed append log of JSON lines, in segments.

    `append()` returns once the line is on disk. Lines that arrive while an
    fsync is running are written and synced together by the next one, so many
    concurrent requests cost one fsync. `drain()` hands closed segments to a
    consumer and deletes each one only after the consumer returned: a crash in
    between replays the segment, which the consumer must tolerate (the lake's
    key dedupe does).

    Args:
        directory: Folder of `seg-<n>.jsonl` files (created if missing).
        fsync: Set False only in benchmarks that measure its cost.
    """

    def __init__(self, directory: str | Path, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._cond = threading.Condition()
        # Held while the segment file is written, synced or swapped: the
        # writer thread writes outside `_cond`, and `rotate()` must not close
        # the file under it.
        self._io_lock = threading.Lock()
        # One drain at a time: the server's flusher thread and an explicit
        # `flush()` (tests, shutdown) may both drain; two drainers would feed
        # one segment twice and race to delete it.
        self._drain_lock = threading.Lock()
        self._queue: list[bytes] = []
        self._next_seq = 0
        self._done_seq = 0
        self._error: BaseException | None = None
        self._closed = False
        self.syncs = 0  # group commits done (each one write + fsync)
        existing = sorted(self.directory.glob("seg-*.jsonl"))
        numbers = [self._number(p) for p in existing]
        self._depth = sum(p.read_bytes().count(b"\n") for p in existing)
        self._segment_no = max(numbers, default=0) + 1
        self._fh = open(self._segment_path(self._segment_no), "ab")  # noqa: SIM115
        self._thread = threading.Thread(target=self._run, name="spool", daemon=True)
        self._thread.start()

    @staticmethod
    def _number(path: Path) -> int:
        return int(path.stem.split("-")[1])

    def _segment_path(self, n: int) -> Path:
        return self.directory / f"seg-{n:09d}.jsonl"

    def append(self, line: str) -> None:
        """Appends one line (no newlines inside) and waits until it is durable."""
        if "\n" in line:
            raise ValueError("a spool line must not contain a newline")
        data = line.encode() + b"\n"
        with self._cond:
            if self._closed:
                raise RuntimeError("spool is closed")
            self._next_seq += 1
            seq = self._next_seq
            self._queue.append(data)
            self._depth += 1
            self._cond.notify_all()
            while self._done_seq < seq and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise RuntimeError(f"spool write failed: {self._error}")

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                batch, self._queue = self._queue, []
                last = self._next_seq
            try:
                with self._io_lock:
                    self._fh.write(b"".join(batch))
                    self._fh.flush()
                    if self.fsync:
                        os.fsync(self._fh.fileno())
                self.syncs += 1
            except BaseException as err:  # noqa: BLE001 - reported to every waiter
                with self._cond:
                    self._error = err
                    self._cond.notify_all()
                return
            with self._cond:
                self._done_seq = last
                self._cond.notify_all()

    def rotate(self) -> None:
        """Closes the current segment (so it can be drained) and opens a new one.

        Every acknowledged line is in the closed segment. A batch being written
        finishes first; lines still queued go to the new segment.
        """
        with self._io_lock:
            self._fh.close()
            self._segment_no += 1
            self._fh = open(self._segment_path(self._segment_no), "ab")  # noqa: SIM115

    def closed_segments(self) -> list[Path]:
        current = self._segment_path(self._segment_no)
        return sorted(p for p in self.directory.glob("seg-*.jsonl") if p != current)

    def drain(self, consume: Callable[[list[str]], None]) -> int:
        """Rotates, then feeds each closed segment's lines to `consume`.

        A segment is deleted after `consume` returns. A torn last line (a crash
        mid-write: never acknowledged) is skipped. Concurrent calls run one
        after the other, so each line is consumed once. Returns the lines
        consumed.
        """
        with self._drain_lock:
            self.rotate()
            total = 0
            for path in self.closed_segments():
                data = path.read_bytes()  # closed: nothing writes to it now
                lines = []
                for raw in data.split(b"\n"):
                    if not raw:
                        continue
                    try:
                        text = raw.decode()
                        json.loads(text)
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        log.warning("spool %s: skipping a torn line", path.name)
                        continue
                    lines.append(text)
                if lines:
                    consume(lines)
                n_lines = data.count(b"\n")
                path.unlink()
                with self._cond:
                    self._depth = max(0, self._depth - n_lines)
                total += len(lines)
        return total

    def depth(self) -> int:
        """Lines waiting in closed and current segments (for /metrics)."""
        with self._cond:
            return self._depth

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        with self._io_lock:
            self._fh.close()


class PredictionLog:
    """Logs predictions to the lake: through the spool (server) or directly (batch).

    Args:
        lake: The lake.
        class_names: The model's classes (for `class_fracs`).
        spool: The server's durable spool; None writes straight to the writer.
        max_rows, max_seconds: The `LakeWriter` batching thresholds.
    """

    def __init__(
        self,
        lake: Lake,
        class_names: Iterable[str],
        *,
        spool: Spool | None = None,
        max_rows: int = 512,
        max_seconds: float = 2.0,
    ) -> None:
        self.lake = lake
        self.class_names = list(class_names)
        self.spool = spool
        self.writer = LakeWriter(
            lake, "predictions", max_rows=max_rows, max_seconds=max_seconds
        )

    def record(self, event: PredictionEvent) -> None:
        """Durably records one prediction (spooled, or buffered for a commit)."""
        if self.spool is not None:
            self.spool.append(event.to_json())
        else:
            self.writer.add([event.to_row(self.lake, self.class_names)])

    def flush_spool(self) -> int:
        """Moves spooled predictions into Delta (one commit per batch)."""
        if self.spool is None:
            return 0

        def consume(lines: list[str]) -> None:
            for line in lines:
                event = PredictionEvent.from_json(line)
                self.writer.add([event.to_row(self.lake, self.class_names)])
            self.writer.flush()  # committed before the segment is deleted

        return self.spool.drain(consume)

    def close(self) -> None:
        self.flush_spool()
        self.writer.flush()


# -- queries -------------------------------------------------------------------

SCORE_ORDER = {
    # score -> True when a high value means a doubtful prediction
    "mean_max_prob": False,
    "mean_margin": False,
    "mean_entropy": True,
    "low_conf_frac": True,
}


def predictions_between(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    columns: list[str] | None = None,
    version: int | None = None,
) -> pa.Table:
    """Predictions with start <= ts < end, reading only the dates it spans.

    The filter on the `date` partition column skips whole partitions; the `ts`
    filter then prunes row groups by their statistics.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    dates = pd.date_range(start.date(), end.date(), freq="D").strftime("%Y-%m-%d")
    expr = (
        pc.field("date").isin(list(dates))
        & (pc.field("ts") >= pa.scalar(start, type=pa.timestamp("us", tz="UTC")))
        & (pc.field("ts") < pa.scalar(end, type=pa.timestamp("us", tz="UTC")))
    )
    return lake.dataset("predictions", version=version).to_table(
        columns=columns, filter=expr
    )


def most_doubtful(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    k: int = 100,
    score: str = "mean_max_prob",
    version: int | None = None,
) -> pd.DataFrame:
    """The k most doubtful predictions in [start, end) by an uncertainty score.

    `mean_max_prob` and `mean_margin`: lowest first; `mean_entropy` and
    `low_conf_frac`: highest first.
    """
    if score not in SCORE_ORDER:
        raise ValueError(f"score must be one of {sorted(SCORE_ORDER)}, got {score!r}")
    table = predictions_between(
        lake,
        start,
        end,
        columns=["request_id", "ts", "image_id", "model_version", score],
        version=version,
    )
    order = "descending" if SCORE_ORDER[score] else "ascending"
    idx = pc.select_k_unstable(
        table, k=min(k, table.num_rows), sort_keys=[(score, order)]
    )
    top = table.take(idx).to_pandas()
    return top.sort_values(score, ascending=order == "ascending", kind="stable")
