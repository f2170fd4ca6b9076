"""The discover pipeline, end to end on the ci data with a tiny registered model.

Real Kedro sessions, a real Delta lake, a Label Studio export file on disk.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import register_tiny_model
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from edgeloop.lake import Lake

ITER0 = Path("data/08_reporting/iter_0")
OUT0 = Path("data/07_model_output/iter_0")
EXPORTS = Path("data/01_raw/review_exports")


def _run(names: list[str], **params) -> None:
    bootstrap_project(Path.cwd())
    with KedroSession.create(env="ci", runtime_params=params or None) as session:
        session.run(pipeline_names=names)


def _latest(path: Path) -> pd.DataFrame:
    """The newest version of a versioned Parquet dataset."""
    return pd.read_parquet(sorted(path.glob("*/*.parquet"))[-1])


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _export(tasks: list[dict], picks: dict[int, tuple[str, list[str]]]) -> list[dict]:
    """Label Studio's JSON export: the tasks, some answered (verdict, tags)."""
    out = []
    for i, (verdict, tags) in picks.items():
        task = dict(tasks[i], id=100 + i)
        result = [
            {
                "from_name": "verdict",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [verdict]},
            }
        ]
        if tags:
            result.append(
                {
                    "from_name": "condition",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": tags},
                }
            )
        task["annotations"] = [
            {
                "id": 500 + i,
                "completed_by": {"id": 1, "email": "rev@example.com"},
                "result": result,
                "was_cancelled": False,
                "created_at": "2026-11-28T09:00:00Z",
                "updated_at": "2026-11-28T09:00:00Z",
            }
        ]
        out.append(task)
    return out


