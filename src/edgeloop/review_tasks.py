"""Label Studio round trip for the review queue, and the edge-case (bug) log.

- `review_labeling_config`: the Label Studio labeling XML reviewers work in.
- `review_tasks`: review-queue rows plus predicted masks as Label Studio tasks.
- `parse_review_export`: a Label Studio JSON export back into verdicts, with bad
  tasks set aside in a quarantine frame; a malicious file raises
  `ReviewImportError` and nothing is returned.
- `update_edge_cases`, `current_bugs`, `advance_status`: the append-only bugs log
  (open -> candidates -> labelled -> fixed); `reopen_bugs` opens a tag's bug
  again when a model regresses on its `edge:` slice.

All pure functions over frames and dicts; the pipelines do the I/O.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.checks import check_int
from edgeloop.labelstudio import (
    MAX_TASKS,
    ExportRejected,
    TaskSetAside,
    as_list,
    brush_results,
    check_image_url,
    check_names,
    class_brush,
    load_export,
    submitted_annotation,
    task_rows,
    utc,
)
from edgeloop.review import QUEUE_COLUMNS, REVIEW_VERDICTS

__all__ = [
    "BUG_COLUMNS",
    "BUG_STATUSES",
    "LIVE_STATUSES",
    "MAX_TASKS",
    "QUARANTINE_COLUMNS",
    "VERDICT_COLUMNS",
    "ReviewImportError",
    "advance_status",
    "current_bugs",
    "live_bug_seeds",
    "parse_review_export",
    "reopen_bugs",
    "review_labeling_config",
    "review_tasks",
    "update_edge_cases",
]

# Control names shared by the labeling config, the tasks and the export parser.
IMAGE, MASK, VERDICT, CONDITION, COMMENT = (
    "image",
    "mask",
    "verdict",
    "condition",
    "comment",
)
OTHER_TAG = "other"
VERDICT_COLUMNS = [
    "verdict_id",
    "request_id",
    "image_id",
    "verdict",
    "tags",
    "comment",
    "reviewer",
    "ts",
]
QUARANTINE_COLUMNS = ["task_id", "reason"]
BUG_STATUSES = ("open", "candidates", "labelled", "fixed")
# A bug in these statuses is still looking for images like its seeds: the
# similarity pipeline queries its nearest neighbours.
LIVE_STATUSES = ("open", "candidates")
BUG_COLUMNS = [
    "event_id",
    "bug_id",
    "tag",
    "seed_image_ids",
    "status",
    "opened_iteration",
    "closed_iteration",
    "ts",
]
# The review import rejects a file with the same error as the annotation import.
ReviewImportError = ExportRejected

_VERDICT_HINTS = {
    "correct": "The prediction is right (small slips at edges are fine).",
    "bug": "Edge case (bug): the model is wrong here in a way worth fixing.",
}


# -- labeling config -------------------------------------------------------------


def review_labeling_config(
    class_names: Sequence[str],
    palette: Sequence[Sequence[int] | str],
    condition_tags: Sequence[str],
) -> str:
    """The Label Studio labeling config (XML) for reviewing predictions.

    Controls: `mask` (BrushLabels, one label per class), `verdict` (single
    choice, `correct` or `bug`, required), `condition` (multiple choice over
    `condition_tags` plus `other`) and `comment` (one free-text answer). The
    task's `reasons` and `details` are shown above the image.

    Args:
        class_names: Class names, in class-id order.
        palette: One RGB triple or '#rrggbb' per class.
        condition_tags: The condition vocabulary (e.g. slicing.condition_tags).

    Raises:
        ValueError: empty or duplicate names, or palette/class count mismatch.
    """
    tags = check_names(condition_tags, name="condition_tags")
    if OTHER_TAG not in tags:
        tags.append(OTHER_TAG)

    view = ET.Element("View")
    ET.SubElement(view, "Header", value="Why this was picked")
    ET.SubElement(view, "Text", name="reasons", value="$reasons")
    ET.SubElement(view, "Text", name="details", value="$details")
    ET.SubElement(view, "Image", name=IMAGE, value="$image", zoom="true")
    class_brush(view, class_names, palette, name=MASK, to_name=IMAGE)
    ET.SubElement(view, "Header", value="Verdict")
    verdict = ET.SubElement(
        view,
        "Choices",
        name=VERDICT,
        toName=IMAGE,
        choice="single",
        required="true",
    )
    for value in REVIEW_VERDICTS:
        ET.SubElement(verdict, "Choice", value=value, hint=_VERDICT_HINTS[value])
    ET.SubElement(view, "Header", value="Conditions")
    condition = ET.SubElement(
        view, "Choices", name=CONDITION, toName=IMAGE, choice="multiple"
    )
    for tag in tags:
        ET.SubElement(condition, "Choice", value=tag)
    ET.SubElement(view, "TextArea", name=COMMENT, toName=IMAGE, maxSubmissions="1")
    ET.indent(view)
    xml = ET.tostring(view, encoding="unicode")
    ET.fromstring(xml)  # the escaping round-trips; fail here, not in Label Studio
    return xml


# -- tasks -----------------------------------------------------------------------


def review_tasks(
    queue: pd.DataFrame,
    masks: Mapping[str, np.ndarray],
    *,
    image_urls: Mapping[str, str],
    class_names: Sequence[str],
    model_version: str,
    scores: Mapping[str, float] | None = None,
    class_ids: Sequence[int] | None = None,
) -> list[dict]:
    """Label Studio tasks, one per review-queue row, with the predicted mask.

    Args:
        queue: The review queue (`edgeloop.review.QUEUE_COLUMNS`).
        masks: request_id -> (H, W) integer class-id mask.
        image_urls: request_id -> the URL Label Studio loads the image from.
        class_names: Class names, in class-id order.
        model_version: Shown in Label Studio next to the prediction.
        scores: request_id -> prediction score (e.g. mean max prob); optional.
        class_ids: The mask value of each class; defaults to 0..K-1. Other
            values (the ignore index) are left out of the prediction.

    Returns:
        Tasks for Label Studio's import: `data` (image, request_id, image_id,
        reasons, details, ts) and one prediction with one `brushlabels` result
        per class present in the mask.

    Raises:
        ValueError: missing columns, masks or URLs; a mask that is not 2-D.
    """
    missing_cols = [c for c in QUEUE_COLUMNS if c not in queue.columns]
    if missing_cols:
        raise ValueError(
            f"queue lacks column(s) {missing_cols}; it has {list(queue.columns)}"
        )
    names = check_names(class_names, name="class_names")
    ids = list(range(len(names))) if class_ids is None else [int(i) for i in class_ids]
    if len(ids) != len(names):
        raise ValueError(
            f"class_ids must have one id per class: {len(names)} names, {len(ids)} ids"
        )
    request_ids = [str(r) for r in queue["request_id"]]
    for what, mapping in (("masks", masks), ("image_urls", image_urls)):
        lacking = [r for r in request_ids if r not in mapping]
        if lacking:
            raise ValueError(
                f"{what} lacks {len(lacking)} queued request_id(s), e.g. {lacking[:5]}"
            )

    tasks = []
    for rid, row in zip(request_ids, queue.itertuples(index=False), strict=True):
        mask = np.asarray(masks[rid])
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(
                f"masks[{rid!r}] must be a non-empty (H, W) array, got {mask.shape}"
            )
        result = brush_results(
            mask, ids, names, region_prefix=rid, from_name=MASK, to_name=IMAGE
        )
        prediction: dict[str, Any] = {"model_version": model_version, "result": result}
        if scores is not None and rid in scores:
            prediction["score"] = float(scores[rid])
        ts = pd.Timestamp(row.ts)
        tasks.append(
            {
                "data": {
                    IMAGE: image_urls[rid],
                    "request_id": rid,
                    "image_id": str(row.image_id),
                    "ts": None if pd.isna(ts) else ts.isoformat(),
                    "reasons": ", ".join(map(str, as_list(row.reasons))),
                    "details": "; ".join(map(str, as_list(row.details))),
                },
                "predictions": [prediction],
            }
        )
    return tasks


# -- export parsing --------------------------------------------------------------


def _controls(result: list) -> dict[str, list[str]]:
    """from_name -> the choices or texts it answered (brush results are skipped)."""
    out: dict[str, list[str]] = {}
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            continue
        value = item["value"]
        answers = value.get("choices", value.get("text"))
        if isinstance(answers, list):
            out.setdefault(str(item.get("from_name")), []).extend(map(str, answers))
    return out


def _verdict_row(task: dict, vocabulary: set[str]) -> dict:
    """One verdict row for a task; `TaskSetAside` says why a task cannot give one."""
    data = task["data"]
    for key in ("request_id", "image_id"):
        value = data.get(key)
        if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
            raise TaskSetAside(f"data.{key} is missing or empty")
    if IMAGE not in data:
        raise TaskSetAside("data.image is missing")
    ann = submitted_annotation(task)
    ann_id = ann.id
    controls = _controls(ann.result)
    verdicts = controls.get(VERDICT, [])
    if not verdicts:
        raise TaskSetAside(f"annotation {ann_id}: no verdict chosen")
    if len(verdicts) > 1:
        raise TaskSetAside(f"annotation {ann_id}: several verdicts {verdicts}")
    if verdicts[0] not in REVIEW_VERDICTS:
        raise TaskSetAside(
            f"annotation {ann_id}: unknown verdict {verdicts[0]!r}; "
            f"valid: {list(REVIEW_VERDICTS)}"
        )
    tags = sorted(set(controls.get(CONDITION, [])))
    unknown = [t for t in tags if t not in vocabulary]
    if unknown:
        raise TaskSetAside(
            f"annotation {ann_id}: condition tag(s) {unknown} not in the vocabulary"
        )
    comment = "\n".join(t for t in controls.get(COMMENT, []) if t.strip()) or None
    return {
        "verdict_id": f"ls-{task['id']}-{ann_id}",
        "request_id": str(data["request_id"]),
        "image_id": str(data["image_id"]),
        "verdict": verdicts[0],
        "tags": tags,
        "comment": comment,
        "reviewer": ann.by,
        "ts": ann.ts,
    }


def parse_review_export(
    export: list[dict] | str | bytes,
    *,
    vocabulary: Sequence[str],
    allowed_url_prefixes: Sequence[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Verdicts from a Label Studio JSON export, and the tasks set aside.

    Each task gives its latest non-cancelled annotation (by updated_at, then
    created_at, then annotation id). Brush corrections are not read here.

    Args:
        export: The export, parsed or as JSON text.
        vocabulary: The allowed condition tags (`other` is always allowed).
        allowed_url_prefixes: Where `data.image` may point, e.g.
            ["/data/local-files/?d=", "s3://edgeloop-review/"]. End each with
            "/" or "=" so that "https://host" cannot match "https://host.evil".

    Returns:
        (verdicts, quarantine): verdicts has `VERDICT_COLUMNS` (ts in UTC);
        quarantine has `QUARANTINE_COLUMNS`, one row per bad task, with the reason.

    Raises:
        ReviewImportError: the whole file is rejected: not a JSON list, more than
            `MAX_TASKS` tasks, a malformed task, or an image URL with path
            traversal, an absolute path or an unknown prefix.
    """
    prefixes = [p for p in allowed_url_prefixes if isinstance(p, str) and p]
    if isinstance(allowed_url_prefixes, str) or not prefixes:
        raise ValueError(
            "allowed_url_prefixes must be a non-empty list of non-empty strings, "
            f"got {allowed_url_prefixes!r}"
        )
    vocab = set(check_names(vocabulary, name="vocabulary")) | {OTHER_TAG}
    tasks = load_export(export)
    # Security checks first, over every task, so a bad file yields nothing.
    for task in tasks:
        image = task["data"].get(IMAGE)
        if image is None:
            continue
        if not isinstance(image, str):
            raise ReviewImportError(
                f"task {task['id']}: data.image must be a string, "
                f"got {type(image).__name__}"
            )
        check_image_url(image, prefixes, task_id=task["id"])

    rows, bad = task_rows(tasks, lambda task: _verdict_row(task, vocab))
    verdicts = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    verdicts["ts"] = pd.to_datetime(verdicts["ts"], utc=True)
    # pandas reads a missing comment as NaN; keep None for the lake's nulls.
    verdicts["comment"] = verdicts["comment"].astype(object)
    verdicts.loc[verdicts["comment"].isna(), "comment"] = None
    quarantine = pd.DataFrame(bad, columns=QUARANTINE_COLUMNS)
    return verdicts, quarantine


