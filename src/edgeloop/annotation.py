"""Mask labeling in Label Studio: tasks with pre-annotations out, labels back in.

- `labeling_config`: a BrushLabels config for the class map (plus the generic
  brushes a pre-annotation may use, which must be resolved before submitting).
- `annotation_tasks`: one task per queued image, one prediction per
  pre-annotation method, each with its `score` (quality); the doubtful first.
- `parse_annotation_export`: a Label Studio JSON export back into label maps.
  Bad tasks are set aside with a reason; a malicious file raises
  `ExportRejected` and nothing is returned.
- `effort`: how much of a pre-annotation the person had to change.

Overlap rule: Label Studio lets brush strokes of different labels overlap. A
pixel painted with several labels takes the label whose region is smallest
(the more specific stroke, e.g. an aircraft painted over the background);
equal sizes go to the later result in the annotation. Pixels nobody painted
become `unlabeled` (void, 255, by default; or background).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from edgeloop import lsrle
from edgeloop.classmap import ClassMap
from edgeloop.labelstudio import (
    ExportRejected,
    TaskSetAside,
    brush_results,
    check_image_url,
    check_names,
    class_brush,
    load_export,
    submitted_annotation,
    task_rows,
)
from edgeloop.pseudo import PreLabel

__all__ = [
    "IMAGE",
    "LABEL_COLUMNS",
    "MASK",
    "ExportRejected",
    "annotation_tasks",
    "effort",
    "generic_labels",
    "labeling_config",
    "parse_annotation_export",
    "prediction_mask",
]

IMAGE, MASK = "image", "mask"
UNLABELED_RULES = ("void", "background")
LABEL_COLUMNS = [
    "task_id",
    "annotation_id",
    "image_id",
    "annotator",
    "ts",
    "started_from",
    "bug_ids",
    "mask",
    "pre_iou",
    "pre_changed_frac",
]
_GENERIC_COLOUR = "#9e9e9e"


def labeling_config(
    class_names: Sequence[str],
    palette: Sequence[Sequence[int] | str],
    *,
    generic_labels: Sequence[str] = (),
) -> str:
    """The Label Studio labeling config (XML) for painting masks.

    One BrushLabels control `mask` with a label per class, then the generic
    brushes (grey; e.g. `aeroplane?` and `segment?`) that pre-annotations use
    and the annotator must replace by a real class.
    """
    generic = check_names(generic_labels, name="generic_labels")
    view = ET.Element("View")
    ET.SubElement(
        view,
        "Header",
        value="Correct the mask. Replace every grey (?) region by a class.",
    )
    ET.SubElement(view, "Text", name="reason", value="$reason")
    ET.SubElement(view, "Image", name=IMAGE, value="$image", zoom="true")
    brush = class_brush(view, class_names, palette, name=MASK, to_name=IMAGE)
    clash = sorted(set(generic) & set(class_names))
    if clash:
        raise ValueError(f"generic labels {clash} clash with class names")
    for label in generic:
        ET.SubElement(brush, "Label", value=label, background=_GENERIC_COLOUR)
    ET.indent(view)
    xml = ET.tostring(view, encoding="unicode")
    ET.fromstring(xml)
    return xml


def annotation_tasks(
    queue: pd.DataFrame,
    prelabels: Mapping[str, Sequence[tuple[PreLabel, float]]],
    *,
    image_urls: Mapping[str, str],
    model_versions: Mapping[str, str] | None = None,
) -> list[dict]:
    """Label Studio tasks for the labeling queue, doubtful pre-annotations first.

    Args:
        queue: The labeling queue (image_id, reason, bug_id, detail, ...).
        prelabels: image_id -> [(pre-annotation, quality)], one per method.
        image_urls: image_id -> the URL Label Studio loads the image from.
        model_versions: method -> the version shown in Label Studio.

    Returns:
        Tasks with `data` (image, image_id, reason, detail, bug_ids) and one
        prediction per method (`model_version` = method[:version], `score` =
        quality); tasks are ordered by their best quality, lowest first.
    """
    missing = [i for i in queue["image_id"] if i not in image_urls]
    if missing:
        raise ValueError(
            f"image_urls lacks {len(missing)} image(s), e.g. {missing[:3]}"
        )
    versions = dict(model_versions or {})
    tasks = []
    for row in queue.itertuples(index=False):
        pres = list(prelabels.get(row.image_id, ()))
        predictions = []
        for pre, score in sorted(pres, key=lambda p: -p[1]):
            values = [i for i in range(len(pre.labels))]
            result = brush_results(
                pre.mask,
                values,
                list(pre.labels),
                region_prefix=f"{row.image_id}:{pre.method}",
                from_name=MASK,
                to_name=IMAGE,
            )
            version = versions.get(pre.method)
            predictions.append(
                {
                    "model_version": pre.method + (f":{version}" if version else ""),
                    "score": round(float(score), 4),
                    "result": result,
                }
            )
        detail = getattr(row, "detail", None)
        detail = detail if isinstance(detail, str) else ""
        reason = str(row.reason)
        # Only a bug's own image or KNN candidate carries its bug's id.
        bug_id = getattr(row, "bug_id", None)
        bug_ids = bug_id if isinstance(bug_id, str) else ""
        tasks.append(
            {
                "data": {
                    IMAGE: image_urls[row.image_id],
                    "image_id": str(row.image_id),
                    "reason": reason + (f" ({detail})" if detail else ""),
                    "bug_ids": bug_ids,
                },
                "predictions": predictions,
            }
        )
    best = [max((p["score"] for p in t["predictions"]), default=0.0) for t in tasks]
    order = np.argsort(best, kind="stable")
    return [tasks[i] for i in order]


# -- import ------------------------------------------------------------------------


def _brush_items(result: list) -> list[dict]:
    return [
        r
        for r in result
        if isinstance(r, dict)
        and r.get("type") == "brushlabels"
        and isinstance(r.get("value"), dict)
    ]


def _check_rle_headers(task: dict, max_pixels: int) -> None:
    """Raises ExportRejected for an RLE header claiming more than `max_pixels`."""
    for ann in task.get("annotations", []):
        if not isinstance(ann, dict) or not isinstance(ann.get("result"), list):
            continue
        for item in _brush_items(ann["result"]):
            rle = item["value"].get("rle")
            if not isinstance(rle, list):
                continue
            try:
                declared = lsrle.declared_pixels(rle)
            except lsrle.RleError:
                continue  # malformed, not oversize: quarantined later
            if declared > max_pixels:
                raise ExportRejected(
                    f"task {task['id']}: an RLE header declares {declared} pixels, "
                    f"more than the limit of {max_pixels}"
                )


def _overlay(
    regions: list[tuple[int, np.ndarray]], shape: tuple[int, int], unlabeled: int
) -> np.ndarray:
    """The overlap rule: smallest region wins, ties go to the later result."""
    out = np.full(shape, unlabeled, dtype=np.uint8)
    order = sorted(range(len(regions)), key=lambda i: (-int(regions[i][1].sum()), i))
    for i in order:  # largest first, so smaller (and later) strokes paint over
        class_id, region = regions[i]
        out[region] = class_id
    return out


def _label_row(
    task: dict,
    *,
    class_map: ClassMap,
    sizes: Mapping[str, tuple[int, int]],
    unlabeled: int,
    max_pixels: int,
) -> dict:
    """One label row for a task; `TaskSetAside` says why a task cannot give one."""
    data = task["data"]
    image_id = data.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise TaskSetAside("data.image_id is missing or empty")
    if IMAGE not in data:
        raise TaskSetAside("data.image is missing")
    if image_id not in sizes:
        raise TaskSetAside(f"image {image_id[:12]}… is not in the lake (missing image)")
    ann = submitted_annotation(task)
    ann_id = ann.id
    h, w = sizes[image_id]
    regions = []
    for item in _brush_items(ann.result):
        value = item["value"]
        labels = value.get("brushlabels")
        if not isinstance(labels, list) or len(labels) != 1:
            raise TaskSetAside(f"annotation {ann_id}: a region needs exactly one label")
        label = labels[0]
        if label not in class_map.names:
            kind = "generic" if str(label).endswith("?") else "unknown"
            raise TaskSetAside(
                f"annotation {ann_id}: {kind} label {label!r} "
                f"(valid: {list(class_map.names)})"
            )
        if value.get("format", "rle") != "rle" or not isinstance(
            value.get("rle"), list
        ):
            raise TaskSetAside(f"annotation {ann_id}: region is not a brush RLE")
        ow, oh = item.get("original_width"), item.get("original_height")
        if (ow, oh) != (w, h):
            raise TaskSetAside(
                f"annotation {ann_id}: size mismatch, region is {ow}x{oh} but the "
                f"image is {w}x{h}"
            )
        try:
            region = lsrle.decode(value["rle"], h, w, max_pixels=max_pixels)
        except lsrle.RleError as err:
            raise TaskSetAside(f"annotation {ann_id}: bad RLE: {err}") from err
        regions.append((class_map.id_of(label), region))
    if not regions:
        raise TaskSetAside(f"annotation {ann_id}: no brush regions (empty mask)")
    final = _overlay(regions, (h, w), unlabeled)
    prediction = ann.raw.get("prediction")
    started, measured = "", {"iou": None, "changed_frac": None}
    if isinstance(prediction, dict):
        started = str(prediction.get("model_version") or "").split(":", 1)[0]
        pre = prediction_mask(prediction, class_map, h, w, max_pixels)
        if pre is not None:
            measured = effort(pre, final, ignore_index=class_map.ignore_index)
    bug_ids = [b for b in str(data.get("bug_ids") or "").split(",") if b]
    return {
        "task_id": int(task["id"]),
        "annotation_id": ann_id,
        "image_id": image_id,
        "annotator": ann.by,
        "ts": ann.ts,
        "started_from": started or None,
        "bug_ids": bug_ids,
        "mask": final,
        "pre_iou": measured["iou"],
        "pre_changed_frac": measured["changed_frac"],
    }


def prediction_mask(
    prediction: dict,
    class_map: ClassMap,
    h: int,
    w: int,
    max_pixels: int = 50_000_000,
) -> np.ndarray | None:
    """A Label Studio prediction's brush regions as one label map (class ids).

    Used for the pre-annotation an annotation started from, and by the
    simulated reviewer to read a review task's predicted mask.

    Generic and unknown labels stay ignore; None when it cannot be read (then
    no effort is measured for that task, and the label still lands).
    """
    result = prediction.get("result")
    if not isinstance(result, list):
        return None
    regions = []
    for item in _brush_items(result):
        labels = item["value"].get("brushlabels")
        if not isinstance(labels, list) or len(labels) != 1:
            return None
        if (item.get("original_width"), item.get("original_height")) != (w, h):
            return None
        try:
            region = lsrle.decode(item["value"].get("rle"), h, w, max_pixels=max_pixels)
        except (lsrle.RleError, TypeError):
            return None
        cid = (
            class_map.id_of(labels[0])
            if labels[0] in class_map.names
            else class_map.ignore_index
        )
        regions.append((cid, region))
    return _overlay(regions, (h, w), class_map.ignore_index)


def parse_annotation_export(
    export: list[dict] | str | bytes,
    *,
    class_map: ClassMap,
    sizes: Mapping[str, tuple[int, int]],
    allowed_url_prefixes: Sequence[str],
    unlabeled: str = "void",
    max_pixels: int = 50_000_000,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label maps from a Label Studio JSON export, and the tasks set aside.

    Args:
        export: The export, parsed or as JSON text.
        class_map: Valid labels; a generic (`x?`) or unknown label quarantines
            the task.
        sizes: image_id -> (height, width) of the images in the lake.
        allowed_url_prefixes: Where `data.image` may point.
        unlabeled: `void` (the ignore index) or `background` for unpainted pixels.
        max_pixels: An RLE header declaring more rejects the whole file.

    Returns:
        (labels, quarantine): labels has `LABEL_COLUMNS` (mask: (H, W) uint8);
        quarantine has task_id and reason.

    Raises:
        ExportRejected: the file is rejected whole (not a list of tasks, path
            traversal, absolute paths, URLs outside the prefixes, RLE headers
            claiming huge sizes).
    """
    if unlabeled not in UNLABELED_RULES:
        raise ValueError(
            f"unlabeled must be one of {UNLABELED_RULES}, got {unlabeled!r}"
        )
    if unlabeled == "background" and "background" not in class_map.names:
        raise ValueError("unlabeled='background' needs a 'background' class")
    fill = (
        class_map.ignore_index if unlabeled == "void" else class_map.id_of("background")
    )
    prefixes = [p for p in allowed_url_prefixes if isinstance(p, str) and p]
    if isinstance(allowed_url_prefixes, str) or not prefixes:
        raise ValueError(
            "allowed_url_prefixes must be a non-empty list of non-empty strings, "
            f"got {allowed_url_prefixes!r}"
        )
    tasks = load_export(export)
    for task in tasks:  # every security check first: a bad file yields nothing
        image = task["data"].get(IMAGE)
        if image is not None:
            if not isinstance(image, str):
                raise ExportRejected(
                    f"task {task['id']}: data.image must be a string, "
                    f"got {type(image).__name__}"
                )
            check_image_url(image, prefixes, task_id=task["id"])
        _check_rle_headers(task, max_pixels)
    rows, bad = task_rows(
        tasks,
        lambda task: _label_row(
            task,
            class_map=class_map,
            sizes=sizes,
            unlabeled=fill,
            max_pixels=max_pixels,
        ),
    )
    labels = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    labels["ts"] = pd.to_datetime(labels["ts"], utc=True)
    return labels, pd.DataFrame(bad, columns=["task_id", "reason"])


