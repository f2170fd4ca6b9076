"""Nearest neighbours and clustering over image feature vectors.

Edge-case discovery: given CNN features of every image, find more images like a
few seed edge cases (`knn_candidates`), cluster the collection (`kmeans`) and
drill into one cluster by re-clustering its members (`cluster_path`).

`VectorIndex` is one interface over two backends: scikit-learn's exact
`NearestNeighbors` for small collections and FAISS (HNSW or IVF) above
`faiss_threshold` vectors. FAISS is optional and imported lazily; without it
everything falls back to scikit-learn and logs that it did.

Distances: `metric="cosine"` L2-normalises vectors and reports the cosine
distance 1 - cos(a, b) in [0, 2]; `metric="l2"` reports the Euclidean distance.
Both backends report the same quantity, ascending.

Determinism: for a given seed, input order and thread count, every build,
search and clustering here returns the same result run after run. Exact search
is deterministic outright. HNSW level draws are seeded from `seed`, and the
graph is reproducible only when built with one thread (`build_threads=1`, the
default); with more threads the links depend on scheduling. IVF training and
FAISS k-means sample and initialise from `seed`; their float sums, and so rare
near-ties, may change with the number of OpenMP threads.

Example:
    >>> index = VectorIndex.build(features, image_ids)
    >>> index.search(features[:1], k=5, exclude={"img-0"})
    >>> knn_candidates(index, features[:3], image_ids[:3], 100)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from edgeloop.checks import check_int

log = logging.getLogger(__name__)

METRICS = ("cosine", "l2")
KINDS = ("auto", "exact", "hnsw", "ivf")
KMEANS_BACKENDS = ("auto", "faiss", "sklearn")
FAISS_THRESHOLD = 50_000


@functools.cache
def _load_faiss() -> ModuleType | None:
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@contextmanager
def _faiss_threads(faiss: ModuleType, threads: int | None) -> Iterator[None]:
    """Runs the block with `threads` OpenMP threads (None: leave as is)."""
    if threads is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _check_choice(value: str, valid: Sequence[str], name: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _as_matrix(x: Any, name: str, metric: str) -> np.ndarray:
    """A fresh (N, D) float32 copy of `x`, L2-normalised for cosine."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    out = np.array(arr, dtype=np.float32, order="C", copy=True)
    # Row sums of squares in float64, with no (N, D) temporary: a row holding
    # NaN or inf sums to NaN or inf (float32 squares cannot overflow float64).
    sq = np.einsum("ij,ij->i", out, out, dtype=np.float64)  # (N,)
    bad = ~np.isfinite(sq)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"{name} has {rows.size} rows with NaN or inf (first: {rows[:5].tolist()})"
        )
    if metric == "cosine":
        zero = np.flatnonzero(sq == 0)
        if zero.size:
            raise ValueError(
                f"{name} has {zero.size} all-zero rows (first: {zero[:5].tolist()}); "
                "cosine distance is undefined for them, use metric='l2'"
            )
        out /= np.sqrt(sq).astype(np.float32)[:, None]
    return out


def _check_ids(ids: Sequence[str], n: int) -> np.ndarray:
    """`ids` as an (N,) object array; they must be unique and one per vector."""
    arr = np.empty(len(ids), dtype=object)
    arr[:] = list(ids)
    if arr.size != n:
        raise ValueError(f"got {arr.size} ids for {n} vectors")
    counts = pd.Series(arr).value_counts()
    dups = counts[counts > 1]
    if len(dups):
        raise ValueError(
            f"ids must be unique; {len(dups)} repeat (e.g. {dups.index[:5].tolist()})"
        )
    return arr


