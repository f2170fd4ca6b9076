"""Review nodes: read one period and Delta version of the lake, pick, explain."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from edgeloop.classmap import ClassMap
from edgeloop.imaging import decode_mask
from edgeloop.labelstudio import collect_exports, local_files_url, push_if_enabled
from edgeloop.lake import BLOB_DIR, Lake
from edgeloop.prodlog import predictions_between
from edgeloop.review import (
    CLUSTER_COLUMN,
    ReviewConfig,
    build_review_queue,
    health_figure,
    model_health,
    summary,
    with_context,
)
from edgeloop.review_tasks import (
    QUARANTINE_COLUMNS,
    VERDICT_COLUMNS,
    ReviewImportError,
    parse_review_export,
    review_labeling_config,
    review_tasks,
    update_edge_cases,
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
    lake: Lake,
    params: Mapping[str, Any],
    novelty: pd.DataFrame,
    clusters: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame, Figure]:
    """The review queue, its summary and the model-health table and plot.

    Args:
        lake: The lake.
        params: `review`: `sampling` (see `edgeloop.review.ReviewConfig`) and
            `period` (`start`, `end`: ISO times, empty for open;
            `predictions_version`: a Delta version, empty for the latest).
        novelty: The similarity context's `novelty_scores` (image_id, novelty).
        clusters: Its `clusters`; the top level caps confidence picks per
            cluster (`review.sampling.cluster_cap`).

    Raises:
        ValueError: `confidence_score: novelty` while no prediction of the
            period has a novelty score.
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
    verdicts = lake.read("review_verdicts")
    preds = with_context(preds, novelty, clusters)
    if (
        config.confidence_score == "novelty"
        and len(preds)
        and preds["novelty"].isna().all()
    ):
        raise ValueError(
            "review.sampling.confidence_score is novelty, but no prediction in the "
            "period has a novelty score: run the similarity context first "
            "(`kedro run --pipelines review` does), or choose a predictor score "
            "such as mean_max_prob"
        )
    sample_from, flagged = preds, feedback
    if config.skip_reviewed and len(verdicts):
        sample_from = preds[~preds["request_id"].isin(verdicts["request_id"])]
        flagged = feedback[~feedback["request_id"].isin(verdicts["request_id"])]
    queue = build_review_queue(sample_from, flagged, config)
    health = model_health(preds, verdicts)
    info = {
        **summary(queue),
        "predictions": len(preds),
        "already_reviewed": len(preds) - len(sample_from),
        "with_novelty": int(preds["novelty"].notna().sum()),
        "with_cluster": int(preds[CLUSTER_COLUMN].notna().sum())
        if CLUSTER_COLUMN in preds.columns
        else 0,
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


# -- Label Studio round trip: review tasks out, verdicts in -----------------------


def import_review_verdicts(
    lake: Lake,
    review: Mapping[str, Any],
    slicing: Mapping[str, Any],
    iteration: int,
) -> tuple[dict[str, Any], pd.DataFrame, Lake]:
    """Reads every Label Studio review export in `review.import.exports_dir`,
    and the project's own export with `review.import.from_label_studio.enabled`.

    Every file is parsed and checked before anything is written: a malicious
    file (path traversal, absolute paths, URLs outside the allowed prefixes,
    oversize) fails the run and nothing is stored. Bad tasks go to the
    quarantine with a reason; the good verdicts go to `review_verdicts` in one
    commit, and `bug` verdicts open or extend bugs in `edge_cases`. Re-importing
    the same exports adds nothing.

    Returns:
        (report, quarantine, lake): the lake once verdicts and bugs are in.
    """
    settings = review.get("import") or {}
    folder = Path(settings.get("exports_dir", "data/01_raw/review_exports"))
    prefixes = settings.get("allowed_url_prefixes") or [
        (review.get("tasks") or {}).get("url_prefix", "/data/local-files/?d=")
    ]
    vocabulary = list(slicing.get("condition_tags") or [])
    exports = collect_exports(
        folder,
        settings.get("from_label_studio"),
        default_title="edgeloop review",
        setting="review.import.exports_dir",
    )
    parsed, quarantined = [], []
    for source, raw in exports:
        try:
            verdicts, quarantine = parse_review_export(
                raw,
                vocabulary=vocabulary,
                allowed_url_prefixes=prefixes,
            )
        except ReviewImportError as err:
            raise ReviewImportError(
                f"{source}: rejected whole, nothing imported: {err}"
            ) from err
        parsed.append(verdicts)
        quarantined.append(quarantine.assign(file=source))
    verdicts = (
        pd.concat(parsed, ignore_index=True)
        if parsed
        else pd.DataFrame(columns=VERDICT_COLUMNS)
    )
    quarantine = (
        pd.concat(quarantined, ignore_index=True)
        if quarantined
        else pd.DataFrame(columns=[*QUARANTINE_COLUMNS, "file"])
    )
    verdicts_version = (
        lake.append("review_verdicts", verdicts) if len(verdicts) else None
    )
    events = update_edge_cases(
        lake.read("edge_cases"),
        lake.read("review_verdicts"),
        iteration=int(iteration),
        now=datetime.now(UTC),
    )
    bugs_version = lake.append("edge_cases", events) if len(events) else None
    report = {
        "exports_dir": str(folder),
        "sources": [source for source, _ in exports],
        "verdicts": len(verdicts),
        "bugs_flagged": int((verdicts["verdict"] == "bug").sum())
        if len(verdicts)
        else 0,
        "quarantined": len(quarantine),
        "review_verdicts_version": verdicts_version,
        "bug_events": len(events),
        "new_bugs": sorted(events.loc[events["status"] == "open", "bug_id"].unique()),
        "edge_cases_version": bugs_version,
    }
    if exports:
        log.info(
            "imported %d review verdict(s) from %d export(s) (%d quarantined); "
            "%d bug event(s)",
            len(verdicts),
            len(exports),
            len(quarantine),
            len(events),
        )
    else:
        log.info("no review exports under %s: nothing to import", folder)
    return report, quarantine, lake


def _url(blob: str, lake: Lake, document_root: Path, prefix: str) -> str:
    """The Label Studio local-files URL of a lake blob (relative to its root)."""
    return local_files_url(Path(lake.root) / blob, document_root, prefix)


def export_review_tasks(
    lake: Lake,
    queue: pd.DataFrame,
    review: Mapping[str, Any],
    classes: Mapping[str, Any],
    slicing: Mapping[str, Any],
) -> tuple[list[dict], str, dict[str, Any]]:
    """The review queue as Label Studio tasks, plus the labeling config XML.

    Images are served by Label Studio's local-files storage: start it with
    `LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true` and
    `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<review.tasks.document_root>`.
    With `review.push.enabled` the tasks also go straight to a running Label
    Studio (URL and token from `conf/local/credentials.yml`, `label_studio:`).

    Returns:
        (tasks, labeling config XML, push report).
    """
    cm = ClassMap.from_params(classes)
    config = review_labeling_config(
        cm.names, cm.palette, list(slicing.get("condition_tags") or [])
    )
    tasks = [] if queue.empty else _queue_tasks(lake, queue, cm, review)
    report = push_if_enabled(
        review.get("push"),
        default_title="edgeloop review",
        label_config=config,
        tasks=tasks,
        local_files_dir=Path(lake.root) / BLOB_DIR,
    )
    log.info("exported %d review task(s) for Label Studio", len(tasks))
    return tasks, config, report


def _queue_tasks(
    lake: Lake, queue: pd.DataFrame, cm: ClassMap, review: Mapping[str, Any]
) -> list[dict]:
    """One review task per queue item, with its predicted mask."""
    settings = review.get("tasks") or {}
    prefix = settings.get("url_prefix", "/data/local-files/?d=")
    root = Path(settings.get("document_root", "."))
    preds = lake.read(
        "predictions",
        columns=[
            "request_id",
            "image_blob",
            "mask_blob",
            "model_version",
            "mean_max_prob",
        ],
    ).drop_duplicates("request_id")
    rows = queue.merge(preds, on="request_id", how="left")
    lost = rows.loc[rows["image_blob"].isna(), "request_id"].tolist()
    if lost:
        raise ValueError(
            f"{len(lost)} review-queue request(s) are not in the predictions table, "
            f"e.g. {lost[:3]}"
        )
    masks = {
        r.request_id: decode_mask(lake.get_blob(r.mask_blob)) for r in rows.itertuples()
    }
    urls = {
        r.request_id: _url(r.image_blob, lake, root, prefix) for r in rows.itertuples()
    }
    scores = dict(zip(rows["request_id"], rows["mean_max_prob"], strict=True))
    versions = sorted(rows["model_version"].unique())
    return review_tasks(
        queue,
        masks,
        image_urls=urls,
        class_names=cm.names,
        class_ids=cm.ids,
        model_version=versions[-1] if len(versions) == 1 else ",".join(versions),
        scores=scores,
    )
