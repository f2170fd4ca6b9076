"""Edge cases as bugs: edge:<tag> slices and the life cycle driven by evaluation."""

from dataclasses import replace

import pandas as pd
import pytest
from test_slicing import _labels

from edgeloop.classmap import ClassMap
from edgeloop.lake import Lake
from edgeloop.pipelines.evaluation.nodes import track_bugs
from edgeloop.review_tasks import (
    advance_status,
    current_bugs,
    reopen_bugs,
    update_edge_cases,
)
from edgeloop.slicing import SlicingConfig, build_slices

CM = ClassMap.from_params(
    {
        "names": ["bg", "jet", "liner", "light"],
        "ids": [0, 1, 2, 3],
        "palette": [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]],
    }
)
T0 = pd.Timestamp("2026-11-28T09:00:00Z")


def test_edge_slices_come_from_bug_tags_and_seeds():
    cfg = replace(
        SlicingConfig(),
        edge_cases=(("night", frozenset()), ("glare", frozenset({"c"}))),
    )
    slices = build_slices(_labels(), CM, cfg)
    edge = slices[slices["slice"].str.startswith("edge:")]
    # a is tagged night; c is a seed of the glare bug; nothing else.
    assert sorted(map(tuple, edge.to_numpy())) == [
        ("a", "edge:night"),
        ("c", "edge:glare"),
    ]
    # Without bugs, there is no edge slice at all.
    assert (
        not build_slices(_labels(), CM, SlicingConfig())["slice"]
        .str.startswith("edge:")
        .any()
    )


def _night_bug_opened() -> pd.DataFrame:
    """The `open` event of bug-night-0: one review verdict flagged seed1 night."""
    verdicts = pd.DataFrame(
        {
            "verdict_id": ["v1"],
            "request_id": ["r1"],
            "image_id": ["seed1"],
            "verdict": ["bug"],
            "tags": [["night"]],
            "ts": [T0],
        }
    )
    return update_edge_cases(None, verdicts, iteration=0, now=T0)


def _lake_with_candidates(tmp_path) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    opened = _night_bug_opened()
    lake.append("edge_cases", opened)
    lake.append(
        "edge_cases",
        advance_status(opened, "bug-night-0", "candidates", iteration=0, now=T0),
    )
    return lake


def _inputs(delta: float, first_iteration: int, n: int = 25):
    slices = pd.DataFrame({"image_id": ["img1", "img2"], "slice": ["edge:night"] * 2})
    labels = pd.DataFrame(
        {"image_id": ["img1", "img2"], "first_iteration": [first_iteration, 0]}
    )
    metrics = pd.DataFrame(
        [
            {
                "split": "test",
                "slice": "edge:night",
                "n_images": n,
                "new": 0.3 + delta,
                "old": 0.3,
                "delta": delta,
                "insufficient": n < 20,
            }
        ]
    )
    return slices, labels, metrics


@pytest.mark.parametrize(
    "promoted, delta, first_iteration, n, status",
    [
        (True, 0.2, 1, 25, "fixed"),  # labelled and improved: fixed
        (False, 0.2, 1, 25, "labelled"),  # the gate rejected the model
        (True, -0.05, 1, 25, "labelled"),  # the slice did not improve
        (True, 0.2, 1, 10, "labelled"),  # too few test images to judge
        (True, 0.2, 0, 25, "candidates"),  # nothing labelled since it opened
    ],
)
def test_life_cycle_follows_labels_and_the_gate(
    tmp_path, promoted, delta, first_iteration, n, status
):
    lake = _lake_with_candidates(tmp_path)
    slices, labels, metrics = _inputs(delta, first_iteration, n)
    report = track_bugs(
        lake,
        lake.read("edge_cases"),
        {"promoted": promoted},
        metrics,
        slices,
        labels,
        1,
    )
    bug = current_bugs(lake.read("edge_cases")).iloc[0]
    assert bug["status"] == status
    assert report[0]["status_before"] == "candidates" and report[0]["status"] == status
    assert (report[0]["before"], report[0]["after"]) == (
        0.3,
        pytest.approx(0.3 + delta),
    )
    if status == "fixed":
        assert bug["closed_iteration"] == 1
        statuses = lake.read("edge_cases").sort_values("event_id")["status"].tolist()
        assert statuses == ["open", "candidates", "labelled", "fixed"]
        # Running the same evaluation again changes nothing more.
        track_bugs(
            lake,
            lake.read("edge_cases"),
            {"promoted": True},
            metrics,
            slices,
            labels,
            1,
        )
        assert len(lake.read("edge_cases")) == 4
    else:
        assert pd.isna(bug["closed_iteration"])