def default_nlist(n: int) -> int:
    """IVF lists for n vectors: ~4 * sqrt(n), at most n / 39 so each trains."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int) -> int:
    """IVF lists probed per query: 1/16 of the lists, at least 8 (or all)."""
    return min(nlist, max(8, nlist // 16))


class VectorIndex:
    """Nearest-neighbour search over named vectors, exact or approximate.

    Build it with `VectorIndex.build`; the constructor is internal.

    Backends (`kind`):
        exact: scikit-learn `NearestNeighbors`, brute force; true neighbours.
        hnsw: FAISS `IndexHNSWFlat` (M=32); `ef_search` trades speed for recall.
        ivf: FAISS `IndexIVFFlat` with `nlist` ~ 4 * sqrt(n) lists; `nprobe`
            trades speed for recall.
        auto: exact up to `faiss_threshold` vectors, HNSW above (the lowest
            latency at high recall); exact when FAISS is not installed.
    """

    def __init__(
        self,
        *,
        ids: np.ndarray,
        metric: str,
        kind: str,
        dim: int,
        engine: Any,
        params: dict[str, Any],
        build_seconds: float,
    ) -> None:
        self._ids = ids
        self.metric = metric
        self.kind = kind
        self.dim = dim
        self._engine = engine
        self._params = params
        self.build_seconds = build_seconds

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[str],
        *,
        metric: str = "cosine",
        kind: str = "auto",
        seed: int = 0,
        faiss_threshold: int = FAISS_THRESHOLD,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 64,
        nlist: int | None = None,
        nprobe: int | None = None,
        build_threads: int | None = 1,
    ) -> VectorIndex:
        """Indexes (N, D) `vectors` under `ids`, one unique id per row.

        Args:
            vectors: (N, D) features; copied, never modified.
            ids: N unique image ids, in row order.
            metric: "cosine" (vectors L2-normalised) or "l2".
            kind: "auto", "exact", "hnsw" or "ivf" (see the class docstring).
                Without FAISS, "hnsw" and "ivf" fall back to "exact" with a
                warning.
            seed: Seeds HNSW level draws and IVF training.
            faiss_threshold: "auto" uses FAISS above this many vectors.
            hnsw_m: HNSW neighbours per node.
            ef_construction: HNSW build-time beam width.
            ef_search: HNSW search beam width (raised to k when k is larger).
            nlist: IVF lists; None: `default_nlist(N)`.
            nprobe: IVF lists searched per query; None: `default_nprobe(nlist)`.
            build_threads: OpenMP threads for the FAISS build; 1 makes HNSW
                reproducible, None keeps the process setting.

        Raises:
            ValueError: Empty vectors, NaN or inf, all-zero rows under cosine,
                ids not unique or not one per row, or an unknown metric or kind.
        """
        _check_choice(metric, METRICS, "metric")
        _check_choice(kind, KINDS, "kind")
        start = time.perf_counter()
        x = _as_matrix(vectors, "vectors", metric)  # (N, D) float32
        id_arr = _check_ids(ids, len(x))
        n, dim = x.shape
        faiss = _load_faiss()
        if kind == "auto":
            kind = "hnsw" if n > faiss_threshold else "exact"
            if kind != "exact" and faiss is None:
                log.info("faiss not installed: exact scikit-learn search for %d", n)
                kind = "exact"
        elif kind != "exact" and faiss is None:
            log.warning("faiss not installed: kind=%r falls back to exact", kind)
            kind = "exact"

        if kind == "exact":
            from sklearn.neighbors import NearestNeighbors

            # Squared L2 on unit vectors beats sklearn's "cosine", which
            # re-normalises every indexed vector on each query.
            sk_metric = "sqeuclidean" if metric == "cosine" else "euclidean"
            engine = NearestNeighbors(algorithm="brute", metric=sk_metric).fit(x)
            params: dict[str, Any] = {"algorithm": "brute", "metric": sk_metric}
        elif kind == "hnsw":
            engine = faiss.IndexHNSWFlat(dim, int(hnsw_m))
            engine.hnsw.rng = faiss.RandomGenerator(int(seed))
            engine.hnsw.efConstruction = int(ef_construction)
            engine.hnsw.efSearch = int(ef_search)
            with _faiss_threads(faiss, build_threads):
                engine.add(x)
            params = {
                "M": int(hnsw_m),
                "ef_construction": int(ef_construction),
                "ef_search": int(ef_search),
                "build_threads": build_threads,
            }
        else:
            nlist = min(
                check_int(nlist, "nlist", minimum=1)
                if nlist is not None
                else default_nlist(n),
                n,
            )
            train_size = min(n, 50 * nlist)
            engine = faiss.index_factory(dim, f"IVF{nlist},Flat")
            engine.cp.seed = int(seed)
            rng = np.random.default_rng(seed)
            sample = x if train_size == n else x[rng.choice(n, train_size, False)]
            with _faiss_threads(faiss, build_threads):
                engine.train(sample)
                engine.add(x)
            nprobe = (
                check_int(nprobe, "nprobe", minimum=1)
                if nprobe is not None
                else default_nprobe(nlist)
            )
            engine.nprobe = min(nprobe, nlist)
            params = {
                "nlist": nlist,
                "nprobe": int(engine.nprobe),
                "train_size": train_size,
                "build_threads": build_threads,
            }
        backend = "sklearn" if kind == "exact" else "faiss"
        params = {"seed": int(seed), **params}
        seconds = time.perf_counter() - start
        log.info(
            "built %s/%s index: n=%d dim=%d in %.2fs", backend, kind, n, dim, seconds
        )
        return cls(
            ids=id_arr,
            metric=metric,
            kind=kind,
            dim=dim,
            engine=engine,
            params=params,
            build_seconds=seconds,
        )

    @property
    def backend(self) -> str:
        """The library that searches: "sklearn" (exact) or "faiss"."""
        return "sklearn" if self.kind == "exact" else "faiss"

    @property
    def ids(self) -> np.ndarray:
        """(N,) image ids in row order (a read-only view)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"VectorIndex(backend={self.backend!r}, kind={self.kind!r}, "
            f"metric={self.metric!r}, n={len(self)}, dim={self.dim})"
        )

    def describe(self) -> dict[str, Any]:
        """Backend, kind, metric, n, dim, build parameters and build time."""
        return {
            "backend": self.backend,
            "kind": self.kind,
            "metric": self.metric,
            "n": len(self),
            "dim": self.dim,
            "params": dict(self._params),
            "build_seconds": self.build_seconds,
        }

    def set_search_params(
        self, *, ef_search: int | None = None, nprobe: int | None = None
    ) -> None:
        """Tunes HNSW `ef_search` or IVF `nprobe` (higher: slower, better recall)."""
        if ef_search is not None:
            if self.kind != "hnsw":
                raise ValueError(f"ef_search applies to kind 'hnsw', not {self.kind!r}")
            self._engine.hnsw.efSearch = check_int(ef_search, "ef_search", minimum=1)
            self._params["ef_search"] = int(ef_search)
        if nprobe is not None:
            if self.kind != "ivf":
                raise ValueError(f"nprobe applies to kind 'ivf', not {self.kind!r}")
            self._engine.nprobe = min(
                check_int(nprobe, "nprobe", minimum=1), self._params["nlist"]
            )
            self._params["nprobe"] = int(self._engine.nprobe)

    def index_bytes(self) -> int:
        """Size of the index: FAISS's serialised size, or the stored vectors.

        Serialising copies the index, so this briefly needs as much memory again.
        """
        if self.kind == "exact":
            return len(self) * self.dim * 4  # the float32 vectors sklearn holds
        return int(_load_faiss().serialize_index(self._engine).nbytes)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Collection[str] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The k nearest indexed ids of each query, nearest first.

        Ids in `exclude` (e.g. images already labelled) never appear; the search
        fetches more neighbours until each query has k others, so a query gets
        fewer than k only when fewer than k ids remain.

        Args:
            queries: (Q, D) or (D,) vectors, D the index's dim.
            k: Neighbours per query.
            exclude: Ids to leave out.

        Returns:
            Q lists of (id, distance), distance ascending.

        Raises:
            ValueError: k < 1, a dim mismatch, NaN or inf in the queries.
        """
        k = check_int(k, "k", minimum=1)
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(
                f"queries must be (Q, {self.dim}) to match the index dim, "
                f"got shape {np.shape(queries)}"
            )
        q = _as_matrix(q, "queries", self.metric)
        excluded = frozenset(exclude or ())
        n = len(self)
        results: list[list[tuple[str, float]]] = [[] for _ in range(len(q))]
        pending = np.arange(len(q))
        # Over-fetch for the excluded ids; double for queries still short.
        fetch = min(n, k + min(len(excluded), k))
        while pending.size:
            dist, pos = self._raw_search(q[pending], fetch, exhaustive=fetch == n)
            short = []
            for row, qi in enumerate(pending):
                hits = [
                    (self._ids[p], float(d))
                    for d, p in zip(dist[row], pos[row], strict=True)
                    if p >= 0 and self._ids[p] not in excluded
                ]
                if len(hits) >= k or fetch == n:
                    results[qi] = hits[:k]
                else:
                    short.append(qi)
            pending = np.asarray(short, dtype=np.int64)
            fetch = min(n, 2 * fetch)
        return results

    def _raw_search(
        self, q: np.ndarray, fetch: int, *, exhaustive: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Q, fetch) distances in the index's units and row positions (-1: none).

        `exhaustive` makes FAISS indexes search every vector, so that asking
        for all N rows returns all N.
        """
        faiss = _load_faiss()
        if self.kind == "exact":
            dist, pos = self._engine.kneighbors(q, n_neighbors=fetch)
            if self.metric == "l2":
                return dist, pos
            sq = dist  # sqeuclidean
        elif not exhaustive:
            sq, pos = self._engine.search(q, fetch)
        elif self.kind == "hnsw":
            sq, pos = faiss.downcast_index(self._engine.storage).search(q, fetch)
        else:
            params = faiss.SearchParametersIVF(nprobe=self._params["nlist"])
            sq, pos = self._engine.search(q, fetch, params=params)
        sq = np.maximum(sq, 0.0)  # squared L2; rounding can dip below 0
        # On unit vectors |a - b|^2 = 2 - 2 cos(a, b).
        dist = sq / 2.0 if self.metric == "cosine" else np.sqrt(sq)
        return dist, pos


