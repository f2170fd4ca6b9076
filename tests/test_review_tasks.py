"""Label Studio review round trip and the edge-case (bug) log."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from edgeloop import lsrle
from edgeloop.review_tasks import (
    BUG_COLUMNS,
    QUARANTINE_COLUMNS,
    VERDICT_COLUMNS,
    ReviewImportError,
    advance_status,
    current_bugs,
    live_bug_seeds,
    parse_review_export,
    review_labeling_config,
    review_tasks,
    update_edge_cases,
)

CLASSES = ["sky", "road & lane", "car"]
PALETTE = [(128, 128, 128), "#804080", (64, 0, 128)]
TAGS = ["day", "night", "glare <sun>"]
PREFIX = "/data/local-files/?d="
NOW = pd.Timestamp("2026-11-28 12:00", tz="UTC")


def _queue() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": ["r1", "r2"],
            "image_id": ["i1", "i2"],
            "ts": pd.to_datetime(["2026-11-27 10:00", "2026-11-27 11:00"], utc=True),
            "priority": [0, 1],
            "reasons": [["feedback", "every_nth"], ["low_confidence"]],
            "details": [["customer feedback: wrong", "1st of 50"], ["p=0.41"]],
        }
    )


def _masks() -> dict[str, np.ndarray]:
    m1 = np.zeros((6, 8), dtype=np.uint8)
    m1[:2] = 0
    m1[2:4, 1:5] = 1
    m1[4:, :] = 2
    m2 = np.full((5, 7), 1, dtype=np.uint8)
    m2[0, 0] = 255  # ignore index: left out of the prediction
    return {"r1": m1, "r2": m2}


def _tasks() -> list[dict]:
    return review_tasks(
        _queue(),
        _masks(),
        image_urls={"r1": PREFIX + "review/i1.png", "r2": PREFIX + "review/i2.png"},
        class_names=CLASSES,
        model_version="m-7",
        scores={"r1": 0.5, "r2": 0.9},
    )


def _annotation(ann_id, verdict="bug", tags=(), comment=None, **extra) -> dict:
    result = [] if verdict is None else [_choices("verdict", [verdict])]
    if tags:
        result.append(_choices("condition", list(tags)))
    if comment is not None:
        result.append(
            {
                "from_name": "comment",
                "to_name": "image",
                "type": "textarea",
                "value": {"text": [comment]},
            }
        )
    ann = {
        "id": ann_id,
        "completed_by": {"id": 3, "email": "ana@example.com"},
        "result": result,
        "was_cancelled": False,
        "created_at": "2026-11-28T09:00:00.000000Z",
        "updated_at": "2026-11-28T09:05:00.000000Z",
    }
    ann.update(extra)
    return ann


def _choices(name: str, values: list[str]) -> dict:
    return {
        "from_name": name,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": values},
    }


def _export(*annotation_lists: list[dict]) -> list[dict]:
    """Label Studio's export of `_tasks()`: task ids 11, 12, ..."""
    tasks = []
    for i, anns in enumerate(annotation_lists):
        task = copy.deepcopy(_tasks()[i % 2])
        task.update({"id": 11 + i, "annotations": anns})
        tasks.append(task)
    return tasks


# -- labeling config -------------------------------------------------------------


def test_labeling_config_parses_and_lists_every_class_and_tag():
    xml = review_labeling_config(CLASSES, PALETTE, TAGS)
    root = ET.fromstring(xml)
    labels = root.findall("./BrushLabels[@name='mask']/Label")
    assert [lab.get("value") for lab in labels] == CLASSES
    assert [lab.get("background") for lab in labels] == [
        "#808080",
        "#804080",
        "#400080",
    ]
    assert root.find("./Image").attrib["value"] == "$image"
    verdict = root.find("./Choices[@name='verdict']")
    assert verdict.get("choice") == "single" and verdict.get("required") == "true"
    assert [c.get("value") for c in verdict] == ["correct", "bug"]
    assert "Edge case (bug)" in verdict[1].get("hint")
    condition = root.find("./Choices[@name='condition']")
    assert condition.get("choice") == "multiple"
    assert [c.get("value") for c in condition] == [*TAGS, "other"]
    assert root.find("./TextArea[@name='comment']").get("maxSubmissions") == "1"
    assert "&amp;" in xml and "&lt;sun&gt;" in xml  # escaped, not raw


