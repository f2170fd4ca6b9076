"""Acquisition strategies on a hand-built pool."""

import numpy as np
import pandas as pd
import pytest

from edgeloop.acquisition import (
    AcquisitionConfig,
    select_for_labeling,
    unlabeled_pool,
)


def _preds(n: int = 40) -> pd.DataFrame:
    ids = [f"img{i:02d}" for i in range(n)]
    return pd.DataFrame(
        {
            "request_id": [f"r{i:02d}" for i in range(n)],
            "ts": pd.date_range("2026-01-05", periods=n, freq="10min", tz="UTC"),
            "image_id": ids,
            "image_blob": [f"blobs/images/{i}.png" for i in ids],
            # img00 is the least confident, img39 the most...
            "mean_max_prob": np.linspace(0.3, 0.99, n),
            "mean_entropy": np.linspace(1.2, 0.01, n),
            # ... and the most novel (confidently wrong on the unfamiliar).
            "novelty": np.linspace(0.01, 1.0, n),
        }
    )


def _cfg(**kw) -> AcquisitionConfig:
    hitl = kw.pop("hitl", {})
    return AcquisitionConfig.from_params({"budget": 10, **kw, "hitl": hitl})


def _select(pool, cfg, n_labeled=100, **kw) -> pd.DataFrame:
    """100 images labeled unless told otherwise (for hitl's cold start)."""
    return select_for_labeling(pool, cfg, n_labeled=n_labeled, **kw)


def test_pool_leaves_out_labeled_and_keeps_the_latest_prediction():
    preds = _preds(5)
    again = preds.iloc[[2]].assign(
        request_id="r99", ts=pd.Timestamp("2026-02-01", tz="UTC"), mean_max_prob=0.11
    )
    pool = unlabeled_pool(pd.concat([preds, again]), {"img00"})
    assert pool["image_id"].tolist() == ["img01", "img02", "img03", "img04"]
    assert pool.set_index("image_id").at["img02", "request_id"] == "r99"


def test_random_is_seeded_and_unique():
    pool = unlabeled_pool(_preds(), set())
    a = _select(pool, _cfg(strategy="random", seed=1))
    b = _select(pool, _cfg(strategy="random", seed=1))
    c = _select(pool, _cfg(strategy="random", seed=2))
    assert a["image_id"].tolist() == b["image_id"].tolist()
    assert a["image_id"].tolist() != c["image_id"].tolist()
    assert a["image_id"].is_unique and len(a) == 10
    assert set(a["reason"]) == {"random"} and a["rank"].tolist() == list(range(1, 11))


def test_entropy_takes_the_least_confident():
    pool = unlabeled_pool(_preds(), set())
    q = _select(pool, _cfg(strategy="entropy"))
    assert q["image_id"].tolist() == [f"img{i:02d}" for i in range(10)]
    assert set(q["reason"]) == {"least_confident"}
    assert q["detail"].iloc[0].startswith("mean_entropy=1.200")


def test_hitl_bugs_first_round_robin_then_capped_confidence_then_random():
    pool = unlabeled_pool(_preds(), {"img05"})
    knn = pd.DataFrame(
        {
            "bug_id": ["bug-a"] * 4 + ["bug-b"] * 3,
            "tag": ["night"] * 4 + ["haze"] * 3,
            # img05 is labeled (not in the pool): it must be skipped.
            "image_id": ["img30", "img05", "img31", "img32", "img35", "img30", "img36"],
            "distance": [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3],
            "nearest_seed": ["s"] * 7,
            "rank": [1, 2, 3, 4, 1, 2, 3],
        }
    )
    # Every image in one of two clusters: the cap keeps confidence picks diverse.
    clusters = pd.DataFrame(
        {"image_id": pool["image_id"], "cluster": [i % 2 for i in range(len(pool))]}
    )
    cfg = _cfg(
        strategy="hitl",
        hitl={"bugs": 0.5, "confidence": 0.3, "random": 0.2, "cluster_cap": 1},
    )
    q = _select(pool, cfg, knn=knn, clusters=clusters)
    assert len(q) == 10 and q["image_id"].is_unique
    bugs = q[q["reason"] == "bug_candidate"]
    # Round robin over bugs, nearest first; img30 is taken once.
    assert bugs["image_id"].tolist() == ["img30", "img35", "img31", "img36", "img32"]
    conf = q[q["reason"] == "low_confidence"]
    # By novelty; cap 1 per cluster: only two confidence picks, the rest rolls
    # over to random.
    assert conf["image_id"].tolist() == ["img39", "img38"]
    assert conf["detail"].iloc[0] == "novelty=1.000, cluster 0"
    assert (q["reason"] == "random").sum() == 3
    assert "img05" not in set(q["image_id"])