QUERIES = ("nearest_seed", "discriminative")


@dataclass(frozen=True)
class QueryBackground:
    """A collection's statistics for discriminative queries: fit once, ask many.

    Whitened LDA with the collection as the negative class (Hariharan, Malik
    and Ramanan, "Discriminative decorrelation for clustering and
    classification", ECCV 2012): for seeds, ``w = (S + lam I)^-1 (mean(seeds)
    - mean(bg))``, with ``S`` the covariance of the (L2-normalised) background
    and ``lam = shrinkage * trace(S) / D``. Features that vary a lot anyway
    (the pose, the background) count little; what the seeds agree on and the
    collection rarely shows (a glare, a haze) counts much. On unit vectors,
    ranking by ``w . x`` is ranking by cosine similarity to ``w``, so an
    ordinary cosine index answers the query.

    Attributes:
        mean: (D,) mean of the normalised background.
        factor: Cholesky factor of the regularised covariance
            (`scipy.linalg.cho_factor`).
    """

    mean: np.ndarray
    factor: tuple[np.ndarray, bool]

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        *,
        shrinkage: float = 1.0,
        max_rows: int = 20_000,
        seed: int = 0,
    ) -> QueryBackground:
        """Mean and regularised covariance of `vectors`.

        Args:
            vectors: (N, D) features of the collection searched (N >= 2); a
                seeded sample of `max_rows` rows is used above that.
            shrinkage: Ridge, relative to the mean variance (> 0). Large
                values tend to the difference of means.
            max_rows: Rows used for the mean and covariance.
            seed: Seed of that sample.

        Raises:
            ValueError: bad shapes, NaN or inf, shrinkage <= 0.
        """
        from scipy.linalg import cho_factor

        if not shrinkage > 0:
            raise ValueError(f"shrinkage must be > 0, got {shrinkage!r}")
        bg = np.asarray(vectors)
        if bg.ndim != 2 or bg.shape[0] < 2:
            raise ValueError(f"background must be (N >= 2, D), got shape {bg.shape}")
        if len(bg) > max_rows:
            rows = np.random.default_rng(seed).choice(len(bg), max_rows, replace=False)
            bg = bg[np.sort(rows)]
        bg = _as_matrix(bg, "background", "cosine").astype(np.float64)
        cov = np.cov(bg, rowvar=False)
        dim = cov.shape[0]
        cov[np.diag_indices(dim)] += shrinkage * max(np.trace(cov) / dim, 1e-12)
        return cls(bg.mean(axis=0), cho_factor(cov))

    def query(self, seed_vectors: np.ndarray) -> np.ndarray:
        """(D,) float32 query vector for what the seeds share.

        Raises:
            ValueError: a dim mismatch, NaN or inf, or seeds whose mean is the
                background's.
        """
        from scipy.linalg import cho_solve

        seeds = _as_matrix(seed_vectors, "seed_vectors", "cosine").astype(np.float64)
        if seeds.shape[1] != len(self.mean):
            raise ValueError(
                f"seed_vectors have dim {seeds.shape[1]}, "
                f"the background {len(self.mean)}"
            )
        w = cho_solve(self.factor, seeds.mean(axis=0) - self.mean)
        if not np.any(w):
            raise ValueError(
                "the seeds' mean equals the background's: no direction to query"
            )
        return w.astype(np.float32)


