"""The simulated annotator, forgetting events, and the loop end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from helpers import write_png

from edgeloop.annotation import annotation_tasks, parse_annotation_export
from edgeloop.classmap import ClassMap
from edgeloop.imaging import decode_mask
from edgeloop.labelstudio import brush_results
from edgeloop.lake import Lake
from edgeloop.pseudo import PreLabel
from edgeloop.review_tasks import parse_review_export
from edgeloop.simulate import (
    AnnotatorConfig,
    LabeledFolder,
    SimulatedAnnotator,
    SimulationPlan,
    copy_project,
    discover_after_review,
    forgetting_events,
    labeled_picks,
    pool_tags,
    simulate_run,
)

PREFIX = "/data/local-files/?d="
VOCAB = ["day", "night", "glare", "haze"]


@pytest.fixture
def pool(tmp_path: Path) -> LabeledFolder:
    """Four 32x32 images: an object of class 1, 2, 3 and 1, with tags."""
    rng = np.random.default_rng(0)
    lines = []
    for i, (cls, tags) in enumerate(
        [(1, ["day"]), (2, ["night", "day"]), (3, ["glare"]), (1, ["haze"])]
    ):
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 4 + i : 20 + i] = cls
        write_png(tmp_path / "images" / f"s{i}.png", image)
        write_png(tmp_path / "truth" / "masks" / f"s{i}.png", mask)
        lines.append(json.dumps({"stem": f"s{i}", "tags": tags}))
    (tmp_path / "truth" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return LabeledFolder.from_folders(tmp_path / "images", tmp_path / "truth")


def _review_task(image_id: str, mask: np.ndarray, cm: ClassMap) -> dict:
    return {
        "data": {"image": f"{PREFIX}x/{image_id}.png", "image_id": image_id,
                 "request_id": f"r-{image_id[:8]}", "reasons": "random", "details": ""},
        "predictions": [{"model_version": "m", "result": brush_results(
            mask, list(cm.ids), list(cm.names), region_prefix=image_id)}],
    }  # fmt: skip


def test_reviewer_flags_bad_predictions_as_bugs_with_their_rare_tags(
    pool: LabeledFolder, class_map: ClassMap
):
    ids = pool.image_ids
    good = pool.mask(ids[0])
    wrong = np.zeros_like(pool.mask(ids[1]))  # misses the airliner entirely
    glare_wrong = np.where(pool.mask(ids[2]) > 0, 1, 0).astype(np.uint8)  # wrong class
    tasks = [
        _review_task(ids[0], good, class_map),
        _review_task(ids[1], wrong, class_map),
        _review_task(ids[2], glare_wrong, class_map),
        _review_task("f" * 64, good, class_map),  # not in the pool: unanswered
    ]
    annotator = SimulatedAnnotator(
        pool, class_map, vocabulary=VOCAB, config=AnnotatorConfig(tau=0.5)
    )
    export, stats = annotator.review(tasks, iteration=2)
    assert stats == {"reviews": 3, "bugs": 2, "skipped": 1, "cost": pytest.approx(0.3)}
    verdicts, bad = parse_review_export(
        export, vocabulary=[*VOCAB, "other"], allowed_url_prefixes=[PREFIX]
    )
    assert bad.empty
    by_image = verdicts.set_index("image_id")
    assert by_image.loc[ids[0], "verdict"] == "correct"
    assert by_image.loc[ids[1], "verdict"] == "bug"
    assert list(by_image.loc[ids[1], "tags"]) == ["night"]  # day is not a bug tag
    assert list(by_image.loc[ids[2], "tags"]) == ["glare"]
    assert set(verdicts["reviewer"]) == {"simulated-reviewer@edgeloop.local"}
    # Same iteration, same answers: reruns write identical files.
    again, _ = annotator.review(tasks, iteration=2)
    assert again == export


def test_annotator_answers_go_through_the_import_and_equal_truth(
    pool: LabeledFolder, class_map: ClassMap
):
    ids = pool.image_ids
    queue = pd.DataFrame({"image_id": ids, "reason": "random", "detail": ""})
    pre = {
        i: [(PreLabel("own_model", np.zeros((32, 32), np.uint8), tuple(class_map.names),
                      0.5), 0.5)]
        for i in ids
    }  # fmt: skip
    tasks = annotation_tasks(
        queue, pre, image_urls={i: f"{PREFIX}lake/{i}.png" for i in ids}
    )
    annotator = SimulatedAnnotator(
        pool,
        class_map,
        vocabulary=VOCAB,
        config=AnnotatorConfig(pixel_cost=0.001),
    )
    export, stats = annotator.label(tasks, iteration=1)
    changed = sum(int((pool.mask(i) > 0).sum()) for i in ids)
    assert stats["masks"] == 4 and stats["changed_pixels"] == changed
    assert stats["cost"] == pytest.approx(4 + changed * 0.001)
    labels, bad = parse_annotation_export(
        export,
        class_map=class_map,
        sizes={i: (32, 32) for i in ids},
        allowed_url_prefixes=[PREFIX],
    )
    assert bad.empty and len(labels) == 4
    for row in labels.itertuples():
        np.testing.assert_array_equal(row.mask, pool.mask(row.image_id))
        assert row.started_from == "own_model"
        assert row.pre_changed_frac == pytest.approx(
            (pool.mask(row.image_id) > 0).mean()
        )
    assert set(labels["annotator"]) == {"simulated-annotator@edgeloop.local"}


def test_label_noise_paints_objects_with_another_class(
    pool: LabeledFolder, class_map: ClassMap
):
    ids = pool.image_ids
    tasks = [{"data": {"image": f"{PREFIX}{i}", "image_id": i}} for i in ids]
    noisy = SimulatedAnnotator(
        pool, class_map, vocabulary=VOCAB, config=AnnotatorConfig(label_noise=1.0)
    )
    export, _ = noisy.label(tasks, iteration=0)
    labels, _ = parse_annotation_export(
        export,
        class_map=class_map,
        sizes={i: (32, 32) for i in ids},
        allowed_url_prefixes=[PREFIX],
    )
    for row in labels.itertuples():
        truth = pool.mask(row.image_id)
        obj = truth > 0
        assert (row.mask[~obj] == 0).all()  # the shape is kept ...
        assert len(np.unique(row.mask[obj])) == 1
        assert row.mask[obj][0] != truth[obj][0]  # ... with another object class
    with pytest.raises(ValueError, match="label_noise"):
        AnnotatorConfig.from_params({"label_noise": 2})
    with pytest.raises(ValueError, match="unknown simulation.annotator"):
        AnnotatorConfig.from_params({"tua": 0.3})


def test_forgetting_events_compare_promoted_models_on_big_slices():
    def rec(i, version, all_, night, n_night=40):
        return {"iteration": i, "promoted_version": version, "slices": {
            "all": {"miou": all_, "n": 300}, "cond:night": {"miou": night,
                                                            "n": n_night}}}  # fmt: skip

    records = [
        rec(0, "a", 0.50, 0.40),
        rec(1, "a", 0.50, 0.40),  # not a new model: nothing to judge
        rec(2, "b", 0.55, 0.36),  # night drops 0.04 > 0.03: an event
        rec(3, "c", 0.56, 0.30, n_night=10),  # too few images to judge
        rec(4, "d", 0.57, 0.34),
    ]
    events = forgetting_events(records, min_images=30, drop=0.03)
    assert [(e["iteration"], e["slice"]) for e in events] == [(2, "cond:night")]
    assert events[0]["delta"] == pytest.approx(-0.04)


# -- the loop end to end ----------------------------------------------------------


def test_the_second_discover_run_reuses_the_similarity_context_and_skips_nothing_else():
    from edgeloop.pipelines.discover import create_pipeline

    discover = create_pipeline()
    context = {"embed_images", "cluster_images", "score_novelty"}
    first = {n.name for n in discover.to_nodes("export_review_tasks").nodes}
    second = set(discover_after_review())
    assert context <= first and not context & second
    # Every discover node runs in one of the two runs; only review's own nodes
    # run in both (again with this iteration's verdicts).
    assert first | second == {n.name for n in discover.nodes}
    assert first & second == {
        "lake_after_production",
        "import_review_verdicts",
        "build_review",
        "export_review_tasks",
    }


BUDGET, ITERATIONS = 6, 2


def _simulate(project: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        str(Path(sys.executable).with_name("edgeloop")),
        "simulate", "--env", "ci", "--strategy", "hitl", "--seeds", "0",
        "--iterations", str(ITERATIONS), "--budget", str(BUDGET),
        "--project", str(project), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, str]:
    """The same tiny simulation twice, in two folders, with seed 0."""
    root = tmp_path_factory.mktemp("sim")
    project = copy_project(REPO, root / "project")
    first = _simulate(project, root / "a")
    _simulate(project, root / "b")
    return root / "a", root / "b", first.stdout


@pytest.mark.slow
def test_simulated_answers_flow_through_the_import_and_the_registry_grows_by_the_budget(
    two_runs,
):
    out, _, stdout = two_runs
    run = out / "runs" / "hitl-seed0"
    state = json.loads((run / "state.json").read_text())
    assert [r["masks"] for r in state["records"]] == [0, BUDGET, 2 * BUDGET]
    # The answers are Label Studio export files in the folders people's go to ...
    for k in range(ITERATIONS):
        assert (
            run / f"data/01_raw/annotation_exports/simulated-iter{k}.json"
        ).is_file()
        assert (run / f"data/01_raw/review_exports/simulated-iter{k}.json").is_file()
    # ... and the labels came in through the annotation import, budget by budget.
    lake = Lake(str(run / "data" / "lake"))
    labels = lake.read("labels")
    human = labels[labels["origin"] == "human"]
    assert human.groupby("iteration").size().to_dict() == {1: BUDGET, 2: BUDGET}
    assert set(human["annotator"]) == {"simulated-annotator@edgeloop.local"}
    for k in (1, 2):
        report = json.loads(
            (
                run / f"data/08_reporting/iter_{k}/annotation_import_report.json"
            ).read_text()
        )
        assert report["quarantined"] == 0 and report["images_added"] == BUDGET
    # The labels equal the truth of the pool, pixel for pixel.
    pool = LabeledFolder.from_folders(
        run / "data/01_raw/synthetic/stream/images", run / "data/01_raw/truth/stream"
    )
    for row in human.itertuples():
        np.testing.assert_array_equal(
            decode_mask(lake.get_blob(row.mask_blob)), pool.mask(row.image_id)
        )
    # Review verdicts came in the same way (hitl pays for them).
    reviews = sum(s["review"]["reviews"] for s in state["stats"] if "review" in s)
    assert reviews > 0 and len(lake.read("review_verdicts")) == reviews
    assert state["records"][-1]["cost"] == pytest.approx(2 * BUDGET + 0.1 * reviews)
    # Report: curves, summary, plots and every iteration's card.
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["iteration"]) == {0, 1, 2} and "all" in set(curves["slice"])
    for name in ("summary.csv", "forgetting.csv", "learning_curves.png"):
        assert (out / name).stat().st_size > 0
    for k in range(ITERATIONS + 1):
        assert (out / f"cards/hitl/seed0/iter_{k}/model_card.json").is_file()
    assert "iteration 2" in stdout


@pytest.mark.slow
def test_labeled_picks_are_the_queues_with_their_true_tags(two_runs):
    out, _, _ = two_runs
    run = out / "runs" / "hitl-seed0"
    picks = labeled_picks(out)
    # Every labeling queue of the run, one row per labeled mask, by iteration.
    assert picks["iteration"].value_counts().sort_index().to_dict() == {
        k: BUDGET for k in range(1, ITERATIONS + 1)
    }
    assert set(picks["strategy"]) == {"hitl"} and set(picks["seed"]) == {0}
    # hitl labelled some of the bugs' neighbours, so the bug_tag branch runs.
    assert picks["reason"].str.startswith("bug_").any()
    for k in range(ITERATIONS):
        queue = pd.read_parquet(
            run / f"data/07_model_output/iter_{k}/labeling_queue.parquet"
        )
        mine = picks[picks["iteration"] == k + 1]
        assert list(mine["image_id"]) == list(queue["image_id"])
        assert list(mine["reason"]) == list(queue["reason"])
        # A bug's pick carries the condition of its bug (the one its detail
        # names, e.g. "bug-3 (night): #2 nearest to ..."); no other pick does.
        for pick, row in zip(mine.itertuples(), queue.itertuples(), strict=True):
            if pick.reason.startswith("bug_"):
                assert pick.bug_tag == row.bug_tag
                assert row.detail.startswith(f"{row.bug_id} ({pick.bug_tag}):")
            else:
                assert pd.isna(pick.bug_tag) and pd.isna(row.bug_id)
    # The tags are the pool's truth (the metadata the annotator reads).
    truth = LabeledFolder.from_folders(
        run / "data/01_raw/synthetic/stream/images", run / "data/01_raw/truth/stream"
    )
    assert pool_tags(run) == truth.tags
    for pick in picks.itertuples():
        assert pick.tags == truth.tags[pick.image_id]
    assert any(picks["tags"].map(len))


def _card(path: Path) -> dict:
    card = json.loads(path.read_text())
    card.pop("volatile")
    return card


@pytest.mark.slow
def test_the_same_seed_reproduces_the_cards_and_the_curves(two_runs):
    a, b, _ = two_runs
    for k in range(ITERATIONS + 1):
        rel = f"cards/hitl/seed0/iter_{k}/model_card.json"
        assert _card(a / rel) == _card(b / rel), f"iteration {k} card differs"
    assert (a / "curves.csv").read_text() == (b / "curves.csv").read_text()


def test_labeled_picks_read_only_the_latest_version_of_a_queue(tmp_path):
    """A resumed acquisition can save a queue twice: the latest is the one labelled."""
    run = tmp_path / "runs" / "hitl-seed0"
    images, truth = (
        run / "data/01_raw/synthetic/stream/images",
        run / "data/01_raw/truth/stream",
    )
    lines = []
    for i, tag in enumerate(["night", "glare"]):
        write_png(images / f"s{i}.png", np.full((8, 8, 3), 40 * i, np.uint8))
        write_png(truth / "masks" / f"s{i}.png", np.zeros((8, 8), np.uint8))
        lines.append(json.dumps({"stem": f"s{i}", "tags": [tag]}) + "\n")
    (truth / "metadata.jsonl").write_text("".join(lines))
    stems = LabeledFolder.from_folders(images, truth).stems
    ids = [next(k for k, v in stems.items() if v == f"s{i}") for i in range(2)]
    (run / "state.json").write_text("{}")
    queue = run / "data/07_model_output/iter_0/labeling_queue.parquet"
    for version, image_id in [
        ("2026-12-05T10.00.00.000Z", ids[0]),
        ("2026-12-05T11.00.00.000Z", ids[1]),
    ]:
        (queue / version).mkdir(parents=True)
        pd.DataFrame({"image_id": [image_id], "reason": ["random"], "bug_tag": [None]}
                     ).to_parquet(queue / version / queue.name)  # fmt: skip
    picks = labeled_picks(tmp_path)
    assert list(picks["image_id"]) == [ids[1]] and list(picks["iteration"]) == [1]
    assert list(picks["tags"]) == [("glare",)]
    # A folder with no saved version is named in the error.
    empty = run / "data/07_model_output/iter_1/labeling_queue.parquet"
    empty.mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match="iter_1/labeling_queue.parquet holds no"
    ):
        labeled_picks(tmp_path)


def test_stop_before_names_the_stages_it_knows(tmp_path):
    plan = SimulationPlan(project=tmp_path, out=tmp_path / "out", env="ci")
    for bad in ("train", "0:fit", "x:train", "-1:train"):
        with pytest.raises(ValueError, match="stop_before must be"):
            simulate_run(plan, 0, stop_before=bad)
    with pytest.raises(ValueError, match="past the run's 3 iteration"):
        simulate_run(plan, 0, stop_before="3:train")  # iterations 0-2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_stop_before_stops_a_run_there_and_a_later_call_resumes_it(two_runs, tmp_path):
    a, _, _ = two_runs
    shutil.copytree(a / "runs" / "hitl-seed0", tmp_path / "runs" / "hitl-seed0")
    plan = SimulationPlan(
        project=a.parent / "project",
        out=tmp_path,
        strategy="hitl",
        iterations=ITERATIONS + 1,
        budget=BUDGET,
        env="ci",
        progress=False,
    )
    run = tmp_path / "runs" / "hitl-seed0"
    last = f"{ITERATIONS}:"

    def done() -> list[str]:
        return json.loads((run / "state.json").read_text())["done"]

    records = simulate_run(plan, 0, stop_before=last + "train")
    assert len(records) == ITERATIONS + 1  # no new record: it stopped before training
    assert done()[-4:] == [
        last + s for s in ("discover-review", "review", "discover", "label")
    ]
    export = run / f"data/01_raw/annotation_exports/simulated-iter{ITERATIONS}.json"
    assert len(json.loads(export.read_text())) == BUDGET
    assert not (run / f"data/08_reporting/iter_{ITERATIONS + 1}").exists()
    # Resumed (here with another training seed), it trains, then stops again.
    plan.extra_params = {"training": {"seed": 7}}
    simulate_run(plan, 0, stop_before=last + "score")
    assert done()[-1] == last + "train"
    card = run / f"data/08_reporting/iter_{ITERATIONS + 1}/model_card.json"
    assert json.loads(card.read_text())["reproducibility"]["seed"] == 7
