"""Tests for edgeloop.vectorindex: search, exclusion, k-means and drill-down."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from edgeloop import vectorindex
from edgeloop.vectorindex import (
    VectorIndex,
    cluster_path,
    kmeans,
    knn_candidates,
    path_seed,
)


def _clustered(
    n: int, dim: int, clusters: int, *, sigma: float = 0.7, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 Gaussian blobs around N(0, 1) centres, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    noise = sigma * rng.standard_normal((n, dim)).astype(np.float32)
    return centres[labels] + noise, labels


def _ids(n: int) -> list[str]:
    return [f"img-{i:05d}" for i in range(n)]


def _brute(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """(Q, N) distances in the index's convention, float64."""
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        return 1.0 - q @ x.T
    return np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def _recall(approx: list, exact: list) -> float:
    hits = [
        len({i for i, _ in a} & {i for i, _ in e}) / len(e)
        for a, e in zip(approx, exact, strict=True)
    ]
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, list[str]]:
    x, _ = _clustered(600, 16, 6, seed=1)
    return x, _ids(len(x))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_matches_brute_force(small, metric):
    x, ids = small
    q = x[:5] + 0.1
    index = VectorIndex.build(x, ids, metric=metric, kind="exact")
    got = index.search(q, 10)
    want = _brute(x, q, metric)
    for row, hits in enumerate(got):
        order = np.argsort(want[row])[:10]
        assert [i for i, _ in hits] == [ids[j] for j in order]
        np.testing.assert_allclose(
            [d for _, d in hits], want[row, order], rtol=1e-4, atol=1e-5
        )


def test_auto_is_exact_below_threshold_and_one_d_query(small):
    x, ids = small
    index = VectorIndex.build(x, ids)
    assert (index.backend, index.kind) == ("sklearn", "exact")
    (hits,) = index.search(x[7], 1)
    assert hits[0][0] == ids[7]
    assert hits[0][1] == pytest.approx(0.0, abs=1e-5)