def knn_candidates(
    index: VectorIndex,
    seed_vectors: np.ndarray,
    seed_ids: Sequence[str],
    n: int,
    *,
    exclude: Collection[str] | None = None,
    query: str = "nearest_seed",
    background: QueryBackground | None = None,
) -> pd.DataFrame:
    """The n indexed images most like a few seed images.

    Two ways to ask (`query`):

    - ``nearest_seed``: each candidate is scored by its distance to the
      nearest seed; candidates found from several seeds appear once.
    - ``discriminative``: one query, `QueryBackground.query` of the seeds
      against `background` (normally fitted on the indexed vectors): what the
      seeds have in common, not what each looks like. Distance is to that query, and
      ``nearest_seed`` is "(all)". On the synthetic stream, with `both`
      pooling, precision@50 for glare is 0.80 against 0.08 for nearest_seed
      with `gap` pooling (benchmarks/retrieval.py).

    Seeds and `exclude` are left out.

    Args:
        index: The collection to search.
        seed_vectors: (S, D) features of the seed images.
        seed_ids: S ids of the seeds.
        n: Candidates wanted.
        exclude: More ids to leave out (e.g. images already labelled).
        query: ``nearest_seed`` or ``discriminative``.
        background: The fitted collection, for ``discriminative``.

    Returns:
        Up to n rows, most similar first, with columns image_id, distance,
        nearest_seed and rank (1 = most similar). Ties in distance are broken
        by image_id.
    """
    n = check_int(n, "n", minimum=1)
    _check_choice(query, QUERIES, "query")
    seeds = np.asarray(seed_vectors)
    if seeds.ndim != 2:
        raise ValueError(f"seed_vectors must be (S, D), got shape {seeds.shape}")
    seed_ids = list(seed_ids)
    if len(seed_ids) != len(seeds):
        raise ValueError(f"got {len(seed_ids)} seed_ids for {len(seeds)} seed_vectors")
    excluded = set(exclude or ()) | set(seed_ids)
    best: dict[str, tuple[float, str]] = {}
    if query == "discriminative":
        if background is None:
            raise ValueError("query='discriminative' needs a QueryBackground")
        w = background.query(seeds)
        for image_id, dist in index.search(w, n, exclude=excluded)[0]:
            best[image_id] = (dist, "(all)")
    else:
        # The global top n by min-over-seeds distance is within each seed's top n.
        for sid, hits in zip(
            seed_ids, index.search(seeds, n, exclude=excluded), strict=True
        ):
            for image_id, dist in hits:
                if image_id not in best or dist < best[image_id][0]:
                    best[image_id] = (dist, sid)
    frame = pd.DataFrame(
        {
            "image_id": pd.Series(list(best), dtype="str"),
            "distance": pd.Series([d for d, _ in best.values()], dtype="float64"),
            "nearest_seed": pd.Series([s for _, s in best.values()], dtype="str"),
        }
    )
    frame = frame.sort_values(["distance", "image_id"], kind="stable").head(n)
    frame = frame.reset_index(drop=True)
    frame["rank"] = np.arange(1, len(frame) + 1, dtype=np.int64)
    return frame


