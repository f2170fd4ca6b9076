"""Acquisition: which unlabeled images go to labeling next, and why.

Three strategies over the same pool, so the simulation compares them fairly:

- `random`: uniform picks from the unlabeled pool.
- `entropy`: the top-k least confident (by `uncertainty_score`).
- `hitl`: the loop. KNN candidates of open bugs first (round robin over bugs,
  nearest first, or by `bug_order`: the most doubtful of each bug's
  `bug_shortlist` nearest first; with `bug_seeds`, each bug's own unlabeled
  seed images before its candidates), then confidence checks (by `hitl_score`,
  novelty by default) with at most `cluster_cap` per cluster, then random
  checks. A stage that cannot fill its share passes the rest on. Optional
  cold start: while fewer than `cold_start_labeled` images are labeled, hitl
  takes a representative sample instead (`cold_start_pick`: `representative`,
  random within each level-0 cluster in proportion to the clusters' sizes; or
  `typical`, TypiClust's pick: k-means into as many clusters as labeled images
  plus the budget, then the most typical image of each least-covered cluster),
  for when a weak model's bugs and doubts are everywhere.

All pure functions over frames; the pipeline does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.review import CONFIDENCE_SCORES
from edgeloop.vectorindex import kmeans

__all__ = [
    "BUG_REASONS",
    "COLD_START_PICKS",
    "KNN_COLUMNS",
    "LABELING_QUEUE_COLUMNS",
    "STRATEGIES",
    "AcquisitionConfig",
    "learnable",
    "select_for_labeling",
    "unlabeled_pool",
]

STRATEGIES = ("random", "entropy", "hitl")
# How hitl's cold start picks (see the module docstring).
COLD_START_PICKS = ("representative", "typical")
# TypiClust's typicality: the inverse mean distance to this many nearest
# neighbours in the image's own cluster (Hacohen et al., 2022).
TYPICALITY_NEIGHBOURS = 20
# ... and, as TypiClust, clusters smaller than this (outliers) come last.
TYPICAL_MIN_CLUSTER = 5
# The similarity context's KNN candidates of open bugs (hitl's bug share).
KNN_COLUMNS = ["bug_id", "tag", "image_id", "distance", "nearest_seed", "rank"]
# Queue reasons of hitl's bug share (a bug's own image, a KNN candidate):
# such a pick has the bug's id and condition tag in `bug_id` and `bug_tag`
# (missing for every other pick).
BUG_REASONS = ("bug_seed", "bug_candidate")
LABELING_QUEUE_COLUMNS = [
    "rank",
    "image_id",
    "request_id",
    "image_blob",
    "reason",
    "bug_id",
    "bug_tag",
    "detail",
    "score",
]
# Score -> True when higher means more doubtful: review's confidence scores
# (the predictor's, and `novelty`, which the node joins into the pool).
_DOUBT_DIRECTION = CONFIDENCE_SCORES


@dataclass(frozen=True)
class AcquisitionConfig:
    """The `acquisition` parameters, checked once."""

    strategy: str = "hitl"
    budget: int = 50
    seed: int = 0
    uncertainty_score: str = "mean_entropy"
    hitl_score: str = "novelty"
    bugs_share: float = 0.5
    confidence_share: float = 0.3
    random_share: float = 0.2
    cluster_cap: int = 3
    cold_start_labeled: int = 0
    cold_start_pick: str = "representative"
    bug_order: str = "nearest"
    bug_shortlist: int = 10
    bug_seeds: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AcquisitionConfig:
        hitl = params.get("hitl") or {}
        known = {"strategy", "budget", "seed", "uncertainty_score", "hitl"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"acquisition: unknown key(s) {unknown}; valid: {sorted(known)}"
            )
        cfg = cls(
            strategy=str(params.get("strategy", cls.strategy)),
            budget=int(params.get("budget", cls.budget)),
            seed=int(params.get("seed", cls.seed)),
            uncertainty_score=str(
                params.get("uncertainty_score", cls.uncertainty_score)
            ),
            hitl_score=str(hitl.get("confidence_score", cls.hitl_score)),
            bugs_share=float(hitl.get("bugs", cls.bugs_share)),
            confidence_share=float(hitl.get("confidence", cls.confidence_share)),
            random_share=float(hitl.get("random", cls.random_share)),
            cluster_cap=int(hitl.get("cluster_cap", cls.cluster_cap)),
            cold_start_labeled=int(
                hitl.get("cold_start_labeled", cls.cold_start_labeled)
            ),
            cold_start_pick=str(hitl.get("cold_start_pick", cls.cold_start_pick)),
            bug_order=str(hitl.get("bug_order", cls.bug_order)),
            bug_shortlist=int(hitl.get("bug_shortlist", cls.bug_shortlist)),
            bug_seeds=hitl.get("bug_seeds", cls.bug_seeds),
        )
        if cfg.strategy not in STRATEGIES:
            raise ValueError(
                f"acquisition.strategy must be one of {STRATEGIES}, "
                f"got {cfg.strategy!r}"
            )
        if cfg.budget < 0:
            raise ValueError(f"acquisition.budget must be >= 0, got {cfg.budget}")
        for name, value in (
            ("uncertainty_score", cfg.uncertainty_score),
            ("hitl.confidence_score", cfg.hitl_score),
        ):
            if value not in _DOUBT_DIRECTION:
                raise ValueError(
                    f"acquisition.{name} must be one of "
                    f"{sorted(_DOUBT_DIRECTION)}, got {value!r}"
                )
        if cfg.bug_order != "nearest" and cfg.bug_order not in _DOUBT_DIRECTION:
            raise ValueError(
                "acquisition.hitl.bug_order must be 'nearest' or one of "
                f"{sorted(_DOUBT_DIRECTION)}, got {cfg.bug_order!r}"
            )
        if not isinstance(cfg.bug_seeds, bool):
            raise ValueError(
                "acquisition.hitl.bug_seeds must be true or false, "
                f"got {cfg.bug_seeds!r}"
            )
        if cfg.bug_shortlist < 1:
            raise ValueError(
                f"acquisition.hitl.bug_shortlist must be >= 1, got {cfg.bug_shortlist}"
            )
        shares = (cfg.bugs_share, cfg.confidence_share, cfg.random_share)
        if min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(
                "acquisition.hitl shares must be >= 0 with a positive sum, "
                f"got {shares}"
            )
        if cfg.cluster_cap < 1:
            raise ValueError(
                f"acquisition.hitl.cluster_cap must be >= 1, got {cfg.cluster_cap}"
            )
        if cfg.cold_start_labeled < 0:
            raise ValueError(
                "acquisition.hitl.cold_start_labeled must be >= 0, "
                f"got {cfg.cold_start_labeled}"
            )
        if cfg.cold_start_pick not in COLD_START_PICKS:
            raise ValueError(
                f"acquisition.hitl.cold_start_pick must be one of {COLD_START_PICKS}, "
                f"got {cfg.cold_start_pick!r}"
            )
        return cfg

    def cold(self, n_labeled: int) -> bool:
        """Whether hitl starts cold with `n_labeled` images to learn from."""
        return self.strategy == "hitl" and n_labeled < self.cold_start_labeled


def learnable(images: pd.DataFrame, labeled_ids: set[str]) -> pd.Series:
    """Rows of `images` a model can learn from: labeled, outside the test split.

    The test split is the fixed evaluation set (the synthetic eval set,
    CamVid's official test frames): labeled, but never trained on.
    """
    return images["image_id"].isin(labeled_ids) & (images["split"] != "test")


def unlabeled_pool(predictions: pd.DataFrame, labeled_ids: set[str]) -> pd.DataFrame:
    """One row per predicted image not yet labeled: its latest prediction.

    Sorted by image_id, so every strategy sees the pool in the same order.
    """
    if predictions.empty:
        return predictions.iloc[0:0].copy()
    latest = predictions.sort_values(
        ["ts", "request_id"], kind="stable"
    ).drop_duplicates("image_id", keep="last")
    pool = latest[~latest["image_id"].isin(labeled_ids)]
    return pool.sort_values("image_id", kind="stable").reset_index(drop=True)


def _doubt(pool: pd.DataFrame, score: str, used_for: str) -> pd.Series:
    """Higher = more doubtful; a clear error when the pool lacks the score."""
    if score not in pool.columns:
        raise ValueError(
            f"the pool has no {score!r} scores {used_for} (novelty comes from "
            "the similarity context's novelty_scores)"
        )
    values = pool[score].astype(float)
    return values if _DOUBT_DIRECTION[score] else -values


def _rows(
    pool: pd.DataFrame,
    ids: list[str],
    reason: str,
    details: list[str],
    scores: list[float],
) -> list[dict]:
    by_id = pool.set_index("image_id")
    return [
        {
            "image_id": i,
            "request_id": by_id.at[i, "request_id"],
            "image_blob": by_id.at[i, "image_blob"],
            "reason": reason,
            "bug_id": None,
            "bug_tag": None,
            "detail": d,
            "score": float(s),
        }
        for i, d, s in zip(ids, details, scores, strict=True)
    ]


def _random(pool: pd.DataFrame, n: int, seed: int, taken: set[str]) -> list[dict]:
    free = pool.loc[~pool["image_id"].isin(taken), "image_id"].to_numpy()
    if n <= 0 or not len(free):
        return []
    rng = np.random.default_rng(seed)
    picks = rng.choice(free, size=min(n, len(free)), replace=False).tolist()
    return _rows(
        pool,
        picks,
        "random",
        ["uniform over the unlabeled pool"] * len(picks),
        [float("nan")] * len(picks),
    )


def _representative(
    pool: pd.DataFrame, n: int, seed: int, cluster_of: pd.Series | None
) -> list[dict]:
    """n picks spread over the clusters in proportion to their pool sizes.

    Seats by largest remainder (ties to the larger cluster, then the lower
    cluster id); random within a cluster. Images without a cluster form one
    group of their own; with no clusters at all this is a uniform sample.
    """
    ids = pool["image_id"].to_numpy()
    if n <= 0 or not len(ids):
        return []
    known = {} if cluster_of is None else cluster_of.to_dict()
    group = np.array([str(known.get(i, "none")) for i in ids])
    names, sizes = np.unique(group, return_counts=True)
    n = min(n, len(ids))
    quota = n * sizes / sizes.sum()
    seats = np.floor(quota).astype(int)
    for i in sorted(
        range(len(names)), key=lambda i: (-(quota[i] - seats[i]), -sizes[i], names[i])
    )[: n - seats.sum()]:
        seats[i] += 1
    rng = np.random.default_rng(seed)
    picks, details = [], []
    for name, size, k in zip(names, sizes, seats, strict=True):
        chosen = rng.choice(ids[group == name], size=k, replace=False).tolist()
        picks += chosen
        details += [f"cluster {name}: {k} of {size} in the pool"] * k
    return _rows(pool, picks, "representative", details, [float("nan")] * len(picks))


def _typical(
    pool: pd.DataFrame,
    n: int,
    seed: int,
    vectors: pd.Series | None,
    labeled: np.ndarray | None,
) -> list[dict]:
    """TypiClust's n picks: typical images of the clusters labels cover least.

    k-means (cosine) over the pool's and the labeled images' vectors into
    (labeled + n) clusters; then n times: the cluster with the fewest labeled
    or picked images (ties to the larger cluster, then the lower id; clusters
    of fewer than `TYPICAL_MIN_CLUSTER` images only when no larger one has an
    image left) gives its most typical unpicked pool image, typicality being
    the inverse mean cosine distance to its `TYPICALITY_NEIGHBOURS` nearest
    neighbours in the cluster.

    Typical rather than doubtful images, because a weak model learns more from
    what is common than from its edge cases (Hacohen et al., 2022: "Active
    learning on a budget"). Pool images without a vector are never picked.

    Args:
        vectors: image_id -> embedding (1-D array) for pool images.
        labeled: (M, D) embeddings of the images labeled so far (may be empty).
    """
    if n <= 0 or vectors is None:
        return []
    ids = np.array([i for i in pool["image_id"] if i in vectors.index], dtype=object)
    if not len(ids):
        return []
    own = np.stack([np.asarray(vectors[i], dtype=np.float64) for i in ids])
    ref = (
        np.empty((0, own.shape[1]))
        if labeled is None or not len(labeled)
        else np.asarray(labeled, dtype=np.float64)
    )
    if ref.shape[1] != own.shape[1]:
        raise ValueError(
            f"the labeled images' vectors are {ref.shape[1]}-d, the pool's "
            f"{own.shape[1]}-d: not one embedding"
        )
    n = min(n, len(ids))
    unit = np.concatenate([own, ref])
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    k = min(len(ref) + n, len(unit))
    labels = kmeans(unit, k, seed=seed, metric="cosine").labels
    pool_labels = labels[: len(ids)]
    covered = np.bincount(labels[len(ids) :], minlength=k)
    sizes = np.bincount(labels, minlength=k)
    typicality = np.zeros(len(ids))
    for c in np.unique(pool_labels):
        rows = np.flatnonzero(labels == c)
        mine = np.flatnonzero(pool_labels == c)
        dist = 1.0 - unit[mine] @ unit[rows].T  # (pool in c, all in c)
        m = min(TYPICALITY_NEIGHBOURS, len(rows) - 1)
        if m < 1:  # a cluster of one: nothing to be typical of
            continue
        # The smallest m + 1 include the image itself (distance 0).
        nearest = np.sort(dist, axis=1)[:, 1 : m + 1]
        typicality[mine] = 1.0 / np.maximum(nearest.mean(1), 1e-12)
    free = np.ones(len(ids), dtype=bool)
    picks, details, scores = [], [], []
    for _ in range(n):
        open_ = np.unique(pool_labels[free])
        c = min(
            open_,
            key=lambda c: (sizes[c] < TYPICAL_MIN_CLUSTER, covered[c], -sizes[c], c),
        )
        rows = np.flatnonzero(free & (pool_labels == c))
        best = rows[np.lexsort((ids[rows], -typicality[rows]))[0]]
        free[best] = False
        picks.append(ids[best])
        details.append(
            f"cluster {c} of {k}: {sizes[c]} images, {covered[c]} labeled or picked"
        )
        scores.append(float(typicality[best]))
        covered[c] += 1
    return _rows(pool, picks, "typical", details, scores)


def _confident_last(
    pool: pd.DataFrame,
    n: int,
    score: str,
    taken: set[str],
    cap: int | None,
    clusters: pd.Series | None,
    reason: str,
) -> list[dict]:
    if n <= 0:
        return []
    doubt = _doubt(pool, score, f"to rank by ({reason})")
    order = (
        pool.assign(_doubt=doubt.to_numpy())
        .dropna(subset=["_doubt"])  # an image without the score is never picked
        .sort_values(["_doubt", "image_id"], ascending=[False, True], kind="stable")
    )
    picks, details, scores, per_cluster = [], [], [], {}
    for row in order.itertuples(index=False):
        if len(picks) >= n:
            break
        if row.image_id in taken:
            continue
        detail = f"{score}={getattr(row, score):.3f}"
        if cap is not None and clusters is not None:
            c = clusters.get(row.image_id)
            if c is not None:
                if per_cluster.get(c, 0) >= cap:
                    continue
                per_cluster[c] = per_cluster.get(c, 0) + 1
                detail += f", cluster {c}"
        picks.append(row.image_id)
        details.append(detail)
        scores.append(float(getattr(row, score)))
    return _rows(pool, picks, reason, details, scores)


def _bug_candidates(
    pool: pd.DataFrame,
    knn: pd.DataFrame | None,
    n: int,
    taken: set[str],
    order: str = "nearest",
    shortlist: int = 10,
    seeds: pd.DataFrame | None = None,
) -> list[dict]:
    """Round robin over the open bugs, each bug's candidates in `order`.

    `nearest`: by KNN rank. A doubt score (e.g. `mean_entropy`): each bug's
    `shortlist` nearest candidates, the most doubtful first (images like the
    bug that the model is least sure of), then the rest by rank. `seeds`
    (bug_id, tag, image_id): each bug's own images, which go before its
    candidates when they are still unlabeled (reason `bug_seed`).
    """
    if n <= 0:
        return []
    parts = [] if knn is None or knn.empty else [knn[KNN_COLUMNS]]
    if seeds is not None and len(seeds):
        own = seeds.assign(distance=0.0, nearest_seed=seeds["image_id"], rank=0)
        parts.insert(0, own[KNN_COLUMNS])
    if not parts:
        return []
    knn = pd.concat(parts, ignore_index=True)
    knn = knn[knn["image_id"].isin(pool["image_id"]) & ~knn["image_id"].isin(taken)]
    if knn.empty:
        return []
    if order != "nearest":
        doubt = _doubt(pool, order, "to order bug candidates by (bug_order)")
        score_of = pool.set_index("image_id")[order]
        knn = knn.assign(
            _doubt=knn["image_id"].map(doubt.set_axis(pool["image_id"])).to_numpy()
        )

    def ordered(group: pd.DataFrame) -> list[dict]:
        group = group.sort_values(["rank", "image_id"], kind="stable")
        first, group = group[group["rank"] == 0], group[group["rank"] > 0]
        if order == "nearest":
            return first.to_dict("records") + group.to_dict("records")
        head = group.iloc[:shortlist].sort_values(
            ["_doubt", "rank"], ascending=[False, True], na_position="last"
        )
        return pd.concat([first, head, group.iloc[shortlist:]]).to_dict("records")

    queues = {bug: ordered(group) for bug, group in knn.groupby("bug_id", sort=True)}
    picks: list[dict] = []
    seen: set[str] = set()
    while len(picks) < n and any(queues.values()):
        for bug in sorted(queues):
            while queues[bug] and queues[bug][0]["image_id"] in seen:
                queues[bug].pop(0)
            if not queues[bug] or len(picks) >= n:
                continue
            c = queues[bug].pop(0)
            seen.add(c["image_id"])
            picks.append(c)

    def detail(c: dict) -> str:
        doubt = "" if order == "nearest" else f", {order}={score_of[c['image_id']]:.3f}"
        if int(c["rank"]) == 0:
            return f"{c['bug_id']} ({c['tag']}): the flagged image itself{doubt}"
        near = f"#{int(c['rank'])} nearest to {str(c['nearest_seed'])[:12]}"
        return f"{c['bug_id']} ({c['tag']}): {near}{doubt}"

    rows = _rows(
        pool,
        [c["image_id"] for c in picks],
        "bug_candidate",
        [detail(c) for c in picks],
        [float(c["distance"]) for c in picks],
    )
    for row, c in zip(rows, picks, strict=True):
        row["bug_id"], row["bug_tag"] = str(c["bug_id"]), str(c["tag"])
        if int(c["rank"]) == 0:
            row["reason"] = "bug_seed"
    return rows


def select_for_labeling(
    pool: pd.DataFrame,
    config: AcquisitionConfig,
    *,
    knn: pd.DataFrame | None = None,
    clusters: pd.DataFrame | None = None,
    n_labeled: int,
    bug_seeds: pd.DataFrame | None = None,
    vectors: pd.Series | None = None,
    labeled_vectors: np.ndarray | None = None,
) -> pd.DataFrame:
    """The labeling queue: up to `config.budget` images, each with its reason.

    Args:
        pool: `unlabeled_pool` rows (image_id, request_id, image_blob, scores;
            `novelty` too when a strategy ranks by it).
        config: The strategy, budget and shares.
        knn: KNN candidates of open bugs (bug_id, tag, image_id, distance,
            nearest_seed, rank); hitl only.
        clusters: image_id -> cluster (level 0) for diversity; hitl only.
        n_labeled: Images labeled so far (the node counts those outside the
            test split); hitl's cold start while it is below
            `config.cold_start_labeled`.
        bug_seeds: The open bugs' own images (bug_id, tag, image_id); hitl
            labels them before their candidates when `config.bug_seeds`.
        vectors: image_id -> embedding of the pool's images; the `typical`
            cold start's input (hitl only).
        labeled_vectors: (M, D) embeddings of the labeled images, in the
            same space; the `typical` cold start's input (hitl only).

    Returns:
        `LABELING_QUEUE_COLUMNS`, rank 1 first; an image appears once.
    """
    budget = min(config.budget, len(pool))
    taken: set[str] = set()
    rows: list[dict] = []

    def add(picked: list[dict]) -> None:
        for r in picked:
            if r["image_id"] not in taken and len(rows) < budget:
                taken.add(r["image_id"])
                rows.append(r)

    if config.strategy == "random":
        add(_random(pool, budget, config.seed, taken))
    elif config.strategy == "entropy":
        add(
            _confident_last(
                pool,
                budget,
                config.uncertainty_score,
                taken,
                None,
                None,
                "least_confident",
            )
        )
    else:
        cluster_of = (
            clusters.drop_duplicates("image_id").set_index("image_id")["cluster"]
            if clusters is not None and len(clusters)
            else None
        )
        if config.cold(n_labeled) and config.cold_start_pick == "typical":
            add(_typical(pool, budget, config.seed, vectors, labeled_vectors))
            # Pool images without a vector: the rest at random.
            add(_random(pool, budget - len(rows), config.seed, taken))
        elif config.cold(n_labeled):
            add(_representative(pool, budget, config.seed, cluster_of))
        else:
            total = config.bugs_share + config.confidence_share + config.random_share
            bugs_n = int(round(budget * config.bugs_share / total))
            conf_n = int(round(budget * config.confidence_share / total))
            add(
                _bug_candidates(
                    pool,
                    knn,
                    bugs_n,
                    taken,
                    config.bug_order,
                    config.bug_shortlist,
                    bug_seeds if config.bug_seeds else None,
                )
            )
            conf_n += bugs_n - len(rows)  # what the bugs could not fill rolls over
            add(
                _confident_last(
                    pool,
                    conf_n,
                    config.hitl_score,
                    taken,
                    config.cluster_cap,
                    cluster_of,
                    "low_confidence",
                )
            )
            add(_random(pool, budget - len(rows), config.seed, taken))
    out = pd.DataFrame(rows, columns=LABELING_QUEUE_COLUMNS[1:])
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out
