"""Batch scoring: the same predictor and lake writer the server uses."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from edgeloop.imaging import ImageDecodeError, decode_image, sha256
from edgeloop.lake import Lake
from edgeloop.prodlog import PredictionEvent, PredictionLog
from edgeloop.progress import tqdm
from edgeloop.registry import load_model, promoted_row

log = logging.getLogger(__name__)


def _list_images(root: Path) -> list[tuple[Path, datetime | None]]:
    """Images under `root/images` (or `root`), with `captured_at` if known."""
    folder = root / "images" if (root / "images").is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(
            f"production.source.root {str(root)!r} is not a folder of images"
        )
    captured: dict[str, datetime] = {}
    meta = root / "metadata.jsonl"
    if meta.is_file():
        for line in meta.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("captured_at"):
                    ts = pd.Timestamp(rec["captured_at"])
                    ts = ts.tz_localize(UTC) if ts.tzinfo is None else ts
                    captured[str(rec["stem"])] = ts.to_pydatetime()
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
    )
    return [(p, captured.get(p.stem)) for p in files]


def score_images(
    lake: Lake, models: pd.DataFrame, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Scores a folder of images with the promoted model and logs every prediction.

    The timestamps are the images' `captured_at` (the synthetic stream spans
    days), else now. Request ids derive from the model version and the image
    bytes, so re-running the same batch adds nothing.

    Args:
        lake: The lake.
        models: The `models` table (its latest promoted row is the model).
        params: `production`: source.root, batch_size, limit, client,
            writer.max_rows.
    """
    source = params.get("source") or {}
    root = Path(source.get("root", "data/01_raw/synthetic/stream"))
    row = promoted_row(models)
    if row is None:
        raise ValueError(
            "no promoted model in the registry: run the train_iteration pipeline "
            "first (`kedro run` runs everything)"
        )
    model = load_model(lake, row)
    version = model.version
    predictor = model.predictor(batch_size=int(params.get("batch_size", 16)))
    items = _list_images(root)
    if params.get("limit"):
        items = items[: int(params["limit"])]
    if not items:
        raise ValueError(f"no images to score under {root}")
    plog = PredictionLog(
        lake,
        predictor.class_names,
        max_rows=int((params.get("writer") or {}).get("max_rows", 512)),
        max_seconds=float((params.get("writer") or {}).get("max_seconds", 30.0)),
    )
    now = datetime.now(UTC)
    batch_size = predictor.batch_size
    skipped, start_all = [], time.perf_counter()
    version_before = lake.version("predictions")
    for start in tqdm(range(0, len(items), batch_size), desc="scoring", unit="batch"):
        chunk = items[start : start + batch_size]
        images, kept = [], []
        for path, ts in chunk:
            data = path.read_bytes()
            try:
                images.append(decode_image(data))
            except ImageDecodeError as err:
                skipped.append({"path": str(path), "reason": str(err)})
                continue
            kept.append((path, ts, data))
        if not images:
            continue
        t0 = time.perf_counter()
        preds = predictor.predict(images)
        per_image_ms = (time.perf_counter() - t0) * 1000 / len(images)
        for (_path, ts, data), image, pred in zip(kept, images, preds, strict=True):
            plog.record(
                PredictionEvent.of_query(
                    data,
                    image,
                    request_id="batch-"
                    + sha256(f"{version}:{sha256(data)}".encode())[:32],
                    ts=ts or now,
                    model_version=version,
                    iteration=int(row["iteration"]),
                    mask=pred.mask,
                    scores=pred.scores,
                    latency_ms=per_image_ms,
                    source="batch",
                    client=str(params.get("client", "batch")),
                )
            )
    plog.close()
    seconds = time.perf_counter() - start_all
    report = {
        "model_version": model.version,
        "source_root": str(root),
        "images": len(items),
        "scored": len(items) - len(skipped),
        "skipped": skipped,
        "rows_written": plog.writer.rows_written,
        "delta_commits": plog.writer.commits,
        "predictions_version_before": version_before,
        "predictions_version_after": lake.version("predictions"),
        "images_per_second": round((len(items) - len(skipped)) / seconds, 1),
    }
    log.info(
        "scored %d images with %s: %d rows in %d Delta commit(s), %.1f images/s",
        report["scored"],
        model.version,
        report["rows_written"],
        report["delta_commits"],
        report["images_per_second"],
    )
    return report