class QuerySpace(NamedTuple):
    """One feature space of a fused discriminative query (`fused_candidates`).

    Attributes:
        vectors: (N, D) features of the N images searched, in `ids` order.
        seed_vectors: (S, D) features of the seeds in the same space.
        background: That space's fitted `QueryBackground`.
        weight: The space's weight in the sum of z-scores (>= 0).
    """

    vectors: np.ndarray
    seed_vectors: np.ndarray
    background: QueryBackground
    weight: float = 1.0


WEIGHTINGS = ("fixed", "loo")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _zscore(values: np.ndarray | float, sims: np.ndarray) -> np.ndarray | float:
    """`values` as z-scores of the similarities `sims` of all N images."""
    return (values - sims.mean()) / max(float(sims.std()), 1e-12)


def _direction(background: QueryBackground, seeds: np.ndarray) -> np.ndarray | None:
    """The unit query direction, or None where the seeds look like the background.

    E.g. object profiles when every predicted mask is empty: nothing to ask.
    """
    try:
        w = background.query(seeds).astype(np.float64)
    except ValueError as err:
        if "no direction to query" in str(err):
            return None
        raise
    return _unit(w)


def loo_weight(x: np.ndarray, space: QuerySpace) -> float:
    """How well a space generalises across the seeds: a weight for fusing it.

    Each seed is scored (z-score over the N unit vectors `x`) by the query of
    the other seeds; the weight is the squared mean of those scores, 0 if it
    is negative. Seeds that share something the space sees score high when
    left out (a night in colour histograms: about 4); seeds the space cannot
    tell apart from the rest score about 0. With one seed it is 1.
    """
    seeds = np.asarray(space.seed_vectors, dtype=np.float64)
    if len(seeds) < 2:
        return 1.0
    scores = []
    for j in range(len(seeds)):
        w = _direction(space.background, np.delete(seeds, j, axis=0))
        if w is None:
            scores.append(0.0)
            continue
        scores.append(float(_zscore(_unit(seeds[j]) @ w, x @ w)))
    return max(0.0, float(np.mean(scores))) ** 2