def test_hitl_bug_order_by_doubt_reorders_each_bugs_shortlist_only():
    pool = unlabeled_pool(_preds(), set())
    # bug-a's nearest are img30..img35 (rank 1..6), bug-b's img10..img12; lower
    # ids are more doubtful (higher mean_entropy) in _preds.
    knn = pd.DataFrame(
        {
            "bug_id": ["bug-a"] * 6 + ["bug-b"] * 3,
            "tag": ["night"] * 6 + ["haze"] * 3,
            "image_id": [f"img{i}" for i in (30, 31, 32, 33, 34, 35, 12, 11, 10)],
            "distance": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.1, 0.2, 0.3],
            "nearest_seed": ["s"] * 9,
            "rank": [1, 2, 3, 4, 5, 6, 1, 2, 3],
        }
    )

    def bugs(**hitl):
        cfg = _cfg(
            strategy="hitl",
            budget=12,
            hitl={"bugs": 1, "confidence": 0, "random": 0, **hitl},
        )
        q = _select(pool, cfg, knn=knn)
        return q[q["reason"] == "bug_candidate"]

    assert bugs()["image_id"].tolist()[:4] == ["img30", "img12", "img31", "img11"]
    # The 3 nearest of each bug, the most doubtful first, then the rest by rank.
    by_doubt = bugs(bug_order="mean_entropy", bug_shortlist=3)
    assert by_doubt["image_id"].tolist() == [
        "img30", "img10", "img31", "img11", "img32", "img12", "img33", "img34", "img35"
    ]  # fmt: skip
    assert by_doubt["detail"].iloc[1] == (
        "bug-b (haze): #3 nearest to s, mean_entropy=0.895"
    )
    # A score where lower is more doubtful is turned around.
    top = bugs(bug_order="mean_max_prob", bug_shortlist=6)["image_id"].tolist()
    assert top[:2] == ["img30", "img10"]
    with pytest.raises(ValueError, match="no 'novelty' scores to order bug"):
        _select(
            pool.drop(columns="novelty"),
            _cfg(strategy="hitl", hitl={"bug_order": "novelty"}),
            knn=knn,
        )


def test_hitl_bug_seeds_label_the_flagged_images_before_their_neighbours():
    pool = unlabeled_pool(_preds(), {"img07"})
    knn = pd.DataFrame(
        {
            "bug_id": ["bug-a"] * 2 + ["bug-b"] * 2,
            "tag": ["night"] * 2 + ["haze"] * 2,
            "image_id": ["img30", "img31", "img35", "img36"],
            "distance": [0.1, 0.2, 0.1, 0.2],
            "nearest_seed": ["img03", "img03", "img08", "img08"],
            "rank": [1, 2, 1, 2],
        }
    )
    # bug-a was flagged on img03 and img04; bug-b on img07 (labeled since) and
    # img08; bug-c has no candidates, only its own image.
    seeds = pd.DataFrame(
        {
            "bug_id": ["bug-a", "bug-a", "bug-b", "bug-b", "bug-c"],
            "tag": ["night", "night", "haze", "haze", "other"],
            "image_id": ["img03", "img04", "img07", "img08", "img09"],
        }
    )

    def queue(**hitl):
        cfg = _cfg(
            strategy="hitl",
            budget=7,
            hitl={"bugs": 1, "confidence": 0, "random": 0, **hitl},
        )
        return _select(pool, cfg, knn=knn, bug_seeds=seeds)

    # Off (the default): the flagged images are not in the bug share.
    off = queue()
    assert off["image_id"].tolist()[:4] == ["img30", "img35", "img31", "img36"]
    assert set(off["reason"]) == {"bug_candidate", "low_confidence"}
    on = queue(bug_seeds=True)
    # Round robin over bugs, each bug's unlabeled seeds first.
    assert on["image_id"].tolist() == [
        "img03", "img08", "img09", "img04", "img35", "img30", "img36"
    ]  # fmt: skip
    assert on["reason"].tolist() == ["bug_seed"] * 4 + ["bug_candidate"] * 3
    assert on["detail"].iloc[0] == "bug-a (night): the flagged image itself"
    # The bug share names its bug and condition in columns of their own.
    assert on["bug_id"].tolist()[:5] == ["bug-a", "bug-b", "bug-c", "bug-a", "bug-b"]
    assert on["bug_tag"].tolist()[:5] == ["night", "haze", "other", "night", "haze"]
    others = off[off["reason"] == "low_confidence"]
    assert others[["bug_id", "bug_tag"]].isna().all(axis=None)
    assert on["score"].iloc[0] == 0.0
    # Seeds stay first when the candidates are ordered by doubt.
    by_doubt = queue(bug_seeds=True, bug_order="mean_entropy")
    assert by_doubt["image_id"].tolist()[:4] == ["img03", "img08", "img09", "img04"]


