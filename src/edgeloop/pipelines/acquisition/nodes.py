"""Acquisition node: the labeling queue."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from edgeloop.acquisition import (
    AcquisitionConfig,
    learnable,
    select_for_labeling,
    unlabeled_pool,
)
from edgeloop.lake import Lake
from edgeloop.novelty import join_novelty
from edgeloop.review_tasks import current_bugs, live_bug_seeds
from edgeloop.similarity import stored_vectors

log = logging.getLogger(__name__)


def _bug_seeds(lake: Lake) -> pd.DataFrame:
    """The open bugs' own images: one row (bug_id, tag, image_id) per seed."""
    live = live_bug_seeds(current_bugs(lake.read("edge_cases")))
    rows = [(bug_id, tag, s) for bug_id, tag, seeds in live for s in seeds]
    return pd.DataFrame(rows, columns=["bug_id", "tag", "image_id"])


def _counts(values: pd.Series) -> dict[str, int]:
    """value -> how many rows have it, sorted by value (missing values left out)."""
    return values.value_counts().sort_index().astype(int).to_dict()


def build_labeling_queue(
    lake: Lake,
    knn: pd.DataFrame,
    clusters: pd.DataFrame,
    novelty: pd.DataFrame,
    embedding_report: Mapping[str, Any],
    params: Mapping[str, Any],
    similarity: Mapping[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Picks `acquisition.budget` unlabeled images with `acquisition.strategy`.

    The pool is every predicted image that has no label yet (its latest
    prediction's scores, and its `novelty` from the similarity context).
    `random` and `entropy` ignore the KNN candidates, clusters and novelty
    (unless a score names it); all three strategies run this same node.
    hitl's cold start counts the labeled images outside the test split;
    with `hitl.bug_seeds` the open bugs' own images (from the lake's
    `edge_cases`) go before their candidates; the `typical` cold start reads
    the pool's and the labeled images' embeddings from the similarity store.
    """
    config = AcquisitionConfig.from_params(params)
    labeled = set(lake.read("labels", columns=["image_id"])["image_id"])
    images = lake.read("images", columns=["image_id", "split"])
    learnable_ids = set(images.loc[learnable(images, labeled), "image_id"])
    n_learnable = len(learnable_ids)
    preds = lake.read("predictions")
    pool = join_novelty(unlabeled_pool(preds, labeled), novelty)
    if (
        config.strategy == "hitl"
        and config.hitl_score == "novelty"
        and len(pool)
        and pool["novelty"].isna().all()
    ):
        log.warning(
            "labeling queue: no pool image has a novelty score (run the similarity "
            "context first), so hitl's confidence share goes to random picks"
        )
    top = clusters[clusters["level"] == 0] if len(clusters) else clusters
    seeds = _bug_seeds(lake) if config.strategy == "hitl" and config.bug_seeds else None
    vectors = labeled_vectors = None
    if config.cold(n_learnable) and config.cold_start_pick == "typical":
        # The embeddings embed_images stored (the pool and the labeled).
        ids, matrix = stored_vectors(
            embedding_report, similarity, pool["image_id"].tolist()
        )
        vectors = pd.Series(list(matrix), index=ids, dtype=object)
        _, labeled_vectors = stored_vectors(
            embedding_report, similarity, sorted(learnable_ids)
        )
        if vectors.empty and len(pool):
            log.warning(
                "labeling queue: no stored embedding for the pool (run the "
                "similarity context first), so the typical cold start picks at random"
            )
    queue = select_for_labeling(
        pool,
        config,
        knn=knn,
        clusters=top,
        n_labeled=n_learnable,
        bug_seeds=seeds,
        vectors=vectors,
        labeled_vectors=labeled_vectors,
    )
    summary = {
        "strategy": config.strategy,
        "budget": config.budget,
        "pool": len(pool),
        "labeled": len(labeled),
        "picked": len(queue),
        "labeled_outside_test": n_learnable,
        "cold_start": config.cold(n_learnable),
        "per_reason": _counts(queue["reason"]),
        # The bug share's picks per condition their bug was flagged with.
        "per_bug_tag": _counts(queue["bug_tag"]),
        "predictions_version": lake.reads.get("predictions"),
        "labels_version": lake.reads.get("labels"),
    }
    if len(queue) < config.budget:
        log.warning(
            "labeling queue: only %d of a budget of %d (the unlabeled pool has %d)",
            len(queue),
            config.budget,
            len(pool),
        )
    log.info(
        "labeling queue (%s): %d image(s): %s",
        config.strategy,
        len(queue),
        ", ".join(f"{k} {v}" for k, v in summary["per_reason"].items()) or "none",
    )
    return queue, summary