def fused_candidates(
    ids: Sequence[str],
    spaces: Sequence[QuerySpace],
    seed_ids: Sequence[str],
    n: int,
    *,
    exclude: Collection[str] | None = None,
    weighting: str = "fixed",
) -> pd.DataFrame:
    """The n images most like a few seeds, by discriminative queries in several spaces.

    In each space the seeds ask one `QueryBackground.query`; every image gets its
    cosine similarity to it, standardised (z-score) over all N images so the
    spaces are comparable, and the weighted z-scores are summed. Excluding
    images does not move the others' scores. Exact (one matrix-vector product
    per space), so no index is needed.

    On the synthetic stream (`benchmarks/retrieval.py`, 10 repeats), the
    embedding plus joint colour histograms at weight 1 raise haze
    precision@50 from 0.72 to 0.85 and keep glare (0.78 -> 0.79), night and
    dusk (1.00): the embedder standardises each image, so it sees haze's
    washed-out colours poorly; the histograms see them well.

    `weighting="loo"` multiplies each space's weight by `loo_weight`, so the
    spaces in which the seeds agree count, and the others hardly do: object
    profiles of predicted masks help a query for "many aircraft" and would
    only add noise to one for "night". If every space gets 0, the given
    weights are used.

    Seeds and `exclude` are left out.

    Returns:
        Up to n rows, most similar first, with the columns of `knn_candidates`:
        image_id, distance (minus the fused score, so lower is more similar),
        nearest_seed ("(all)") and rank. Ties are broken by image_id.
        `attrs["space_weights"]` lists the weight each space got.

    Raises:
        ValueError: no spaces, a negative weight, shapes that do not match
            `ids`, an unknown weighting.
    """
    n = check_int(n, "n", minimum=1)
    _check_choice(weighting, WEIGHTINGS, "weighting")
    if not spaces:
        raise ValueError("fused_candidates needs at least one space")
    ids = np.asarray([str(i) for i in ids], dtype=object)
    excluded = set(exclude or ()) | {str(s) for s in seed_ids}
    eligible = np.asarray([i not in excluded for i in ids], dtype=bool)
    units = []
    for k, space in enumerate(spaces):
        if not space.weight >= 0:
            raise ValueError(f"spaces[{k}].weight must be >= 0, got {space.weight!r}")
        x = _as_matrix(space.vectors, f"spaces[{k}].vectors", "cosine")
        if len(x) != len(ids):
            raise ValueError(
                f"spaces[{k}].vectors has {len(x)} rows for {len(ids)} ids"
            )
        units.append(x.astype(np.float64))
    weights = [float(space.weight) for space in spaces]
    if weighting == "loo":
        adaptive = [
            w * loo_weight(x, space)
            for w, x, space in zip(weights, units, spaces, strict=True)
        ]
        weights = adaptive if any(adaptive) else weights
    total = np.zeros(len(ids), dtype=np.float64)
    for k, (x, space) in enumerate(zip(units, spaces, strict=True)):
        w = _direction(space.background, space.seed_vectors) if weights[k] else None
        if w is None:
            weights[k] = 0.0  # nothing to ask in this space
            continue
        sim = x @ w
        total += weights[k] * _zscore(sim, sim)
    if not any(weights):
        raise ValueError(
            "the seeds' mean equals the background's in every space: "
            "no direction to query"
        )
    rows = np.flatnonzero(eligible)
    rows = rows[np.argsort(-total[rows], kind="stable")]
    if len(rows) > n:  # keep everything tied with the n-th, then break ties by id
        rows = rows[total[rows] >= total[rows[n - 1]]]
    order = sorted(rows.tolist(), key=lambda r: (-total[r], ids[r]))[:n]
    frame = pd.DataFrame(
        {
            "image_id": pd.Series(ids[order].tolist(), dtype="str"),
            "distance": pd.Series(-total[order], dtype="float64"),
            "nearest_seed": pd.Series(["(all)"] * len(order), dtype="str"),
            "rank": np.arange(1, len(order) + 1, dtype=np.int64),
        }
    )
    frame.attrs["space_weights"] = weights
    return frame


class KMeansResult(NamedTuple):
    """k-means output; unpacks as `labels, centroids = kmeans(...)`.

    Attributes:
        labels: (N,) int64 cluster of each vector, in 0..k-1.
        centroids: (k, D) float32 centres (of the normalised vectors for cosine).
    """

    labels: np.ndarray
    centroids: np.ndarray