def test_no_bugs_no_report(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    slices, labels, metrics = _inputs(0.1, 1)
    assert (
        track_bugs(
            lake,
            lake.read("edge_cases"),
            {"promoted": True},
            metrics,
            slices,
            labels,
            1,
        )
        == []
    )
    assert lake.version("edge_cases") is None


def _regressed_on_night():
    return {
        "promoted": False,
        "comparisons": [
            {"slice": "all", "regressed": False},
            {"slice": "cond:night", "regressed": True},
            {"slice": "edge:night", "regressed": True},
        ],
    }


def test_a_regression_on_a_bug_slice_reopens_the_bug(tmp_path):
    lake = _lake_with_candidates(tmp_path)
    slices, labels, metrics = _inputs(0.2, 1)
    # Iteration 1: labelled and improved, promoted: fixed.
    track_bugs(
        lake, lake.read("edge_cases"), {"promoted": True}, metrics, slices, labels, 1
    )
    assert current_bugs(lake.read("edge_cases")).iloc[0]["status"] == "fixed"
    # Iteration 2's model loses the night slice: the gate rejects it, and the
    # night bug opens again with the old bug's seeds.
    slices, labels, metrics = _inputs(-0.06, 1)

    def reject_at_iteration_2() -> list[dict]:
        return track_bugs(
            lake,
            lake.read("edge_cases"),
            _regressed_on_night(),
            metrics,
            slices,
            labels,
            2,
        )

    report = reject_at_iteration_2()
    bugs = current_bugs(lake.read("edge_cases")).set_index("bug_id")
    assert bugs.loc["bug-night-0", "status"] == "fixed"
    assert bugs.loc["bug-night-2", "status"] == "open"
    assert list(bugs.loc["bug-night-2", "seed_image_ids"]) == ["seed1"]
    assert bugs.loc["bug-night-2", "opened_iteration"] == 2
    (row,) = [r for r in report if r["bug_id"] == "bug-night-2"]
    assert (row["status_before"], row["status"]) == ("regressed", "open")
    assert row["delta"] == pytest.approx(-0.06)
    # The same verdict again opens nothing more: the new bug is live.
    again = reject_at_iteration_2()
    assert [r["bug_id"] for r in again] == ["bug-night-0", "bug-night-2"]
    assert len(lake.read("edge_cases")) == 5  # open, candidates, labelled, fixed, open


def test_a_model_worse_everywhere_reopens_no_bug(tmp_path):
    lake = _lake_with_candidates(tmp_path)
    slices, labels, metrics = _inputs(0.2, 1)
    track_bugs(
        lake, lake.read("edge_cases"), {"promoted": True}, metrics, slices, labels, 1
    )
    verdict = _regressed_on_night()
    verdict["comparisons"][0]["regressed"] = True  # `all` dropped too
    slices, labels, metrics = _inputs(-0.06, 1)
    report = track_bugs(
        lake, lake.read("edge_cases"), verdict, metrics, slices, labels, 2
    )
    assert [r["bug_id"] for r in report] == ["bug-night-0"]
    assert len(lake.read("edge_cases")) == 4


def test_reopen_bugs_skips_live_bugs_and_rejects_unknown_tags():
    opened = _night_bug_opened()
    # Still looking for candidates: nothing to reopen.
    assert reopen_bugs(opened, ["night"], iteration=1, now=T0).empty
    with pytest.raises(ValueError, match="no bug was ever tagged 'glare'"):
        reopen_bugs(opened, ["glare"], iteration=1, now=T0)
