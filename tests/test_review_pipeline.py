"""The review pipeline on a hand-built lake, through a real Kedro session."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from edgeloop.lake import Lake
from edgeloop.prodlog import feedback_row

T0 = datetime(2026, 1, 5, 8, tzinfo=UTC)


def _preds(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        ts = T0 + timedelta(minutes=3 * i)
        rows.append(
            {
                "request_id": f"r{i:04d}",
                "ts": ts,
                "date": ts.strftime("%Y-%m-%d"),
                "model_version": "it0-x",
                "iteration": 0,
                "image_id": f"img{i}",
                "image_blob": "b",
                "mask_blob": "m",
                "width": 8,
                "height": 8,
                "mean_max_prob": 0.99 - (i % 37) / 100,
                "mean_entropy": 0.1,
                "mean_margin": 0.5,
                "low_conf_frac": 0.0,
                "class_fracs": [1.0],
                "latency_ms": 1.0,
                "source": "batch",
                "client": "t",
            }
        )
    return pd.DataFrame(rows)


def test_review_pipeline_reads_a_period_and_explains_picks(project: Path):
    lake = Lake("data/lake")
    preds = _preds(200)  # 10 hours
    lake.append("predictions", preds)
    lake.append(
        "feedback",
        pd.DataFrame(
            [
                feedback_row(verdict="wrong", request_id="r0050", tags=["night"]),
                # About a prediction outside the period, received later.
                feedback_row(verdict="wrong", request_id="r0150", tags=["glare"]),
            ]
        ),
    )
    # The similarity context (its rows have no real images to embed): novelty
    # rises with i, and two clusters alternate.
    out = Path("data/07_model_output/iter_0")
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "image_id": preds["image_id"],
            "novelty_features": 0.0,
            "novelty_colour": 0.0,
            "novelty": [i / 200 for i in range(200)],
        }
    ).to_parquet(out / "novelty_scores.parquet")
    pd.DataFrame(
        {
            "image_id": preds["image_id"],
            "level": 0,
            "parent_path": "",
            "cluster": [i % 2 for i in range(200)],
            "path": [str(i % 2) for i in range(200)],
        }
    ).to_parquet(out / "clusters.parquet")
    bootstrap_project(project)
    params = {
        "review": {
            "period": {
                "start": "2026-01-05T10:00:00+00:00",
                "end": "2026-01-05T14:00:00+00:00",
            }
        }
    }
    with KedroSession.create(env="ci", runtime_params=params) as session:
        # Its hand-built rows have no real blobs: the export (test_discover) is skipped.
        session.run(
            pipeline_names=["review"],
            node_names=["import_review_verdicts", "build_review"],
        )
    summary = json.loads(
        Path("data/08_reporting/iter_0/review_summary.json").read_text()
    )
    assert summary["predictions"] == 80  # 4 hours x 20 per hour
    assert summary["predictions_version"] == 0
    queue_path = next(
        Path("data/07_model_output/iter_0/review_queue.parquet").glob("*/*")
    )
    queue = pd.read_parquet(queue_path)
    assert summary["items"] == len(queue)
    # Random checks: 2 per hour over 4 hours.
    assert summary["per_reason"]["random_window"] == 8
    # Confidence checks rank by novelty, at most 3 per cluster: the period's
    # most novel images (img119 down) until both clusters are full.
    assert (summary["with_novelty"], summary["with_cluster"]) == (80, 80)
    novel = queue[queue["reasons"].map(lambda r: "low_confidence" in r)]
    assert set(novel["image_id"]) == {f"img{i}" for i in range(114, 120)}
    # The flagged prediction (10:30) comes first, for the feedback; the one
    # outside the period (15:30) is not in this review.
    assert queue.iloc[0]["request_id"] == "r0050"
    assert "r0150" not in set(queue["request_id"])
    assert "feedback" in list(queue.iloc[0]["reasons"])
    in_period = preds[
        (preds["ts"] >= T0 + timedelta(hours=2))
        & (preds["ts"] < T0 + timedelta(hours=6))
    ]
    assert set(queue["request_id"]) <= set(in_period["request_id"])
    health = pd.read_csv("data/08_reporting/iter_0/model_health.csv")
    assert health.loc[health["hour"] == 11, "n"].item() == 20
    assert Path("data/08_reporting/iter_0/model_health.png").stat().st_size > 5_000
    # A prediction with a verdict is not picked again (the samplers would:
    # same model, same seed), and the summary says how many were left out.
    reviewed = queue.iloc[:3]
    lake.append(
        "review_verdicts",
        pd.DataFrame(
            {
                "verdict_id": [f"v{i}" for i in range(3)],
                "request_id": reviewed["request_id"].tolist(),
                "image_id": reviewed["image_id"].tolist(),
                "verdict": ["correct"] * 3,
                "tags": [[] for _ in range(3)],
                "comment": [None] * 3,
                "reviewer": ["ann"] * 3,
                "ts": [T0] * 3,
            }
        ),
    )
    with KedroSession.create(env="ci", runtime_params=params) as session:
        session.run(
            pipeline_names=["review"],
            node_names=["import_review_verdicts", "build_review"],
        )
    again = pd.read_parquet(
        max(Path("data/07_model_output/iter_0/review_queue.parquet").glob("*/*"))
    )
    assert not set(again["request_id"]) & set(reviewed["request_id"])
    summary = json.loads(
        Path("data/08_reporting/iter_0/review_summary.json").read_text()
    )
    assert summary["already_reviewed"] == 3