@pytest.fixture(scope="module")
def recall_data() -> dict:
    x, _ = _clustered(20_000, 64, 100, seed=2)
    q, _ = _clustered(200, 64, 100, seed=2)  # same centres, fresh noise
    q = q + 0.7 * np.random.default_rng(3).standard_normal(q.shape).astype(np.float32)
    ids = _ids(len(x))
    exact = VectorIndex.build(x, ids, kind="exact").search(q, 10)
    return {"x": x, "q": q, "ids": ids, "exact": exact}


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_faiss_recall_at_10(recall_data, kind):
    pytest.importorskip("faiss")
    d = recall_data
    index = VectorIndex.build(d["x"], d["ids"], kind=kind, seed=0)
    assert (index.backend, index.kind) == ("faiss", kind)
    assert _recall(index.search(d["q"], 10), d["exact"]) >= 0.95
    # Distances are in the exact backend's units (cosine distance).
    got = [dist for _, dist in index.search(d["q"][:1], 10)[0]]
    want = [dist for _, dist in d["exact"][0]]
    np.testing.assert_allclose(got[:3], want[:3], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_exclude_leaves_ids_out_and_still_returns_k(small, kind):
    if kind != "exact":
        pytest.importorskip("faiss")
    x, ids = small
    index = VectorIndex.build(x, ids, kind=kind, nlist=8, nprobe=1)
    full = VectorIndex.build(x, ids, kind="exact").search(x[:3], 40)
    # Leave out each query's 30 nearest neighbours: the search must over-fetch.
    exclude = {i for hits in full for i, _ in hits[:30]}
    got = index.search(x[:3], 10, exclude=exclude)
    for hits in got:
        assert len(hits) == 10
        assert not {i for i, _ in hits} & exclude
        dists = [dist for _, dist in hits]
        assert dists == sorted(dists)
    if kind == "exact":
        assert [i for i, _ in got[0]] == [
            i for i, _ in full[0][30:] if i not in exclude
        ][:10]


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_exclude_almost_everything_returns_what_remains(small, kind):
    if kind != "exact":
        pytest.importorskip("faiss")
    x, ids = small
    index = VectorIndex.build(x, ids, kind=kind, nlist=8, nprobe=1)
    keep = {ids[5], ids[300], ids[599]}
    (hits,) = index.search(x[:1], 10, exclude=set(ids) - keep)
    assert {i for i, _ in hits} == keep


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 12),
    n_excluded=st.integers(0, 40),
    seed=st.integers(0, 1000),
)
def test_exact_search_property(n, k, n_excluded, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    q = rng.standard_normal((2, 4)).astype(np.float32)
    ids = _ids(n)
    exclude = set(rng.choice(ids, size=min(n_excluded, n), replace=False))
    got = VectorIndex.build(x, ids, metric="l2").search(q, k, exclude=exclude)
    want = _brute(x, q, "l2")
    keep = np.array([i not in exclude for i in ids])
    for row, hits in enumerate(got):
        assert len(hits) == min(k, int(keep.sum()))
        assert not {i for i, _ in hits} & exclude
        np.testing.assert_allclose(
            [dist for _, dist in hits],
            np.sort(want[row][keep])[: len(hits)],
            rtol=1e-4,
            atol=1e-5,
        )


def test_knn_candidates_dedupes_and_excludes(small):
    x, ids = small
    index = VectorIndex.build(x, ids, kind="exact")
    seed_rows = [0, 1, 2]
    # Seeds 0-2 lie in one blob, so their neighbour lists overlap heavily.
    seed_vectors = x[seed_rows]
    seed_ids = [ids[i] for i in seed_rows]
    exclude = {ids[j] for j in np.argsort(_brute(x, x[:1], "cosine")[0])[3:8]}
    out = knn_candidates(index, seed_vectors, seed_ids, 25, exclude=exclude)

    assert list(out.columns) == ["image_id", "distance", "nearest_seed", "rank"]
    assert len(out) == 25 and out["image_id"].is_unique
    assert not set(out["image_id"]) & (exclude | set(seed_ids))
    assert out["rank"].tolist() == list(range(1, 26))
    # Brute force: min distance over seeds, seeds and exclusions removed.
    dist = _brute(x, seed_vectors, "cosine")  # (S, N)
    best = dist.min(0)
    allowed = [j for j in np.argsort(best) if ids[j] not in exclude | set(seed_ids)]
    assert out["image_id"].tolist() == [ids[j] for j in allowed[:25]]
    np.testing.assert_allclose(out["distance"], best[allowed[:25]], atol=1e-5)
    nearest = [seed_ids[s] for s in dist.argmin(0)[allowed[:25]]]
    assert out["nearest_seed"].tolist() == nearest


def test_knn_candidates_rejects_mismatched_seeds(small):
    x, ids = small
    index = VectorIndex.build(x, ids)
    with pytest.raises(ValueError, match="2 seed_ids for 3 seed_vectors"):
        knn_candidates(index, x[:3], ids[:2], 5)


def test_describe_contents(small):
    x, ids = small
    info = VectorIndex.build(x, ids, metric="l2", seed=7).describe()
    assert info["backend"] == "sklearn" and info["kind"] == "exact"
    assert (info["metric"], info["n"], info["dim"]) == ("l2", 600, 16)
    assert info["params"] == {"seed": 7, "algorithm": "brute", "metric": "euclidean"}
    assert info["build_seconds"] >= 0.0


def test_describe_faiss_params(small):
    pytest.importorskip("faiss")
    x, ids = small
    hnsw = VectorIndex.build(x, ids, kind="hnsw", ef_search=40)
    hnsw.set_search_params(ef_search=80)
    assert hnsw.describe()["params"] == {
        "seed": 0,
        "M": 32,
        "ef_construction": 64,
        "ef_search": 80,
        "build_threads": 1,
    }
    ivf = VectorIndex.build(x, ids, kind="ivf").describe()["params"]
    assert ivf["nlist"] == 15  # min(4 * sqrt(600) = 98, 600 // 39)
    assert ivf["nprobe"] == 8 and ivf["train_size"] == 600
    with pytest.raises(ValueError, match="nprobe applies to kind 'ivf'"):
        hnsw.set_search_params(nprobe=4)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_faiss_build_is_deterministic_for_a_seed(recall_data, kind):
    pytest.importorskip("faiss")
    d = recall_data
    x, ids, q = d["x"][:3000], d["ids"][:3000], d["q"][:50]
    # Low ef_search / nprobe so that any change in the graph or lists shows.
    kw = {"ef_search": 8, "nprobe": 1}
    a = VectorIndex.build(x, ids, kind=kind, seed=3, **kw)
    b = VectorIndex.build(x, ids, kind=kind, seed=3, **kw)
    assert a.search(q, 10) == b.search(q, 10)


def test_falls_back_to_sklearn_without_faiss(small, monkeypatch, caplog):
    x, ids = small
    monkeypatch.setattr(vectorindex, "_load_faiss", lambda: None)
    with caplog.at_level(logging.WARNING, logger="edgeloop.vectorindex"):
        index = VectorIndex.build(x, ids, kind="hnsw")
    assert index.backend == "sklearn"
    assert "faiss not installed" in caplog.text
    labels, _ = kmeans(x, 3, backend="faiss")
    assert labels.shape == (600,)


@pytest.mark.parametrize(
    ("vectors", "ids", "match"),
    [
        (np.zeros((0, 4)), [], r"vectors is empty"),
        (np.ones(4), ["a"], r"must be \(N, D\)"),
        (np.array([[1.0, np.nan]]), ["a"], r"1 rows with NaN"),
        (np.ones((2, 2)), ["a", "a"], r"ids must be unique.*'a'"),
        (np.ones((2, 2)), ["a"], r"1 ids for 2 vectors"),
        (np.array([[0.0, 0.0]]), ["a"], r"all-zero rows"),
    ],
)
def test_build_rejects_bad_input(vectors, ids, match):
    with pytest.raises(ValueError, match=match):
        VectorIndex.build(vectors, ids)


def test_build_rejects_unknown_kind(small):
    x, ids = small
    with pytest.raises(ValueError, match="unknown kind 'annoy'; valid: auto, exact"):
        VectorIndex.build(x, ids, kind="annoy")


def test_search_rejects_bad_queries(small):
    x, ids = small
    index = VectorIndex.build(x, ids)
    with pytest.raises(ValueError, match=r"\(Q, 16\).*got shape \(2, 8\)"):
        index.search(np.ones((2, 8)), 3)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 16), np.nan), 3)
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        index.search(x[:1], 0)


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_kmeans_recovers_separated_clusters(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    x, truth = _clustered(3000, 32, 8, sigma=0.2, seed=4)
    labels, centroids = kmeans(x, 8, seed=0, backend=backend)
    assert labels.shape == (3000,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(8))  # every vector, every cluster
    assert centroids.shape == (8, 32) and centroids.dtype == np.float32
    assert adjusted_rand_score(truth, labels) > 0.9
    again, _ = kmeans(x, 8, seed=0, backend=backend)
    np.testing.assert_array_equal(labels, again)


def test_kmeans_rejects_k_above_n():
    with pytest.raises(ValueError, match="k=5 is more than the 3 vectors"):
        kmeans(np.eye(3), 5)


@pytest.fixture(scope="module")
def hierarchy() -> tuple[np.ndarray, list[str]]:
    x, _ = _clustered(800, 16, 4, sigma=0.5, seed=5)
    return x, _ids(len(x))


def test_cluster_path_top_level_and_drill_down(hierarchy):
    x, ids = hierarchy
    top = cluster_path(x, ids, [], k=3, seed=1)
    assert list(top.columns) == ["image_id", "cluster", "path"]
    assert top["image_id"].tolist() == ids
    assert (top["path"] == top["cluster"].astype(str)).all()
    want, _ = kmeans(x, 3, seed=path_seed(1, []))
    np.testing.assert_array_equal(top["cluster"], want)

    sub = cluster_path(x, ids, [2], k=3, seed=1)
    members = top.loc[top["cluster"] == 2, "image_id"].tolist()
    assert sub["image_id"].tolist() == members
    assert set(sub["cluster"]) == {0, 1, 2}
    assert (sub["path"] == "2/" + sub["cluster"].astype(str)).all()

    deeper = cluster_path(x, ids, [2, 0], k=3, seed=1)
    assert set(deeper["image_id"]) == set(sub.loc[sub["cluster"] == 0, "image_id"])
    assert deeper["path"].str.startswith("2/0/").all()
    pd.testing.assert_frame_equal(deeper, cluster_path(x, ids, [2, 0], k=3, seed=1))


def test_path_seed_depends_on_seed_and_path():
    seeds = {
        path_seed(0, []),
        path_seed(0, [1]),
        path_seed(0, [1, 0]),
        path_seed(1, []),
    }
    assert len(seeds) == 4
    assert path_seed(0, [1, 0]) == path_seed(0, (1, 0))


def test_cluster_path_validates_path(hierarchy):
    x, ids = hierarchy
    with pytest.raises(
        ValueError, match=r"path\[1\]=3 is out of range at level 1.*0\.\.2"
    ):
        cluster_path(x, ids, [0, 3], k=3)
    with pytest.raises(ValueError, match=r"path\[0\]=-1 .* level 0"):
        cluster_path(x, ids, [-1], k=3)
    # Splitting into 300 leaves clusters of a few members: too small to split.
    with pytest.raises(
        ValueError, match=r"cluster 0 at level 1 has \d+ members.*k=300"
    ):
        cluster_path(x, ids, [0], k=300)
    with pytest.raises(ValueError, match=r"the top level at level 0 has 800 members"):
        cluster_path(x, ids, [], k=801)


def _rare_direction(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """600 vectors; 30 share a small offset on 2 of 16 dims that vary little.

    The other dims carry big nuisance variance (a pose, a background), so the
    rare images' nearest neighbours are mostly common ones, while what they
    share is visible only against the collection's covariance (hence a small
    shrinkage: a ridge of the mean variance would drown the two quiet dims).
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((600, 16)) * np.r_[np.full(14, 3.0), 0.2, 0.2]
    rare = np.zeros(600, dtype=bool)
    rare[rng.choice(600, 30, replace=False)] = True
    x[rare, 14:] += 1.0
    x[:, 0] += 10.0  # a shared offset: cosine geometry, not centred data
    return x.astype(np.float32), rare


def test_discriminative_query_finds_what_the_seeds_share():
    x, rare = _rare_direction()
    ids = _ids(len(x))
    index = VectorIndex.build(x, ids, kind="exact")
    seeds = np.flatnonzero(rare)[:5]
    seed_ids = [ids[i] for i in seeds]
    label = dict(zip(ids, rare.tolist(), strict=True))
    background = vectorindex.QueryBackground.fit(x, shrinkage=0.01)

    def precision(query: str) -> float:
        out = knn_candidates(
            index, x[seeds], seed_ids, 20, query=query, background=background
        )
        assert len(out) == 20 and not set(out["image_id"]) & set(seed_ids)
        assert out["rank"].tolist() == list(range(1, 21))
        assert out["distance"].is_monotonic_increasing
        return float(np.mean([label[i] for i in out["image_id"]]))

    nearest, disc = precision("nearest_seed"), precision("discriminative")
    # 25 rare images are left to find; nearest-seed finds few of them.
    assert disc >= 0.9 and nearest <= 0.4, (disc, nearest)
    out = knn_candidates(
        index, x[seeds], seed_ids, 5, query="discriminative", background=background
    )
    assert set(out["nearest_seed"]) == {"(all)"}


def test_query_background_maths_and_errors():
    rng = np.random.default_rng(3)
    bg = rng.standard_normal((200, 4)).astype(np.float32)
    seeds = bg[:3] + np.float32(2.0)
    fitted = vectorindex.QueryBackground.fit(bg, shrinkage=0.5)
    w = fitted.query(seeds)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    b, s = unit(bg.astype(np.float64)), unit(seeds.astype(np.float64))
    cov = np.cov(b, rowvar=False)
    cov += 0.5 * np.trace(cov) / 4 * np.eye(4)
    expected = np.linalg.solve(cov, s.mean(0) - b.mean(0))
    np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-6)
    # A seeded sample of the background is used above max_rows.
    sample = vectorindex.QueryBackground.fit(bg, max_rows=50, seed=1)
    again = vectorindex.QueryBackground.fit(bg, max_rows=50, seed=1)
    np.testing.assert_array_equal(sample.query(seeds), again.query(seeds))
    assert not np.allclose(sample.mean, fitted.mean)  # 50 rows, not 200
    with pytest.raises(ValueError, match="shrinkage must be > 0"):
        vectorindex.QueryBackground.fit(bg, shrinkage=0)
    with pytest.raises(ValueError, match="background must be"):
        vectorindex.QueryBackground.fit(bg[:1])
    with pytest.raises(ValueError, match="the background 4"):
        fitted.query(seeds[:, :3])
    index = VectorIndex.build(bg, _ids(200))
    with pytest.raises(ValueError, match="needs a QueryBackground"):
        knn_candidates(index, seeds, _ids(3), 5, query="discriminative")
    with pytest.raises(ValueError, match="unknown query 'centroid'"):
        knn_candidates(index, seeds, _ids(3), 5, query="centroid")


def test_fused_query_adds_what_each_space_sees():
    """Two spaces that each see the rare images poorly find them together."""
    rng = np.random.default_rng(0)
    rare = np.zeros(600, dtype=bool)
    rare[rng.choice(600, 30, replace=False)] = True

    def view(seed: int) -> np.ndarray:
        # Its own nuisance; the rare images share a weak offset on 2 quiet dims.
        v = np.random.default_rng(seed).standard_normal((600, 16))
        v *= np.r_[np.full(14, 3.0), 0.2, 0.2]
        v[rare, 14:] += 0.5
        v[:, 0] += 10.0
        return v.astype(np.float32)

    x, y = view(1), view(2)
    ids = _ids(len(x))
    seeds = np.flatnonzero(rare)[:5]
    seed_ids = [ids[i] for i in seeds]
    bx = vectorindex.QueryBackground.fit(x, shrinkage=0.01)
    by = vectorindex.QueryBackground.fit(y, shrinkage=0.01)

    def precision(weights: tuple[float, float]) -> float:
        spaces = [
            vectorindex.QuerySpace(x, x[seeds], bx, weights[0]),
            vectorindex.QuerySpace(y, y[seeds], by, weights[1]),
        ]
        out = vectorindex.fused_candidates(ids, spaces, seed_ids, 25)
        assert list(out.columns) == ["image_id", "distance", "nearest_seed", "rank"]
        assert len(out) == 25 and not set(out["image_id"]) & set(seed_ids)
        assert out["distance"].is_monotonic_increasing
        return float(rare[[ids.index(i) for i in out["image_id"]]].mean())

    only_x, only_y, both = precision((1, 0)), precision((0, 1)), precision((1, 1))
    # Measured: 0.48 and 0.60 alone, 0.76 fused.
    assert both >= max(only_x, only_y) + 0.1, (only_x, only_y, both)

    # One space alone ranks like the index's discriminative query.
    index = VectorIndex.build(x, ids, kind="exact")
    plain = knn_candidates(
        index, x[seeds], seed_ids, 25, query="discriminative", background=bx
    )
    alone = vectorindex.fused_candidates(
        ids, [vectorindex.QuerySpace(x, x[seeds], bx)], seed_ids, 25
    )
    assert alone["image_id"].tolist() == plain["image_id"].tolist()

    # Excluding images does not reorder the rest.
    spaces = [
        vectorindex.QuerySpace(x, x[seeds], bx),
        vectorindex.QuerySpace(y, y[seeds], by),
    ]
    first = vectorindex.fused_candidates(ids, spaces, seed_ids, 10)
    gone = set(first["image_id"].iloc[[0, 3]])
    again = vectorindex.fused_candidates(ids, spaces, seed_ids, 8, exclude=gone)
    kept = [i for i in first["image_id"] if i not in gone]
    assert again["image_id"].tolist() == kept
    np.testing.assert_allclose(
        again["distance"], first.set_index("image_id").loc[kept, "distance"]
    )

    with pytest.raises(ValueError, match="at least one space"):
        vectorindex.fused_candidates(ids, [], seed_ids, 5)
    with pytest.raises(ValueError, match=r"spaces\[1\].weight must be >= 0"):
        vectorindex.fused_candidates(
            ids, [spaces[0], spaces[1]._replace(weight=-1.0)], seed_ids, 5
        )
    with pytest.raises(ValueError, match=r"spaces\[0\].vectors has 599 rows"):
        vectorindex.fused_candidates(
            ids, [spaces[0]._replace(vectors=x[:-1])], seed_ids, 5
        )


def test_loo_weighting_leans_on_the_space_the_seeds_agree_in():
    """A space that cannot tell the rare images apart gets (almost) no weight."""
    x, rare = _rare_direction(seed=0)
    noise = np.random.default_rng(9).standard_normal((600, 16)).astype(np.float32)
    noise[:, 0] += 5.0
    ids = _ids(len(x))
    seeds = np.flatnonzero(rare)[:5]
    seed_ids = [ids[i] for i in seeds]
    spaces = [
        vectorindex.QuerySpace(
            x, x[seeds], vectorindex.QueryBackground.fit(x, shrinkage=0.01)
        ),
        vectorindex.QuerySpace(
            noise, noise[seeds], vectorindex.QueryBackground.fit(noise)
        ),
    ]
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    w_x = vectorindex.loo_weight(unit(x.astype(np.float64)), spaces[0])
    w_noise = vectorindex.loo_weight(unit(noise.astype(np.float64)), spaces[1])
    assert w_x > 10 * w_noise, (w_x, w_noise)  # measured 8.87 and 0.54

    def precision(weighting: str) -> tuple[float, list[float]]:
        out = vectorindex.fused_candidates(
            ids, spaces, seed_ids, 20, weighting=weighting
        )
        return float(rare[[ids.index(i) for i in out["image_id"]]].mean()), out.attrs[
            "space_weights"
        ]

    fixed, fixed_w = precision("fixed")
    loo, loo_w = precision("loo")
    assert fixed_w == [1.0, 1.0] and loo_w == pytest.approx([w_x, w_noise])
    assert loo >= 0.9 and loo > fixed, (loo, fixed)
    # One seed: nothing to leave out, weight 1.
    assert vectorindex.loo_weight(unit(x), spaces[0]._replace(seed_vectors=x[:1])) == 1
    with pytest.raises(ValueError, match="unknown weighting 'mean'"):
        vectorindex.fused_candidates(ids, spaces, seed_ids, 5, weighting="mean")


def test_a_space_where_the_seeds_look_like_everything_else_is_left_out():
    """E.g. object profiles when every predicted mask is empty."""
    x, rare = _rare_direction(seed=0)
    ids = _ids(len(x))
    seeds = np.flatnonzero(rare)[:5]
    same = np.tile(np.float32([0, 0, 1]), (len(x), 1))  # one profile for all
    spaces = [
        vectorindex.QuerySpace(
            x, x[seeds], vectorindex.QueryBackground.fit(x, shrinkage=0.01)
        ),
        vectorindex.QuerySpace(
            same, same[seeds], vectorindex.QueryBackground.fit(same)
        ),
    ]
    alone = vectorindex.fused_candidates(ids, spaces[:1], [ids[i] for i in seeds], 10)
    for weighting in vectorindex.WEIGHTINGS:
        out = vectorindex.fused_candidates(
            ids, spaces, [ids[i] for i in seeds], 10, weighting=weighting
        )
        assert out.attrs["space_weights"][1] == 0.0
        assert out["image_id"].tolist() == alone["image_id"].tolist()
    with pytest.raises(ValueError, match="in every space: no direction to query"):
        vectorindex.fused_candidates(ids, spaces[1:], [ids[i] for i in seeds], 10)