def kmeans(
    vectors: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    backend: str = "auto",
    n_iter: int = 20,
    metric: str = "cosine",
    faiss_threshold: int = FAISS_THRESHOLD,
) -> KMeansResult:
    """Clusters (N, D) vectors into k clusters; every vector gets a label.

    Backends: "faiss" (`faiss.Kmeans`: trains on at most 256 * k sampled vectors
    from k-means++ seeds, then assigns all N), "sklearn" (`KMeans`, or
    `MiniBatchKMeans` above `faiss_threshold`), "auto" (FAISS above
    `faiss_threshold` when installed, else scikit-learn).

    Args:
        vectors: (N, D) features; not modified.
        k: Clusters, 1..N.
        seed: Seeds initialisation and sampling; same seed, same labels.
        backend: "auto", "faiss" or "sklearn".
        n_iter: Lloyd iterations (epochs for MiniBatchKMeans).
        metric: "cosine" clusters the L2-normalised vectors, "l2" the raw ones.
        faiss_threshold: Size above which "auto" uses FAISS.

    Raises:
        ValueError: k outside 1..N (k > N is refused, not clamped, since the
            caller asked for more clusters than there are vectors), bad vectors
            or an unknown backend or metric.
    """
    _check_choice(metric, METRICS, "metric")
    _check_choice(backend, KMEANS_BACKENDS, "backend")
    arr = np.asarray(vectors)
    n = arr.shape[0] if arr.ndim == 2 else 0
    if (
        n > _ASSIGN_CHUNK
        and _load_faiss() is not None
        and (backend == "faiss" or (backend == "auto" and n > faiss_threshold))
    ):
        return _kmeans_faiss_streamed(arr, k, seed=seed, n_iter=n_iter, metric=metric)
    return _kmeans(
        _as_matrix(arr, "vectors", metric),
        k,
        seed=seed,
        backend=backend,
        n_iter=n_iter,
        faiss_threshold=faiss_threshold,
    )


_ASSIGN_CHUNK = 65_536  # rows normalised and assigned at a time


def _kmeans_faiss_streamed(
    arr: np.ndarray, k: int, *, seed: int, n_iter: int, metric: str
) -> KMeansResult:
    """FAISS k-means without a float32 (normalised) copy of all N vectors.

    The rows are checked in place; FAISS trains on a normalised sample of
    256 * k rows (its own `max_points_per_centroid` cap) from k-means++ seeds
    on 64 * k of them; then `_ASSIGN_CHUNK` rows at a time are normalised and
    assigned, so memory stays at the input plus one chunk. Copying N rows costs
    seconds at N = 1M (2 GB of fresh pages), more than the clustering itself.
    """
    from sklearn.cluster import kmeans_plusplus

    faiss = _load_faiss()
    k = check_int(k, "k", minimum=1)
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    n, dim = arr.shape
    if k > n:
        raise ValueError(f"k={k} is more than the {n} vectors to cluster")
    _as_matrix(arr[:1], "vectors", metric)  # shape and dtype errors, as usual
    for start in range(0, n, _ASSIGN_CHUNK):  # NaN, inf, zero rows: all of them
        block = arr[start : start + _ASSIGN_CHUNK]
        sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(sq) | ((sq == 0) & (metric == "cosine")))
        if bad.size:
            _as_matrix(arr, "vectors", metric)  # raises with the full message
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(n, 256 * k), replace=False))
    sample = _as_matrix(arr[rows], "vectors", metric)
    init_rows = rng.choice(len(sample), min(len(sample), 64 * k), replace=False)
    init, _ = kmeans_plusplus(sample[init_rows], k, random_state=seed)
    km = faiss.Kmeans(dim, k, niter=n_iter, seed=int(seed), verbose=False)
    km.train(sample, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, _ASSIGN_CHUNK):
        block = _as_matrix(arr[start : start + _ASSIGN_CHUNK], "vectors", metric)
        labels[start : start + len(block)] = km.index.search(block, 1)[1][:, 0]
    return KMeansResult(labels=labels, centroids=np.asarray(km.centroids, np.float32))