def effort(pre: np.ndarray, final: np.ndarray, *, ignore_index: int = 255) -> dict:
    """How much of a pre-annotation the person changed.

    Args:
        pre: (H, W) pre-annotation on the class map (blank/generic = ignore).
        final: (H, W) the submitted label.

    Returns:
        {"iou": mean IoU over the classes in either mask (pixels void in the
        final label are skipped), "changed_frac": the fraction of the final
        label's pixels whose class differs from the pre-annotation (a blank
        pre-annotation pixel counts as changed)}.
    """
    if pre.shape != final.shape:
        raise ValueError(f"pre {pre.shape} and final {final.shape} differ in size")
    valid = final != ignore_index
    n = int(valid.sum())
    if n == 0:
        return {"iou": float("nan"), "changed_frac": float("nan")}
    p, f = pre[valid], final[valid]
    changed = float((p != f).sum() / n)
    ious = []
    for c in np.union1d(np.unique(f), np.unique(p[p != ignore_index])):
        inter = int(((p == c) & (f == c)).sum())
        union = int(((p == c) | (f == c)).sum())
        ious.append(inter / union)
    return {"iou": float(np.mean(ious)), "changed_frac": changed}


def generic_labels(prelabels: Sequence[PreLabel], class_map: ClassMap) -> list[str]:
    """The non-class brush labels the pre-annotations use (sorted, unique)."""
    return sorted(
        {label for pre in prelabels for label in pre.labels} - set(class_map.names)
    )
