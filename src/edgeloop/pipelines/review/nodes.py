"""Review nodes: read one period and Delta version of the lake, pick, explain."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from edgeloop.lake import Lake
from edgeloop.prodlog import predictions_between
from edgeloop.review import (
    ReviewConfig,
    build_review_queue,
    health_figure,
    model_health,
    summary,
)

log = logging.getLogger(__name__)


def _period(params: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    bounds = []
    for key in ("start", "end"):
        value = params.get(key)
        if value in (None, ""):
            bounds.append(None)
            continue
        try:
            ts = pd.Timestamp(value)
        except ValueError as err:
            raise ValueError(
                f"review.period.{key}: not a timestamp: {value!r}"
            ) from err
        bounds.append(
            (ts.tz_localize("UTC") if ts.tzinfo is None else ts).to_pydatetime()
        )
    if bounds[0] and bounds[1] and bounds[0] >= bounds[1]:
        raise ValueError(
            f"review.period: start {bounds[0]} is not before end {bounds[1]}"
        )
    return bounds[0], bounds[1]


def build_review(
    lake: Lake, params: Mapping[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame, Figure]:
    """The review queue, its summary and the model-health table and plot.

    Args:
        lake: The lake.
        params: `review`: `sampling` (see `edgeloop.review.ReviewConfig`) and
            `period` (`start`, `end`: ISO times, empty for open;
            `predictions_version`: a Delta version, empty for the latest).
    """
    config = ReviewConfig.from_params(params.get("sampling") or {})
    period = params.get("period") or {}
    start, end = _period(period)
    version = period.get("predictions_version")
    version = None if version in (None, "", "latest") else int(version)
    if lake.version("predictions") is None:
        log.warning("the lake has no predictions yet: the review queue is empty")
        preds = lake.read("predictions")
    elif start is not None and end is not None:
        preds = predictions_between(lake, start, end, version=version).to_pandas()
    else:
        preds = lake.read("predictions", version=version)
        if start is not None:
            preds = preds[preds["ts"] >= pd.Timestamp(start)]
        if end is not None:
            preds = preds[preds["ts"] < pd.Timestamp(end)]
    seen_version = lake.reads.get("predictions", -1)
    feedback = lake.read("feedback")
    # Feedback received in the period, or about a prediction in it.
    received = pd.Series(True, index=feedback.index)
    if start is not None:
        received &= feedback["ts"] >= pd.Timestamp(start)
    if end is not None:
        received &= feedback["ts"] < pd.Timestamp(end)
    feedback = feedback[received | feedback["request_id"].isin(preds["request_id"])]
    queue = build_review_queue(preds, feedback, config)
    health = model_health(preds)
    info = {
        **summary(queue),
        "predictions": len(preds),
        "predictions_version": seen_version,
        "feedback_version": feedback.attrs.get("delta_version"),
        "period": {
            "start": start.isoformat() if start else None,
            "end": end.isoformat() if end else None,
        },
        "sampling": {k: v for k, v in (params.get("sampling") or {}).items()},
    }
    log.info(
        "review queue: %d items from %d predictions (%s)",
        len(queue),
        len(preds),
        ", ".join(f"{k} {v}" for k, v in info["per_reason"].items()),
    )
    return queue, info, health, health_figure(health)