@pytest.mark.slow
def test_discover_review_bug_knn_and_labeling_queue(project):
    _run(["ingest"])
    lake = Lake("data/lake")
    version = register_tiny_model(lake)
    budget = {"acquisition": {"budget": 12}}
    _run(["discover"], **budget)

    # Production scored the stream; review picked and exported tasks.
    assert _json(ITER0 / "production_report.json")["scored"] == 60
    tasks = _json(OUT0 / "review_tasks.json")
    queue = _latest(OUT0 / "review_queue.parquet")
    assert len(tasks) == len(queue) > 0
    assert all(t["data"]["image"].startswith("/data/local-files/?d=") for t in tasks)
    assert {t["predictions"][0]["model_version"] for t in tasks} == {version}
    assert (
        '<Choices name="verdict"' in (OUT0 / "review_labeling_config.xml").read_text()
    )
    # Embeddings come from the promoted model's encoder, never a random network.
    emb = _json(ITER0 / "embedding_report.json")
    assert emb["weights"] == f"model:{version}" and (emb["new"], emb["reused"]) == (
        60,
        0,
    )
    clusters = pd.read_parquet(OUT0 / "clusters.parquet")
    assert clusters["image_id"].nunique() == 60 and set(clusters["level"]) == {0}
    # Novelty against the labelled images outside the test split, which the
    # embedder also embedded; review ranked its confidence checks by it.
    images, labels = lake.read("images"), lake.read("labels")
    reference = images[
        images["image_id"].isin(labels["image_id"]) & (images["split"] != "test")
    ]
    assert emb["reference"]["images"] == emb["reference"]["new"] == len(reference)
    assert len(reference) > 0
    novelty = pd.read_parquet(OUT0 / "novelty_scores.parquet")
    assert set(novelty["image_id"]) == set(clusters["image_id"])
    assert novelty["novelty"].between(0, 1, inclusive="right").all()
    assert not set(novelty["image_id"]) & set(reference["image_id"])
    review = _json(ITER0 / "review_summary.json")
    assert (review["with_novelty"], review["with_cluster"]) == (60, 60)
    most_novel = novelty.nlargest(1, "novelty")["image_id"].item()
    # Colour histograms are stored like embeddings, one per image.
    hist_parts = sorted(Path("data/04_feature/embeddings/colour-hist8__none").iterdir())
    assert hist_parts
    assert most_novel in set(queue["image_id"])
    assert len(list((ITER0 / "cluster_montages").glob("cluster_*.png"))) == 8
    assert (ITER0 / "embedding_map.png").stat().st_size > 10_000
    # No bugs yet: no KNN; the labeling queue is confidence picks plus random.
    assert pd.read_parquet(OUT0 / "knn_candidates.parquet").empty
    summary = _json(ITER0 / "acquisition_summary.json")
    assert summary["picked"] == 12 and summary["pool"] == 60
    # hitl's cold start counts what novelty's reference holds: labeled, not test.
    assert summary["labeled_outside_test"] == len(reference)
    assert summary["cold_start"] is False
    assert set(summary["per_reason"]) == {"low_confidence", "random"}
    assert summary["per_bug_tag"] == {}
    # hitl's confidence picks rank by novelty too, the most novel first.
    first = _latest(OUT0 / "labeling_queue.parquet")
    doubtful = first[first["reason"] == "low_confidence"]
    assert doubtful["detail"].str.startswith("novelty=").all()
    assert doubtful["image_id"].iloc[0] == most_novel

    # A reviewer flags three predictions as night bugs and one as correct.
    EXPORTS.mkdir(parents=True)
    export = _export(
        tasks,
        {
            0: ("bug", ["night"]),
            1: ("bug", ["night"]),
            2: ("bug", ["night"]),
            3: ("correct", []),
        },
    )
    (EXPORTS / "batch-1.json").write_text(json.dumps(export))
    _run(["discover"], **budget)
    report = _json(ITER0 / "review_import_report.json")
    assert (report["verdicts"], report["bugs_flagged"], report["quarantined"]) == (
        4,
        3,
        0,
    )
    assert report["new_bugs"] == ["bug-night-0"]
    assert [Path(s).name for s in report["sources"]] == ["batch-1.json"]
    # Incremental: the unchanged lake is not embedded again.
    assert _json(ITER0 / "embedding_report.json")["new"] == 0
    assert _json(ITER0 / "embedding_report.json")["reference"]["new"] == 0
    assert (
        sorted(Path("data/04_feature/embeddings/colour-hist8__none").iterdir())
        == hist_parts
    )
    knn = pd.read_parquet(OUT0 / "knn_candidates.parquet")
    seeds = {t["data"]["image_id"] for t in tasks[:3]}
    assert set(knn["bug_id"]) == {"bug-night-0"} and len(knn) == 50
    assert not seeds & set(knn["image_id"]) and knn["image_id"].is_unique
    assert knn["distance"].is_monotonic_increasing
    bugs = Lake("data/lake").read("edge_cases")
    assert sorted(bugs["status"]) == ["candidates", "open"]
    assert set(bugs["seed_image_ids"].iloc[0]) == seeds
    q = _latest(OUT0 / "labeling_queue.parquet")
    q = q.sort_values("rank")
    assert q["reason"].tolist()[:6] == ["bug_candidate"] * 6  # half of 12 first
    picked = q.loc[q["reason"] == "bug_candidate", "image_id"]
    assert picked.tolist() == knn["image_id"].tolist()[:6]  # nearest first
    # The bug share names its bug and condition; the other picks have none.
    bug_rows = q["reason"] == "bug_candidate"
    assert set(q.loc[bug_rows, "bug_id"]) == {"bug-night-0"}
    assert set(q.loc[bug_rows, "bug_tag"]) == {"night"}
    assert q.loc[~bug_rows, ["bug_id", "bug_tag"]].isna().all(axis=None)
    assert _json(ITER0 / "acquisition_summary.json")["per_bug_tag"] == {"night": 6}
    assert q["image_id"].is_unique and len(q) == 12
    assert Path(ITER0 / "knn_montages" / "bug-night-0.png").is_file()
    # With hitl.bug_seeds the flagged images themselves go first (the lake's
    # edge_cases give them), then the bug's nearest candidates.
    _run(
        ["acquisition"],
        acquisition={"budget": 12, "hitl": {"bug_seeds": True}},
    )
    q2 = _latest(OUT0 / "labeling_queue.parquet").sort_values("rank")
    assert q2["reason"].tolist()[:6] == ["bug_seed"] * 3 + ["bug_candidate"] * 3
    assert set(q2["image_id"].iloc[:3]) == seeds
    assert q2["image_id"].tolist()[3:6] == knn["image_id"].tolist()[:3]
    # A typical cold start (while fewer than a million are labeled) picks
    # from the similarity store's embeddings: no bugs, no doubt, none labeled.
    _run(
        ["acquisition"],
        acquisition={
            "budget": 12,
            "hitl": {"cold_start_labeled": 10**6, "cold_start_pick": "typical"},
        },
    )
    q3 = _latest(OUT0 / "labeling_queue.parquet").sort_values("rank")
    assert set(q3["reason"]) == {"typical"} and q3["image_id"].is_unique
    assert len(q3) == 12 and (q3["score"] > 0).all()
    labeled = set(Lake("data/lake").read("labels")["image_id"])
    assert not labeled & set(q3["image_id"])
    assert _json(ITER0 / "acquisition_summary.json")["cold_start"] is True
    health = pd.read_csv(ITER0 / "model_health.csv")
    assert health["reviewed"].sum() == 4 and health["bugs"].sum() == 3

    # Re-importing the same export changes nothing.
    _run(["review"])
    assert _json(ITER0 / "review_import_report.json")["bug_events"] == 0
    assert len(Lake("data/lake").read("review_verdicts")) == 4

    # A malicious export is rejected whole; nothing more is stored.
    evil = _export(tasks, {4: ("bug", ["haze"])})
    evil[0]["data"]["image"] = "/data/local-files/?d=../../etc/passwd"
    (EXPORTS / "batch-2.json").write_text(json.dumps(evil))
    with pytest.raises(Exception, match="batch-2.json: rejected whole"):
        _run(["review"])
    assert len(Lake("data/lake").read("review_verdicts")) == 4
    assert len(Lake("data/lake").read("edge_cases")) == 2