def test_labeling_config_rejects_bad_input():
    with pytest.raises(ValueError, match="one colour per class"):
        review_labeling_config(CLASSES, PALETTE[:2], TAGS)
    with pytest.raises(ValueError, match=r"palette\[0\]"):
        review_labeling_config(CLASSES, [(300, 0, 0), *PALETTE[1:]], TAGS)
    with pytest.raises(ValueError, match="duplicates"):
        review_labeling_config(CLASSES, PALETTE, ["day", "day"])


# -- tasks -----------------------------------------------------------------------


def test_tasks_rle_decodes_back_to_the_masks():
    tasks = _tasks()
    masks = _masks()
    assert [t["data"]["request_id"] for t in tasks] == ["r1", "r2"]
    assert tasks[0]["data"]["reasons"] == "feedback, every_nth"
    assert tasks[0]["data"]["details"] == "customer feedback: wrong; 1st of 50"
    assert tasks[0]["data"]["image"] == PREFIX + "review/i1.png"
    for task, rid in zip(tasks, ["r1", "r2"], strict=True):
        (pred,) = task["predictions"]
        assert pred["model_version"] == "m-7"
        mask = masks[rid]
        present = [CLASSES[k] for k in np.unique(mask) if k < len(CLASSES)]
        assert [r["value"]["brushlabels"][0] for r in pred["result"]] == present
        for r in pred["result"]:
            assert r["type"] == "brushlabels" and r["from_name"] == "mask"
            h, w = r["original_height"], r["original_width"]
            assert (h, w) == mask.shape
            k = CLASSES.index(r["value"]["brushlabels"][0])
            got = lsrle.decode(r["value"]["rle"], h, w)
            np.testing.assert_array_equal(got, mask == k)
    assert tasks[1]["predictions"][0]["score"] == 0.9
    assert _tasks() == tasks  # deterministic, ids included
    json.dumps(tasks)  # JSON-ready


def test_tasks_need_a_mask_and_url_per_row():
    with pytest.raises(ValueError, match="masks lacks 1"):
        review_tasks(
            _queue(),
            {"r1": _masks()["r1"]},
            image_urls={"r1": "a", "r2": "b"},
            class_names=CLASSES,
            model_version="m",
        )
    with pytest.raises(ValueError, match="image_urls lacks"):
        review_tasks(
            _queue(),
            _masks(),
            image_urls={"r1": "a"},
            class_names=CLASSES,
            model_version="m",
        )


# -- export parsing --------------------------------------------------------------


def test_export_round_trip_yields_the_verdicts():
    export = _export(
        [
            _annotation(1, "correct"),
            _annotation(
                2,
                "bug",
                tags=["night", "glare <sun>", "night"],
                comment="car missed",
                updated_at="2026-11-28T10:00:00Z",
            ),
            _annotation(3, "correct", was_cancelled=True, updated_at="2026-11-29"),
        ],
        [_annotation(4, "correct", completed_by=7)],
    )
    verdicts, quarantine = parse_review_export(
        json.dumps(export), vocabulary=TAGS, allowed_url_prefixes=[PREFIX]
    )
    assert list(verdicts.columns) == VERDICT_COLUMNS
    assert quarantine.empty and list(quarantine.columns) == QUARANTINE_COLUMNS
    rows = verdicts.to_dict("records")
    assert rows[0] == {
        "verdict_id": "ls-11-2",
        "request_id": "r1",
        "image_id": "i1",
        "verdict": "bug",
        "tags": ["glare <sun>", "night"],
        "comment": "car missed",
        "reviewer": "ana@example.com",
        "ts": pd.Timestamp("2026-11-28 10:00", tz="UTC"),
    }
    assert rows[1]["verdict_id"] == "ls-12-4"
    assert rows[1]["verdict"] == "correct" and rows[1]["tags"] == []
    assert rows[1]["comment"] is None and rows[1]["reviewer"] == "user-7"
    assert str(verdicts["ts"].dt.tz) == "UTC"