# -- edge cases (bugs) -----------------------------------------------------------

_EVENT_SEQ = re.compile(r"#(\d+)-[a-z]+$")


def _empty_bugs() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in BUG_COLUMNS})


def _event_seq(event_id: str) -> int:
    match = _EVENT_SEQ.search(str(event_id))
    if match is None:
        raise ValueError(f"bugs.event_id {event_id!r} is not '<bug_id>#<seq>-<status>'")
    return int(match.group(1))


def _event(
    bug: Mapping[str, Any],
    seq: int,
    *,
    status: str,
    seeds: list[str],
    now: Any,
    closed: int | None = None,
) -> dict:
    return {
        "event_id": f"{bug['bug_id']}#{seq:04d}-{status}",
        "bug_id": bug["bug_id"],
        "tag": bug["tag"],
        "seed_image_ids": sorted(seeds),
        "status": status,
        "opened_iteration": int(bug["opened_iteration"]),
        "closed_iteration": closed,
        "ts": utc(now),
    }


def _check_bugs(bugs: pd.DataFrame | None) -> pd.DataFrame:
    if bugs is None or (len(bugs) == 0 and not set(BUG_COLUMNS) <= set(bugs.columns)):
        return _empty_bugs()
    missing = [c for c in BUG_COLUMNS if c not in bugs.columns]
    if missing:
        raise ValueError(f"bugs lacks column(s) {missing}; it has {list(bugs.columns)}")
    return bugs