@pytest.mark.slow
def test_drill_down_and_knn_query_by_image_ids(project):
    _run(["ingest"])
    register_tiny_model(Lake("data/lake"))
    _run(["production"])
    params = {"similarity": {"clustering": {"k": 3, "drill_path": [1]}}}
    _run(["similarity"], **params)
    first = pd.read_parquet(OUT0 / "clusters.parquet")
    assert sorted(set(first["level"])) == [0, 1]
    top, sub = first[first["level"] == 0], first[first["level"] == 1]
    assert set(sub["image_id"]) == set(top.loc[top["cluster"] == 1, "image_id"])
    assert set(sub["path"].str.slice(0, 2)) == {"1/"}
    assert sorted(p.name for p in (ITER0 / "cluster_montages").iterdir()) == [
        f"cluster_1-{c}.png" for c in sorted(set(sub["cluster"]))
    ]
    _run(["similarity"], **params)  # deterministic
    pd.testing.assert_frame_equal(first, pd.read_parquet(OUT0 / "clusters.parquet"))

    preds = Lake("data/lake").read("predictions").sort_values("image_id")
    query = preds["image_id"].iloc[:2].tolist()
    _run(["similarity"], similarity={"knn": {"n": 5, "image_ids": query}})
    knn = pd.read_parquet(OUT0 / "knn_candidates.parquet")
    assert len(knn) == 5 and set(knn["bug_id"]) == {"query"}
    assert not set(query) & set(knn["image_id"])

    # Once the nearest candidate is labelled, the same query leaves it out.
    nearest = knn["image_id"].iloc[0]
    _label_stream_image(Lake("data/lake"), nearest)
    _run(["similarity"], similarity={"knn": {"n": 5, "image_ids": query}})
    again = pd.read_parquet(OUT0 / "knn_candidates.parquet")
    assert len(again) == 5 and nearest not in set(again["image_id"])
    assert again["image_id"].tolist()[:4] == knn["image_id"].tolist()[1:]


def _label_stream_image(lake: Lake, image_id: str) -> None:
    """Adds a stream image to `images` and gives it a human label."""
    import numpy as np

    from edgeloop.classmap import ClassMap
    from edgeloop.features import image_features
    from edgeloop.imaging import decode_image
    from edgeloop.lake import ImageRecord, LabelRecord, LabelRegistry, add_images

    preds = lake.read("predictions").set_index("image_id")
    png = lake.get_blob(preds.at[image_id, "image_blob"])
    image = decode_image(png)
    record = ImageRecord(
        png=png,
        width=image.shape[1],
        height=image.shape[0],
        source="stream",
        source_path=f"{image_id}.png",
        features=image_features(image),
    )
    assert record.image_id == image_id
    add_images(lake, [record])
    classes = ClassMap.from_params(
        {
            "names": ["background", "fighter_jet", "airliner", "light_aircraft"],
            "ids": [0, 1, 2, 3],
            "palette": [[0, 0, 0], [220, 20, 60], [0, 114, 189], [237, 177, 32]],
        }
    )
    LabelRegistry(lake, classes).append(
        [
            LabelRecord(
                image_id=image_id,
                mask=np.zeros(image.shape[:2], np.uint8),
                origin="human",
                iteration=1,
                annotator="test",
            )
        ]
    )