def test_hitl_without_bugs_rolls_their_share_over():
    pool = unlabeled_pool(_preds(), set())
    q = _select(pool, _cfg(strategy="hitl"))
    assert (q["reason"] == "low_confidence").sum() == 8  # 5 (bugs) + 3
    assert (q["reason"] == "random").sum() == 2


def test_hitl_confidence_score_is_a_parameter_and_needs_its_column():
    pool = unlabeled_pool(_preds(), set())
    q = _select(pool, _cfg(strategy="hitl", hitl={"confidence_score": "mean_entropy"}))
    conf = q[q["reason"] == "low_confidence"]
    assert conf["image_id"].tolist() == [f"img{i:02d}" for i in range(8)]
    # An image without a novelty score (not yet embedded) is never picked by it.
    unscored = pool.assign(novelty=pool["novelty"].where(pool.index < 30))
    q = _select(unscored, _cfg(strategy="hitl"))
    conf = q[q["reason"] == "low_confidence"]
    assert conf["image_id"].tolist() == [f"img{i:02d}" for i in range(29, 21, -1)]
    with pytest.raises(ValueError, match="the pool has no 'novelty' scores"):
        _select(pool.drop(columns="novelty"), _cfg(strategy="hitl"))
    # The entropy baseline never needs novelty.
    q = _select(pool.drop(columns="novelty"), _cfg(strategy="entropy"))
    assert len(q) == 10


def test_hitl_cold_start_samples_the_clusters_in_proportion_then_hunts_bugs():
    pool = unlabeled_pool(_preds(), set())
    # Clusters of 20, 12 and 8 images.
    sizes = {"a": 20, "b": 12, "c": 8}
    clusters = pd.DataFrame(
        {
            "image_id": pool["image_id"],
            "cluster": [c for c, n in sizes.items() for _ in range(n)],
        }
    )
    knn = pd.DataFrame(
        {
            "bug_id": ["bug-a"] * 3,
            "tag": ["night"] * 3,
            "image_id": ["img39", "img38", "img37"],
            "distance": [0.1, 0.2, 0.3],
            "nearest_seed": ["s"] * 3,
            "rank": [1, 2, 3],
        }
    )
    cold_start = {"cold_start_labeled": 60}
    cfg = _cfg(strategy="hitl", budget=10, seed=3, hitl=cold_start)
    cold = _select(pool, cfg, n_labeled=59, knn=knn, clusters=clusters)
    # 59 < 60 labeled: no bug candidates, no doubt; 10 seats by cluster size
    # (5.0, 3.0, 2.0), random within each.
    assert set(cold["reason"]) == {"representative"} and cold["image_id"].is_unique
    of = clusters.set_index("image_id")["cluster"]
    assert cold["image_id"].map(of).value_counts().to_dict() == {"a": 5, "b": 3, "c": 2}
    assert cold["detail"].iloc[0] == "cluster a: 5 of 20 in the pool"
    again = _select(pool, cfg, n_labeled=59, knn=knn, clusters=clusters)
    assert cold["image_id"].tolist() == again["image_id"].tolist()  # seeded
    # Largest remainder: 7 seats of 20/12/8 -> 3.5, 2.1, 1.4 -> 4, 2, 1.
    seven = _select(
        pool,
        _cfg(strategy="hitl", budget=7, hitl=cold_start),
        n_labeled=0,
        clusters=clusters,
    )
    assert seven["image_id"].map(of).value_counts().to_dict() == {
        "a": 4,
        "b": 2,
        "c": 1,
    }
    # Images the clustering has not seen yet form a group of their own.
    some = clusters.iloc[4:].assign(cluster=lambda d: d["cluster"].map(ord))
    mixed = _select(pool, cfg, n_labeled=0, clusters=some)
    assert mixed["detail"].str.match(r"cluster (97|98|99|none): ").all()
    assert mixed["detail"].str.startswith("cluster none: 1 of 4 in the pool").any()
    # Without clusters it is a uniform sample of the pool.
    flat = _select(pool, cfg, n_labeled=0)
    assert set(flat["reason"]) == {"representative"} and len(flat) == 10
    # At 60 labeled the loop hunts bugs again; 0 (the default) is no cold start.
    warm = _select(pool, cfg, n_labeled=60, knn=knn, clusters=clusters)
    assert warm["image_id"].tolist()[:3] == ["img39", "img38", "img37"]
    off = _cfg(strategy="hitl", budget=10)  # the default: no cold start
    assert "representative" not in set(_select(pool, off, n_labeled=0)["reason"])
    # The baselines never have a cold start.
    assert set(_select(pool, _cfg(strategy="random"), n_labeled=0)["reason"]) == {
        "random"
    }


