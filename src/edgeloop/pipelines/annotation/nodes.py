"""Annotation nodes: Label Studio tasks out, corrected labels back in."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeloop import labelstudio
from edgeloop.annotation import (
    ExportRejected,
    annotation_tasks,
    generic_labels,
    labeling_config,
    parse_annotation_export,
)
from edgeloop.classmap import ClassMap
from edgeloop.features import image_features
from edgeloop.imaging import decode_image, encode_png
from edgeloop.lake import (
    BLOB_DIR,
    ImageRecord,
    LabelRecord,
    LabelRegistry,
    Lake,
    add_images,
    blob_uri,
)
from edgeloop.pipelines.pseudo_labelling.nodes import prelabels_from_frame
from edgeloop.pseudo import SEGMENT_LABEL, generic_members
from edgeloop.review_tasks import advance_status, current_bugs

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["source", "task_id", "reason"]


def export_annotation_tasks(
    lake: Lake,
    queue: pd.DataFrame,
    prelabels: pd.DataFrame,
    annotation: Mapping[str, Any],
    pseudo_labelling: Mapping[str, Any],
    classes: Mapping[str, Any],
) -> tuple[list[dict], str, dict[str, Any]]:
    """The labeling queue as Label Studio tasks with pre-annotations.

    Images are served by Label Studio's local-files storage (see the README).
    With `annotation.push: true` the tasks also go straight to a running Label
    Studio (URL and token from `conf/local/credentials.yml`, `label_studio:`).

    Returns:
        (tasks, labeling config XML, push report).
    """
    settings = annotation.get("tasks") or {}
    prefix = settings.get("url_prefix", "/data/local-files/?d=")
    root = Path(settings.get("document_root", "."))
    cm = ClassMap.from_params(classes)
    pres = prelabels_from_frame(prelabels)
    generics = sorted(
        set(generic_labels([p for ps in pres.values() for p, _ in ps], cm))
        | set(generic_members(pseudo_labelling.get("off_the_shelf") or {}))
        | {SEGMENT_LABEL}
    )
    config = labeling_config(cm.names, cm.palette, generic_labels=generics)
    urls = {
        r.image_id: labelstudio.local_files_url(
            Path(lake.root) / r.image_blob, root, prefix
        )
        for r in queue.itertuples()
    }
    tasks = annotation_tasks(queue, pres, image_urls=urls)
    report = labelstudio.push_if_enabled(
        annotation.get("push"),
        default_title="edgeloop labeling",
        label_config=config,
        tasks=tasks,
        local_files_dir=Path(lake.root) / BLOB_DIR,
    )
    log.info("exported %d labeling task(s) for Label Studio", len(tasks))
    return tasks, config, report


def _exports(settings: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(source, bytes) of every export to import: the files, then Label Studio."""
    return labelstudio.collect_exports(
        settings.get("exports_dir", "data/01_raw/annotation_exports"),
        settings.get("from_label_studio"),
        default_title="edgeloop labeling",
        setting="annotation.import.exports_dir",
    )


def _candidate_images(lake: Lake, images: pd.DataFrame) -> pd.DataFrame:
    """Every image a label may be for: the images table, then logged predictions."""
    known = images[["image_id", "width", "height"]].assign(image_blob=None, ts=None)
    if lake.version("predictions") is None:
        return known.assign(source=None)
    preds = lake.read(
        "predictions",
        columns=["image_id", "image_blob", "width", "height", "ts", "source"],
    ).drop_duplicates("image_id")
    preds = preds[~preds["image_id"].isin(known["image_id"])]
    return pd.concat([known.assign(source=None), preds], ignore_index=True)