@pytest.mark.parametrize(
    ("annotations", "data_patch", "reason"),
    [
        ([], {}, "no annotation"),
        ([_annotation(1, was_cancelled=True)], {}, "no annotation"),
        ([_annotation(1, verdict=None)], {}, "no verdict"),
        ([_annotation(1, verdict="maybe")], {}, "unknown verdict 'maybe'"),
        ([_annotation(1, tags=["rain"])], {}, r"\['rain'\] not in the vocabulary"),
        ([_annotation(1)], {"request_id": None}, "data.request_id"),
        ([_annotation(1)], {"image_id": ""}, "data.image_id"),
        ([_annotation("1")], {}, "no integer id: '1'"),
        ([_annotation(1, result="bug")], {}, "result is not a list"),
        ([_annotation(1, completed_by=None)], {}, "completed_by is missing"),
        (
            [_annotation(1, updated_at="yesterday", created_at=None)],
            {},
            "missing or unreadable updated_at",
        ),
    ],
)
def test_bad_tasks_are_quarantined_good_ones_pass(annotations, data_patch, reason):
    export = _export([_annotation(9, "correct")], annotations)
    export[1]["data"].update(data_patch)
    verdicts, quarantine = parse_review_export(
        export, vocabulary=TAGS, allowed_url_prefixes=[PREFIX]
    )
    assert verdicts["verdict_id"].tolist() == ["ls-11-9"]
    assert quarantine["task_id"].tolist() == [12]
    assert quarantine["reason"].str.contains(reason).all(), quarantine["reason"][0]


def test_a_task_id_seen_before_is_set_aside_and_the_first_kept():
    export = _export([_annotation(9, "correct")], [_annotation(10, "bug")])
    export[1]["id"] = export[0]["id"]
    verdicts, quarantine = parse_review_export(
        export, vocabulary=TAGS, allowed_url_prefixes=[PREFIX]
    )
    assert verdicts["verdict_id"].tolist() == ["ls-11-9"]
    assert quarantine.to_dict("records") == [
        {"task_id": 11, "reason": "duplicate task id"}
    ]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (PREFIX + "review/../../etc/passwd", "path traversal"),
        (PREFIX + "review/%2e%2e/%2E%2E/etc/passwd", "path traversal"),
        (PREFIX + "review%2F%252e%252e%2Fsecret", "path traversal"),
        ("..\\..\\windows\\system.ini", "path traversal"),
        ("/etc/passwd", "absolute filesystem path"),
        ("C:\\Users\\x.png", "absolute filesystem path"),
        ("file:///etc/passwd", "absolute filesystem path"),
        (PREFIX + "%2Fetc%2Fpasswd", "absolute filesystem path in its query"),
        ("https://evil.example.com/x.png", "allowed prefix"),
    ],
)
def test_malicious_image_urls_reject_the_whole_file(image, message):
    export = _export([_annotation(1, "correct")], [_annotation(2, "correct")])
    export[1]["data"]["image"] = image
    with pytest.raises(ReviewImportError, match=message):
        parse_review_export(export, vocabulary=TAGS, allowed_url_prefixes=[PREFIX])


def test_malformed_or_huge_exports_are_rejected():
    kw = {"vocabulary": TAGS, "allowed_url_prefixes": [PREFIX]}
    with pytest.raises(ReviewImportError, match="must be a JSON list"):
        parse_review_export(json.dumps({"tasks": []}), **kw)
    with pytest.raises(ReviewImportError, match="not valid JSON"):
        parse_review_export("[{", **kw)
    with pytest.raises(ReviewImportError, match="more than the limit of 100000"):
        parse_review_export([{}] * 100_001, **kw)
    with pytest.raises(ReviewImportError, match="task object"):
        parse_review_export(["x"], **kw)
    assert issubclass(ReviewImportError, ValueError)


