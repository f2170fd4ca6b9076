"""Mask-labeling tasks and the Label Studio export import (no server)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from edgeloop import labelstudio, lsrle
from edgeloop.annotation import (
    ExportRejected,
    annotation_tasks,
    effort,
    labeling_config,
    parse_annotation_export,
)
from edgeloop.labelstudio import brush_results
from edgeloop.pseudo import PreLabel

NAMES = ["background", "fighter_jet", "airliner", "light_aircraft"]
PREFIX = "/data/local-files/?d="
H, W = 6, 8


def _mask(seed: int = 0) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[1 + seed % 2 : 4, 2:6] = 1 + seed % 3
    return m


def _task(task_id: int, image_id: str, mask: np.ndarray, **ann) -> dict:
    result = brush_results(mask, range(4), NAMES, region_prefix=str(task_id))
    return {
        "id": task_id,
        "data": {
            "image": f"{PREFIX}data/lake/blobs/{image_id}.png",
            "image_id": image_id,
        },
        "annotations": [
            {
                "id": 10 + task_id,
                "completed_by": {"id": 3, "email": "ann@example.com"},
                "result": ann.get("result", result),
                "was_cancelled": False,
                "created_at": "2026-11-28T10:00:00Z",
                "updated_at": "2026-11-28T10:00:00Z",
                **({"prediction": ann["prediction"]} if "prediction" in ann else {}),
            }
        ],
    }


def _parse(export, **kw):
    from edgeloop.classmap import ClassMap

    cm = ClassMap(tuple(NAMES), (0, 1, 2, 3), ((0, 0, 0),) * 4)
    return parse_annotation_export(
        json.dumps(export),
        class_map=cm,
        sizes={"a": (H, W), "b": (H, W), "c": (H, W)},
        allowed_url_prefixes=[PREFIX],
        **kw,
    )


def test_good_tasks_land_and_bad_ones_are_quarantined_with_reasons():
    good = _task(1, "a", _mask(0))
    generic = _task(2, "b", _mask(1))
    generic["annotations"][0]["result"][0]["value"]["brushlabels"] = ["aeroplane?"]
    unknown = _task(3, "c", _mask(2))
    unknown["annotations"][0]["result"][0]["value"]["brushlabels"] = ["zeppelin"]
    small = _task(4, "a", _mask(0))
    small["annotations"][0]["result"][0]["original_width"] = W - 1
    missing = _task(5, "zzz", _mask(0))
    labels, quarantine = _parse([good, generic, unknown, small, missing])
    assert labels["task_id"].tolist() == [1]
    np.testing.assert_array_equal(labels.loc[0, "mask"], _mask(0))
    assert labels.loc[0, "annotator"] == "ann@example.com"
    reasons = dict(zip(quarantine["task_id"], quarantine["reason"], strict=True))
    assert "generic label 'aeroplane?'" in reasons[2]
    assert "unknown label 'zeppelin'" in reasons[3]
    assert "size mismatch" in reasons[4]
    assert "missing image" in reasons[5]


def test_a_task_id_seen_before_is_set_aside_and_the_first_kept():
    first, again = _task(1, "a", _mask(0)), _task(1, "b", _mask(1))
    labels, quarantine = _parse([first, again])
    assert labels["image_id"].tolist() == ["a"]
    assert quarantine.to_dict("records") == [
        {"task_id": 1, "reason": "duplicate task id"}
    ]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (PREFIX + "../../etc/passwd", "path traversal"),
        (PREFIX + "data/%2e%2e/%2e%2e/secret.png", "path traversal"),
        ("/etc/passwd", "absolute filesystem path"),
        ("file:///etc/passwd", "absolute filesystem path"),
        ("https://evil.example.com/x.png", "allowed prefix"),
        (PREFIX + "/etc/passwd", "absolute filesystem path in its query"),
    ],
)
def test_a_malicious_export_is_rejected_whole(image, message):
    good = _task(1, "a", _mask(0))
    evil = _task(2, "b", _mask(1))
    evil["data"]["image"] = image
    with pytest.raises(ExportRejected, match=message):
        _parse([good, evil])


def test_an_rle_header_claiming_a_huge_image_rejects_the_file():
    evil = _task(2, "b", _mask(1))
    rle = lsrle.encode(np.zeros((H, W), bool))
    head = int.from_bytes(bytes(rle[:7]), "big")
    huge = (head & ((1 << 21 + 3) - 1)) | ((4 * 10**9) << (21 + 3))
    evil["annotations"][0]["result"][0]["value"]["rle"] = (
        list(huge.to_bytes(7, "big")) + rle[7:]
    )
    with pytest.raises(ExportRejected, match="declares .* pixels, more than"):
        _parse([_task(1, "a", _mask(0)), evil])


def test_overlap_rule_smallest_region_wins_and_unpainted_pixels_follow_the_rule():
    sky = np.zeros((H, W), bool)
    sky[:, :] = True
    sky[5, :] = False  # the last row is left unpainted
    jet = np.zeros((H, W), bool)
    jet[2:4, 3:5] = True
    result = brush_results(
        np.zeros((H, W), np.uint8),
        [0],
        ["background"],
        region_prefix="x",
    )
    result[0]["value"]["rle"] = lsrle.encode(sky)
    result += brush_results(
        jet.astype(np.uint8), [1], ["fighter_jet"], region_prefix="y"
    )
    task = _task(1, "a", _mask(0), result=result)
    labels, _ = _parse([task])
    mask = labels.loc[0, "mask"]
    assert (mask[jet] == 1).all()  # the smaller stroke paints over the background
    assert (mask[:5][~jet[:5]] == 0).all()
    assert (mask[5] == 255).all()  # void by default
    labels, _ = _parse([task], unlabeled="background")
    assert (labels.loc[0, "mask"][5] == 0).all()


def test_effort_is_measured_against_the_prediction_the_annotation_started_from():
    final = _mask(0)
    pre = final.copy()
    pre[1, 2:6] = 0  # 4 of 48 pixels differ
    prediction = {
        "model_version": "own_model:abc",
        "result": brush_results(pre, range(4), NAMES, region_prefix="p"),
    }
    labels, _ = _parse([_task(1, "a", final, prediction=prediction)])
    assert labels.loc[0, "started_from"] == "own_model"
    assert labels.loc[0, "pre_changed_frac"] == pytest.approx(4 / 48)
    e = effort(pre, final)
    assert e["changed_frac"] == pytest.approx(4 / 48)
    assert 0 < e["iou"] < 1
    assert effort(final, final) == {"iou": 1.0, "changed_frac": 0.0}


def test_tasks_put_doubtful_pre_annotations_first_and_the_config_has_generics():
    queue = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "reason": ["bug_candidate", "random", "bug_seed"],
            "bug_id": ["bug-glare-0", None, "bug-haze-0"],
            "detail": [
                "bug-glare-0 (glare): #1 nearest to abc",
                None,
                "bug-haze-0 (haze): the flagged image itself",
            ],
        }
    )
    pres = {
        "a": [(PreLabel("own_model", _mask(0), tuple(NAMES), 0.9), 0.9)],
        "b": [
            (PreLabel("own_model", _mask(1), tuple(NAMES), 0.4), 0.4),
            (PreLabel("slic", _mask(1), tuple(NAMES), 0.5), 0.45),
        ],
        "c": [(PreLabel("own_model", _mask(0), tuple(NAMES), 0.95), 0.95)],
    }
    urls = {"a": PREFIX + "a.png", "b": PREFIX + "b.png", "c": PREFIX + "c.png"}
    tasks = annotation_tasks(queue, pres, image_urls=urls)
    assert [t["data"]["image_id"] for t in tasks] == ["b", "a", "c"]
    assert tasks[2]["data"]["bug_ids"] == "bug-haze-0"
    assert [p["model_version"] for p in tasks[0]["predictions"]] == [
        "slic",
        "own_model",
    ]
    assert tasks[1]["data"]["bug_ids"] == "bug-glare-0"
    assert tasks[0]["data"]["bug_ids"] == "" and tasks[0]["data"]["reason"] == "random"
    region = tasks[1]["predictions"][0]["result"][0]
    decoded = lsrle.decode(region["value"]["rle"], H, W)
    label = NAMES.index(region["value"]["brushlabels"][0])
    np.testing.assert_array_equal(decoded, _mask(0) == label)
    xml = labeling_config(NAMES, [[0, 0, 0]] * 4, generic_labels=["aeroplane?"])
    assert 'value="aeroplane?"' in xml and 'value="airliner"' in xml
    with pytest.raises(ValueError, match="clash"):
        labeling_config(NAMES, [[0, 0, 0]] * 4, generic_labels=["airliner"])


@pytest.mark.parametrize("title", ["ab", "x" * 51])
def test_a_project_title_label_studio_would_refuse_fails_before_any_request(title):
    class NoServer:  # any request would fail differently
        def __getattr__(self, name):
            raise AssertionError(f"touched Label Studio: {name}")

    with pytest.raises(ValueError, match="3 to 50 characters"):
        labelstudio.push_tasks(NoServer(), title=title, label_config="", tasks=[])


def test_exports_are_the_json_files_of_the_folder_and_a_file_is_refused(tmp_path):
    folder = tmp_path / "exports"
    assert (
        labelstudio.collect_exports(folder, None, default_title="x", setting="s") == []
    )
    folder.mkdir()
    for name in ("b.json", "A.JSON", "notes.txt"):
        (folder / name).write_text(name)
    (folder / "sub.json").mkdir()  # a folder named like an export is not one
    got = labelstudio.collect_exports(
        folder, {"enabled": False}, default_title="x", setting="s"
    )
    assert got == [
        (str(folder / "A.JSON"), b"A.JSON"),
        (str(folder / "b.json"), b"b.json"),
    ]
    match = r"^review\.import\.exports_dir: .*not a folder"
    with pytest.raises(ValueError, match=match):
        labelstudio.collect_exports(
            folder / "b.json",
            None,
            default_title="x",
            setting="review.import.exports_dir",
        )