def current_bugs(bugs: pd.DataFrame) -> pd.DataFrame:
    """The latest event per bug_id: each bug's current status and seeds."""
    bugs = _check_bugs(bugs)
    if bugs.empty:
        return _empty_bugs()
    seq = bugs["event_id"].map(_event_seq)
    latest = (
        bugs.assign(_seq=seq)
        .sort_values(["bug_id", "_seq"], kind="stable")
        .drop_duplicates("bug_id", keep="last")
    )
    return latest.drop(columns="_seq").reset_index(drop=True)


def live_bug_seeds(current: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """(bug_id, tag, seed image ids) of each live bug in `current_bugs`' output.

    Live: open, or with KNN candidates not yet labelled. By bug_id.
    """
    live = current[current["status"].isin(LIVE_STATUSES)]
    return [
        (str(r.bug_id), str(r.tag), [str(s) for s in r.seed_image_ids])
        for r in live.sort_values("bug_id", kind="stable").itertuples()
    ]


def _next_seq(bugs: pd.DataFrame, bug_id: str) -> int:
    own = bugs.loc[bugs["bug_id"] == bug_id, "event_id"]
    return max((_event_seq(e) for e in own), default=0) + 1


def update_edge_cases(
    bugs: pd.DataFrame | None,
    verdicts: pd.DataFrame,
    *,
    iteration: int,
    now: Any,
) -> pd.DataFrame:
    """New bugs-log events for the `bug` verdicts; append them to the log.

    Each tag of a `bug` verdict (`other` when it has none) opens a bug
    `bug-<tag>-<iteration>`, or, when a bug with that tag is not yet `fixed`,
    adds the verdict's image to that bug's seeds (a new event with the union).
    A request reviewed more than once counts with its latest verdict. Reruns
    with the same verdicts add nothing.

    Returns:
        Only the new event rows (`BUG_COLUMNS`), possibly empty.
    """
    bugs = _check_bugs(bugs)
    missing = [
        c
        for c in ("request_id", "image_id", "verdict", "tags", "ts")
        if c not in verdicts.columns
    ]
    if missing:
        raise ValueError(
            f"verdicts lacks column(s) {missing}; it has {list(verdicts.columns)}"
        )
    iteration = check_int(iteration, "iteration")
    latest = (
        verdicts.assign(_ts=pd.to_datetime(verdicts["ts"], utc=True))
        .sort_values(["_ts", *(["verdict_id"] if "verdict_id" in verdicts else [])])
        .drop_duplicates("request_id", keep="last")
    )
    seeds_by_tag: dict[str, set[str]] = {}
    for row in latest[latest["verdict"] == "bug"].itertuples(index=False):
        for tag in as_list(row.tags) or [OTHER_TAG]:
            seeds_by_tag.setdefault(str(tag), set()).add(str(row.image_id))

    current = current_bugs(bugs)
    events = []
    for tag in sorted(seeds_by_tag):
        live = current[(current["tag"] == tag) & (current["status"] != "fixed")]
        if len(live):
            bug = live.sort_values("opened_iteration").iloc[-1]
            seeds = set(as_list(bug["seed_image_ids"]))
            union = seeds | seeds_by_tag[tag]
            if union != seeds:
                events.append(
                    _event(
                        bug,
                        _next_seq(bugs, bug["bug_id"]),
                        status=bug["status"],
                        seeds=list(union),
                        now=now,
                    )
                )
            continue
        bug = _new_bug(bugs, tag, iteration)
        events.append(
            _event(bug, 1, status="open", seeds=list(seeds_by_tag[tag]), now=now)
        )
    return pd.DataFrame(events, columns=BUG_COLUMNS) if events else _empty_bugs()


def _new_bug(bugs: pd.DataFrame, tag: str, iteration: int) -> dict[str, Any]:
    """A fresh bug_id for `tag` opened at `iteration`: bug-<tag>-<iteration>[-n]."""
    bug_id, n = f"bug-{tag}-{int(iteration)}", 1
    while (bugs["bug_id"] == bug_id).any():  # reopened in the same iteration
        n += 1
        bug_id = f"bug-{tag}-{int(iteration)}-{n}"
    return {"bug_id": bug_id, "tag": tag, "opened_iteration": int(iteration)}


def reopen_bugs(
    bugs: pd.DataFrame | None, tags: Sequence[str], *, iteration: int, now: Any
) -> pd.DataFrame:
    """Opens a bug again for each tag whose `edge:<tag>` slice a model regressed on.

    The gate caught the regression; reopening is how the loop acts on it. A
    tag that still has a bug looking for candidates (`open` or `candidates`)
    needs nothing. Otherwise a new bug `bug-<tag>-<iteration>` opens with the
    seeds of every earlier bug of that tag, so the next similarity run queries
    its nearest neighbours again and acquisition sends more images like them
    to labeling.

    Returns:
        The new `open` events (BUG_COLUMNS), one per reopened tag.

    Raises:
        ValueError: a tag no bug ever had.
    """
    bugs = _check_bugs(bugs)
    current = current_bugs(bugs)
    events = []
    for tag in sorted(set(tags)):
        mine = current[current["tag"] == tag]
        if mine.empty:
            raise ValueError(
                f"no bug was ever tagged {tag!r}; tags: {sorted(set(current['tag']))}"
            )
        if mine["status"].isin(LIVE_STATUSES).any():
            continue
        seeds = {str(s) for group in mine["seed_image_ids"] for s in as_list(group)}
        bug = _new_bug(bugs, tag, iteration)
        events.append(_event(bug, 1, status="open", seeds=sorted(seeds), now=now))
    return pd.DataFrame(events, columns=BUG_COLUMNS) if events else _empty_bugs()


def advance_status(
    bugs: pd.DataFrame, bug_id: str, status: str, *, iteration: int, now: Any
) -> pd.DataFrame:
    """The one event that moves `bug_id` one step along its life cycle.

    The order is open -> candidates -> labelled -> fixed; `fixed` sets
    closed_iteration to `iteration`.

    Raises:
        ValueError: an unknown bug or status, or a move that skips a step, goes
            back or stays put.
    """
    if status not in BUG_STATUSES:
        raise ValueError(f"unknown status {status!r}; valid: {list(BUG_STATUSES)}")
    current = current_bugs(bugs)
    match = current[current["bug_id"] == bug_id]
    if match.empty:
        raise ValueError(
            f"unknown bug_id {bug_id!r}; known: {sorted(current['bug_id'])[:20]}"
        )
    bug = match.iloc[0]
    here = BUG_STATUSES.index(bug["status"])
    there = BUG_STATUSES.index(status)
    if there != here + 1:
        nxt = BUG_STATUSES[here + 1] if here + 1 < len(BUG_STATUSES) else None
        raise ValueError(
            f"bug {bug_id!r} cannot move from {bug['status']!r} to {status!r}; "
            + (f"the next status is {nxt!r}" if nxt else "it is already fixed")
        )
    if int(iteration) < int(bug["opened_iteration"]):
        raise ValueError(
            f"iteration {iteration} is before bug {bug_id!r} was opened "
            f"(iteration {bug['opened_iteration']})"
        )
    event = _event(
        bug,
        _next_seq(bugs, bug_id),
        status=status,
        seeds=as_list(bug["seed_image_ids"]),
        now=now,
        closed=int(iteration) if status == "fixed" else None,
    )
    return pd.DataFrame([event], columns=BUG_COLUMNS)