# -- edge cases ------------------------------------------------------------------


def _verdicts(rows) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "verdict_id": f"ls-{i}-{i}",
                "request_id": f"r{i}",
                "image_id": image,
                "verdict": verdict,
                "tags": tags,
                "ts": pd.Timestamp("2026-11-28", tz="UTC") + pd.Timedelta(minutes=i),
            }
            for i, (image, verdict, tags) in enumerate(rows)
        ]
    )


def test_bug_life_cycle():
    first = update_edge_cases(
        None,
        _verdicts(
            [
                ("i1", "bug", ["night"]),
                ("i2", "bug", ["night", "glare"]),
                ("i3", "correct", ["night"]),
                ("i4", "bug", []),
            ]
        ),
        iteration=1,
        now=NOW,
    )
    assert list(first.columns) == BUG_COLUMNS
    got = first.set_index("bug_id")
    assert sorted(got.index) == ["bug-glare-1", "bug-night-1", "bug-other-1"]
    assert got.loc["bug-night-1", "seed_image_ids"] == ["i1", "i2"]
    assert got.loc["bug-other-1", "seed_image_ids"] == ["i4"]
    assert (got["status"] == "open").all() and (got["opened_iteration"] == 1).all()
    assert got["closed_iteration"].isna().all()
    assert got.loc["bug-night-1", "event_id"] == "bug-night-1#0001-open"

    log = first
    more = _verdicts([("i9", "bug", ["night"]), ("i1", "bug", ["night"])])
    ext = update_edge_cases(log, more, iteration=2, now=NOW)
    assert ext["bug_id"].tolist() == ["bug-night-1"]  # extended, not a new bug
    assert ext["seed_image_ids"][0] == ["i1", "i2", "i9"]
    log = pd.concat([log, ext], ignore_index=True)
    assert update_edge_cases(log, more, iteration=2, now=NOW).empty  # idempotent

    for status in ("candidates", "labelled"):
        log = pd.concat(
            [log, advance_status(log, "bug-night-1", status, iteration=2, now=NOW)],
            ignore_index=True,
        )
    with pytest.raises(ValueError, match="from 'labelled' to 'open'"):
        advance_status(log, "bug-night-1", "open", iteration=2, now=NOW)
    with pytest.raises(ValueError, match="next status is 'candidates'"):
        advance_status(log, "bug-glare-1", "fixed", iteration=2, now=NOW)
    with pytest.raises(ValueError, match="unknown status 'done'"):
        advance_status(log, "bug-glare-1", "done", iteration=2, now=NOW)
    with pytest.raises(ValueError, match="unknown bug_id"):
        advance_status(log, "bug-nope", "candidates", iteration=2, now=NOW)
    fixed = advance_status(log, "bug-night-1", "fixed", iteration=3, now=NOW)
    assert fixed["closed_iteration"].tolist() == [3]
    assert fixed["event_id"].tolist() == ["bug-night-1#0005-fixed"]
    log = pd.concat([log, fixed], ignore_index=True)
    with pytest.raises(ValueError, match="already fixed"):
        advance_status(log, "bug-night-1", "fixed", iteration=3, now=NOW)

    now = current_bugs(log.sample(frac=1, random_state=0)).set_index("bug_id")
    assert now.loc["bug-night-1", "status"] == "fixed"
    assert now.loc["bug-night-1", "seed_image_ids"] == ["i1", "i2", "i9"]
    assert now.loc["bug-glare-1", "status"] == "open"
    # The fixed night bug is no longer live; the open ones are, by bug_id.
    assert live_bug_seeds(current_bugs(log)) == [
        ("bug-glare-1", "glare", ["i2"]),
        ("bug-other-1", "other", ["i4"]),
    ]

    # A fixed bug's tag comes back: a new bug, not the fixed one.
    reopened = update_edge_cases(
        log, _verdicts([("i7", "bug", ["night"])]), iteration=3, now=NOW
    )
    assert reopened["bug_id"].tolist() == ["bug-night-3"]
    assert reopened["seed_image_ids"][0] == ["i7"]