def _not_yet_imported(
    got: pd.DataFrame, labels: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """Drops annotations an earlier run already imported.

    Exports stay in the exports folder, so the next iteration reads them again:
    a human label of the same image, with the same mask and annotator, is
    already in the registry (with the iteration it was first imported in) and
    is not added again as this iteration's label.
    Adds `mask_png` (each mask encoded once; the registry stores these bytes).
    """
    got = got.assign(
        mask_png=[encode_png(np.asarray(m, dtype=np.uint8)) for m in got["mask"]]
    )
    if got.empty or labels is None or labels.empty:
        return got, 0
    human = labels[labels["origin"] == "human"]
    known = set(
        zip(human["image_id"], human["mask_blob"], human["annotator"], strict=True)
    )
    keep = [
        (r.image_id, blob_uri(r.mask_png, kind="masks"), str(r.annotator)) not in known
        for r in got.itertuples()
    ]
    return got[keep], int(len(keep) - sum(keep))


def import_annotations(
    lake: Lake,
    images: pd.DataFrame,
    labels: pd.DataFrame,
    edge_cases: pd.DataFrame,
    annotation: Mapping[str, Any],
    classes: Mapping[str, Any],
    iteration: int,
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Imports people's masks from Label Studio exports as iteration-k labels.

    Every export is parsed and checked before anything is written; a malicious
    one fails the run and nothing is stored. Bad tasks go to the quarantine;
    the good labels enter through `LabelRegistry.append()` in one commit (origin
    human, this iteration, the annotator from the export). A production image
    gets its `images` row first. Labelled images advance their bugs from
    candidates to labelled. Re-importing the same exports adds nothing.

    Returns:
        (report, quarantine, images, labels, edge_cases): the tables as the rest
        of the iteration should see them (re-read only when this wrote them, so
        pinned Delta versions stay pinned otherwise).
    """
    settings = annotation.get("import") or {}
    prefixes = settings.get("allowed_url_prefixes") or [
        (annotation.get("tasks") or {}).get("url_prefix", "/data/local-files/?d=")
    ]
    cm = ClassMap.from_params(classes)
    exports = _exports(settings)
    report: dict[str, Any] = {
        "sources": [s for s, _ in exports],
        "labels": 0,
        "quarantined": 0,
        "images_added": 0,
        "labels_version": None,
        "bugs_labelled": [],
        "effort": {},
    }
    if not exports:
        log.info("no annotation exports to import")
        empty = pd.DataFrame(columns=QUARANTINE_COLUMNS)
        return report, empty, images, labels, edge_cases
    candidates = _candidate_images(lake, images)
    sizes = {r.image_id: (int(r.height), int(r.width)) for r in candidates.itertuples()}
    parsed, bad = [], []
    for source, data in exports:
        try:
            got, quarantine = parse_annotation_export(
                data,
                class_map=cm,
                sizes=sizes,
                allowed_url_prefixes=prefixes,
                unlabeled=str(settings.get("unlabeled", "void")),
            )
        except ExportRejected as err:
            raise ExportRejected(
                f"{source}: rejected whole, nothing imported: {err}"
            ) from err
        parsed.append(got.assign(source=source))
        bad.append(quarantine.assign(source=source))
    got = pd.concat(parsed, ignore_index=True)
    quarantine = pd.concat(bad, ignore_index=True)[QUARANTINE_COLUMNS]
    # One label per image: the latest annotation across all exports.
    got = got.sort_values(["ts", "task_id"], kind="stable").drop_duplicates(
        "image_id", keep="last"
    )
    got, already = _not_yet_imported(got, labels)
    new_images = candidates[
        candidates["image_id"].isin(got["image_id"])
        & ~candidates["image_id"].isin(images["image_id"])
    ]
    records = []
    for r in new_images.itertuples():
        png = lake.get_blob(r.image_blob)
        records.append(
            ImageRecord(
                png=png,
                width=int(r.width),
                height=int(r.height),
                source=str(r.source or "production"),
                source_path=str(r.image_blob),
                features=image_features(decode_image(png)),
                captured_at=pd.Timestamp(r.ts).to_pydatetime(),
            )
        )
    images_version = add_images(lake, records) if records else None
    registry = LabelRegistry(lake, cm, tuple(classes.get("object_classes") or ()))
    labels_version = registry.append(
        LabelRecord(
            image_id=r.image_id,
            mask=np.asarray(r.mask, dtype=np.uint8),
            origin="human",
            iteration=int(iteration),
            annotator=str(r.annotator),
            mask_png=r.mask_png,
        )
        for r in got.itertuples()
    )
    bugs = current_bugs(edge_cases) if len(edge_cases) else edge_cases
    moved = []
    events = []
    for bug_id in sorted({b for ids in got["bug_ids"] for b in ids}):
        row = bugs[bugs["bug_id"] == bug_id] if len(bugs) else bugs
        if len(row) and row.iloc[0]["status"] == "candidates":
            events.append(
                advance_status(
                    edge_cases,
                    bug_id,
                    "labelled",
                    iteration=int(iteration),
                    now=datetime.now(UTC),
                )
            )
            moved.append(bug_id)
    bugs_version = (
        lake.append("edge_cases", pd.concat(events, ignore_index=True))
        if events
        else None
    )
    measured = got.dropna(subset=["pre_iou"])
    report |= {
        "labels": int(len(got)),
        "already_imported": already,
        "quarantined": int(len(quarantine)),
        "images_added": len(records),
        "images_version": images_version,
        "labels_version": labels_version,
        "bugs_labelled": moved,
        "edge_cases_version": bugs_version,
        "annotators": sorted(got["annotator"].unique().tolist()),
        "effort": {
            m: {
                "n": int(len(g)),
                "mean_iou": float(g["pre_iou"].mean()),
                "mean_changed_frac": float(g["pre_changed_frac"].mean()),
            }
            for m, g in measured.groupby(measured["started_from"].fillna("unknown"))
        },
    }
    log.info(
        "imported %d label(s) from %d export(s) (%d quarantined, %d image(s) added)",
        len(got),
        len(exports),
        len(quarantine),
        len(records),
    )
    if images_version is not None:
        images = lake.read("images")
    if labels_version is not None:
        labels = lake.read("labels")
    if bugs_version is not None:
        edge_cases = lake.read("edge_cases")
    return report, quarantine, images, labels, edge_cases