def _kmeans(
    x: np.ndarray,
    k: int,
    *,
    seed: int,
    backend: str,
    n_iter: int,
    faiss_threshold: int,
) -> KMeansResult:
    """`kmeans` on vectors already checked and normalised by `_as_matrix`."""
    _check_choice(backend, KMEANS_BACKENDS, "backend")
    k = check_int(k, "k", minimum=1)
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    n, dim = x.shape
    if k > n:
        raise ValueError(f"k={k} is more than the {n} vectors to cluster")
    faiss = _load_faiss()
    if backend == "auto":
        backend = "faiss" if n > faiss_threshold and faiss is not None else "sklearn"
    elif backend == "faiss" and faiss is None:
        log.warning("faiss not installed: k-means falls back to scikit-learn")
        backend = "sklearn"

    if backend == "faiss":
        from sklearn.cluster import kmeans_plusplus

        # faiss.Kmeans initialises at random; k-means++ on a sample separates
        # well-apart clusters far more reliably at a small cost.
        rng = np.random.default_rng(seed)
        sample = x if n <= 64 * k else x[rng.choice(n, 64 * k, replace=False)]
        init, _ = kmeans_plusplus(sample, k, random_state=seed)
        km = faiss.Kmeans(dim, k, niter=n_iter, seed=int(seed), verbose=False)
        km.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
        _, assign = km.index.search(x, 1)  # (N, 1) nearest centroid
        labels, centroids = assign[:, 0], km.centroids
    elif n > faiss_threshold:
        from sklearn.cluster import MiniBatchKMeans

        mbk = MiniBatchKMeans(
            k, n_init=1, max_iter=n_iter, batch_size=4096, random_state=seed
        )
        labels, centroids = mbk.fit_predict(x), mbk.cluster_centers_
    else:
        from sklearn.cluster import KMeans

        km = KMeans(k, n_init=1, max_iter=n_iter, random_state=seed).fit(x)
        labels, centroids = km.labels_, km.cluster_centers_
    return KMeansResult(
        labels=np.asarray(labels, dtype=np.int64),
        centroids=np.asarray(centroids, dtype=np.float32),
    )


def path_seed(seed: int, path: Sequence[int]) -> int:
    """The k-means seed for the cluster at `path`, derived from seed and path."""
    key = f"{int(seed)}:{'/'.join(str(int(c)) for c in path)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") >> 1


def cluster_path(
    vectors: np.ndarray,
    ids: Sequence[str],
    path: Sequence[int],
    *,
    k: int,
    seed: int = 0,
    metric: str = "cosine",
    backend: str = "auto",
    n_iter: int = 20,
) -> pd.DataFrame:
    """Drills down a k-means hierarchy: clusters the members of the cluster at `path`.

    Level 0 clusters all vectors into k; each entry of `path` picks one cluster
    of the level above, whose members are clustered into k again. So [] is the
    top level and [3, 1] splits cluster 1 of top cluster 3. Each level's seed is
    `path_seed(seed, prefix)`, so a drill-down is reproducible on its own.

    Args:
        vectors: (N, D) features.
        ids: N unique image ids, in row order.
        path: Cluster index at each level, each in 0..k-1.
        k: Clusters per level.
        seed: Base seed.
        metric, backend, n_iter: As for `kmeans`.

    Returns:
        One row per member of the cluster at `path`, in input order, with
        columns image_id, cluster (0..k-1 at the final level) and path (e.g.
        "3/1/0" for cluster 0 under path [3, 1]).

    Raises:
        ValueError: A path entry outside 0..k-1 (naming the level), or a
            cluster with fewer than k members to split (naming its size).
    """
    _check_choice(metric, METRICS, "metric")
    k = check_int(k, "k", minimum=1)
    path = list(path)
    for level, c in enumerate(path):
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or not 0 <= c < k:
            raise ValueError(
                f"path[{level}]={c!r} is out of range at level {level}: "
                f"valid clusters are 0..{k - 1}"
            )
    x = _as_matrix(vectors, "vectors", metric)
    id_arr = _check_ids(ids, len(x))
    members = np.arange(len(x))  # rows in the current cluster
    for level in range(len(path) + 1):
        prefix = path[:level]
        if len(members) < k:
            name = "/".join(map(str, prefix)) or "the top level"
            raise ValueError(
                f"cluster {name} at level {level} has {len(members)} members, "
                f"too few to split into k={k}"
            )
        labels, _ = _kmeans(
            x[members],
            k,
            seed=path_seed(seed, prefix),
            backend=backend,
            n_iter=n_iter,
            faiss_threshold=FAISS_THRESHOLD,
        )
        if level < len(path):
            members = members[labels == path[level]]
    head = "".join(f"{int(c)}/" for c in path)
    return pd.DataFrame(
        {
            "image_id": pd.Series(id_arr[members], dtype="str"),
            "cluster": labels,
            "path": pd.Series([f"{head}{c}" for c in labels], dtype="str"),
        }
    )