def _unit(degrees: float) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.array([np.cos(rad), np.sin(rad)])


TYPICAL = {"cold_start_labeled": 60, "cold_start_pick": "typical"}


def test_hitl_typical_cold_start_takes_the_core_of_each_uncovered_cluster():
    # Three directions: A (0 deg, wide, labeled at -10 and +10), B (120 deg,
    # 7 images), C (240 deg, 5 images); each core image sits at the centre.
    angles = {
        **{f"a{i}": -20 + 4 * i for i in range(11)},
        **{f"b{i}": 120 + d for i, d in enumerate([-3, -2, -1, 0, 1, 2, 3])},
        **{f"c{i}": 240 + d for i, d in enumerate([-4, -2, 0, 2, 4])},
    }
    preds = _preds(len(angles)).assign(image_id=list(angles))
    pool = unlabeled_pool(preds, set())
    vectors = pd.Series({i: _unit(a) for i, a in angles.items()}, dtype=object)
    labeled = np.stack([_unit(-10), _unit(10)])
    cfg = _cfg(strategy="hitl", budget=2, hitl=TYPICAL)
    q = _select(pool, cfg, n_labeled=2, vectors=vectors, labeled_vectors=labeled)
    # 4 clusters (2 labeled + 2); B and C hold no label, B is larger: its
    # centre first, then C's.
    assert q["image_id"].tolist() == ["b3", "c2"]
    assert set(q["reason"]) == {"typical"}
    assert (
        q["detail"]
        .str.fullmatch(r"cluster \d of 4: \d+ images, 0 labeled or picked")
        .all()
    )
    assert (q["score"] > 0).all()
    # Seeded: the same picks again; with nothing labeled it still covers
    # every direction before a second pick from any.
    again = _select(pool, cfg, n_labeled=2, vectors=vectors, labeled_vectors=labeled)
    assert again["image_id"].tolist() == q["image_id"].tolist()
    three = _select(
        pool,
        _cfg(strategy="hitl", budget=3, hitl=TYPICAL),
        n_labeled=0,
        vectors=vectors,
        labeled_vectors=np.empty((0, 2)),
    )
    assert sorted(i[0] for i in three["image_id"]) == ["a", "b", "c"]
    assert "b3" in set(three["image_id"]) and "c2" in set(three["image_id"])
    # Pool images without a vector are left to the random share.
    some = vectors.drop([i for i in angles if i.startswith("b")])
    part = _select(
        pool,
        _cfg(strategy="hitl", budget=17, hitl=TYPICAL),
        n_labeled=2,
        vectors=some,
        labeled_vectors=labeled,
    )
    typical = part.loc[part["reason"] == "typical", "image_id"]
    assert len(typical) == 16 and not typical.str.startswith("b").any()
    assert (
        part.loc[part["reason"] == "random", "image_id"].str.startswith("b").sum() == 1
    )
    # One embedding for both, or a clear error.
    with pytest.raises(ValueError, match="not one embedding"):
        _select(
            pool, cfg, n_labeled=2, vectors=vectors, labeled_vectors=np.ones((2, 3))
        )


def test_budget_larger_than_the_pool_takes_everything():
    pool = unlabeled_pool(_preds(4), set())
    q = _select(pool, _cfg(strategy="random", budget=50))
    assert sorted(q["image_id"]) == ["img00", "img01", "img02", "img03"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"strategy": "greedy"}, "acquisition.strategy"),
        ({"budget": -1}, "budget"),
        ({"uncertainty_score": "vibes"}, "uncertainty_score"),
        ({"hitl": {"confidence_score": "vibes"}}, "hitl.confidence_score"),
        ({"hitl": {"bugs": -1}}, "shares"),
        ({"hitl": {"cluster_cap": 0}}, "cluster_cap"),
        ({"hitl": {"cold_start_labeled": -1}}, "hitl.cold_start_labeled"),
        ({"hitl": {"cold_start_pick": "densest"}}, "hitl.cold_start_pick"),
        ({"hitl": {"bug_order": "closest"}}, "hitl.bug_order"),
        ({"hitl": {"bug_shortlist": 0}}, "hitl.bug_shortlist"),
        ({"hitl": {"bug_seeds": "yes"}}, "hitl.bug_seeds"),
        ({"budgett": 3}, "unknown key"),
    ],
)
def test_bad_config_names_the_problem(params, message):
    with pytest.raises(ValueError, match=message):
        AcquisitionConfig.from_params(params)
