"""Similarity nodes: embed lake images, cluster and drill down, find more like a bug."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from edgeloop.acquisition import unlabeled_pool
from edgeloop.imaging import decode_image
from edgeloop.lake import Lake
from edgeloop.novelty import NOVELTY_COLUMNS, ColourHistograms, novelty_frame
from edgeloop.registry import load_model, promoted_row
from edgeloop.review_tasks import advance_status, current_bugs
from edgeloop.similarity import (
    EmbeddingStore,
    embed_frame,
    embedding_map,
    make_embedder,
    montage,
)
from edgeloop.vectorindex import (
    QueryBackground,
    QuerySpace,
    VectorIndex,
    cluster_path,
    fused_candidates,
    knn_candidates,
)

log = logging.getLogger(__name__)

KNN_COLUMNS = ["bug_id", "tag", "image_id", "distance", "nearest_seed", "rank"]
LIVE_STATUSES = ("open", "candidates")


def _embedder(lake: Lake, models: pd.DataFrame, params: Mapping[str, Any]):
    row = promoted_row(models)
    return make_embedder(
        str(params.get("backbone", "resnet18")),
        weights_path=params.get("weights_path") or None,
        model=load_model(lake, row) if row is not None else None,
        allow_random=bool(params.get("allow_random", False)),
        batch_size=int(params.get("batch_size", 32)),
        input_size=params.get("input_size") or None,
        pooling=str(params.get("pooling", "both")),
    )


def _predictions(lake: Lake) -> pd.DataFrame:
    return lake.read(
        "predictions",
        columns=[
            "request_id",
            "ts",
            "image_id",
            "image_blob",
            "mean_max_prob",
            "mean_entropy",
            "mean_margin",
            "low_conf_frac",
        ],
    )


def embed_images(
    lake: Lake, models: pd.DataFrame, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Embeds every prediction image that has no embedding for this backbone yet.

    Returns:
        The embedding report: backbone, weights, dim, images, new, reused,
        seconds, images_per_second and the predictions' Delta version.
    """
    embedder = _embedder(lake, models, params)
    store = EmbeddingStore(params.get("store", "data/04_feature/embeddings"))
    preds = _predictions(lake)
    report = embed_frame(
        embedder,
        store,
        preds[["image_id", "image_blob"]],
        lambda blob: decode_image(lake.get_blob(blob)),
    )
    report["predictions_version"] = lake.reads.get("predictions")
    report["store"] = str(store.folder(embedder.backbone, embedder.weights))
    # The labelled reference that novelty is measured against, in the same store.
    reference = embed_frame(
        embedder,
        store,
        _reference(lake),
        lambda blob: decode_image(lake.get_blob(blob)),
        progress=False,
    )
    report["reference"] = {
        k: reference[k] for k in ("images", "new", "reused", "seconds")
    }
    log.info(
        "embeddings (%s, %s, %d-d): %d new, %d reused in %.1fs "
        "(labelled reference: %d new, %d reused)",
        report["backbone"],
        report["weights"],
        report["dim"],
        report["new"],
        report["reused"],
        report["seconds"],
        reference["new"],
        reference["reused"],
    )
    return report


def _reference(lake: Lake) -> pd.DataFrame:
    """Labelled images outside the official test split (image_id, image_blob).

    What the promoted model could have learned from: the reference of novelty.
    """
    images = lake.read("images", columns=["image_id", "blob_uri", "split"])
    labelled = set(lake.read("labels", columns=["image_id"])["image_id"])
    keep = images["image_id"].isin(labelled) & (images["split"] != "test")
    return (
        images.loc[keep, ["image_id", "blob_uri"]]
        .rename(columns={"blob_uri": "image_blob"})
        .drop_duplicates("image_id")
        .reset_index(drop=True)
    )


def score_novelty(
    lake: Lake, report: Mapping[str, Any], params: Mapping[str, Any]
) -> pd.DataFrame:
    """Each prediction image's novelty against the labelled reference.

    See `edgeloop.novelty`: the k-nearest-neighbour distance in the embedding
    and in colour histograms, combined by the larger percentile rank. The review
    pipeline's confidence checks can rank by it (`confidence_score: novelty`).

    Returns:
        One row per prediction image, `NOVELTY_COLUMNS`; empty when the lake
        has no predictions, NaN scores (with a warning) when nothing is
        labelled outside the test split yet.
    """
    settings = params.get("novelty") or {}
    k = int(settings.get("k", 5))
    bins = int(settings.get("colour_bins", 8))
    preds = _predictions(lake).drop_duplicates("image_id")
    if preds.empty:
        return pd.DataFrame(columns=NOVELTY_COLUMNS)
    reference = _reference(lake)
    ids, vectors = _load(report, params, preds["image_id"].tolist())
    ref_ids, ref_vectors = _load(report, params, reference["image_id"].tolist())
    if not ref_ids:
        log.warning(
            "novelty: no labelled images outside the test split to compare with; "
            "every novelty score is NaN"
        )
        frame = pd.DataFrame({"image_id": ids})
        for column in NOVELTY_COLUMNS[1:]:
            frame[column] = np.nan
        return frame
    # Histograms are stored like embeddings: each image is decoded once.
    histograms = ColourHistograms(bins)
    store = EmbeddingStore(params.get("store", "data/04_feature/embeddings"))
    embed_frame(
        histograms,
        store,
        pd.concat([preds[["image_id", "image_blob"]], reference]),
        lambda blob: decode_image(lake.get_blob(blob)),
        progress=False,
    )
    hist_ids, hists = store.load(histograms.backbone, histograms.weights, ids)
    ref_hist_ids, ref_hists = store.load(
        histograms.backbone, histograms.weights, ref_ids
    )
    if hist_ids != ids or ref_hist_ids != ref_ids:  # both sorted by id
        raise RuntimeError("colour histograms and embeddings cover different images")
    frame = novelty_frame(ids, vectors, ref_vectors, hists, ref_hists, k=k)
    log.info(
        "novelty: %d images against %d labelled (k=%d, %d colour bins)",
        len(frame),
        len(ref_ids),
        k,
        bins,
    )
    return frame


def _colour_space(
    lake: Lake,
    preds: pd.DataFrame,
    params: Mapping[str, Any],
    ids: list[str],
    settings: Mapping[str, Any],
    query: str,
) -> tuple[np.ndarray, QueryBackground, float] | None:
    """(histograms of `ids`, their background, weight) when KNN fuses colour.

    `knn.colour_weight` > 0 adds joint RGB histograms (the novelty's, from the
    embedding store; computed there if missing) to the discriminative query.
    """
    weight = float(settings.get("colour_weight", 1.0))
    if not weight >= 0:
        raise ValueError(f"similarity.knn.colour_weight must be >= 0, got {weight!r}")
    if weight == 0:
        return None
    if query != "discriminative":
        raise ValueError(
            "similarity.knn.colour_weight > 0 needs query: discriminative "
            f"(got {query!r}); set colour_weight: 0 for {query!r}"
        )
    bins = int((params.get("novelty") or {}).get("colour_bins", 8))
    histograms = ColourHistograms(bins)
    store = EmbeddingStore(params.get("store", "data/04_feature/embeddings"))
    embed_frame(
        histograms,
        store,
        preds[["image_id", "image_blob"]],
        lambda blob: decode_image(lake.get_blob(blob)),
        progress=False,
    )
    hist_ids, hists = store.load(histograms.backbone, histograms.weights, ids)
    if hist_ids != ids:  # both sorted by id
        raise RuntimeError("colour histograms and embeddings cover different images")
    shrinkage = float(settings.get("shrinkage", 1.0))
    return hists, QueryBackground.fit(hists, shrinkage=shrinkage), weight


def _load(
    report: Mapping[str, Any], params: Mapping[str, Any], ids: list[str]
) -> tuple[list[str], np.ndarray]:
    """The stored vectors of `ids` (the store also holds the labelled reference)."""
    store = EmbeddingStore(params.get("store", "data/04_feature/embeddings"))
    return store.load(report["backbone"], report["weights"], ids)


def _thumbs(lake: Lake, blobs: pd.Series, ids: list[str]) -> list[np.ndarray]:
    return [decode_image(lake.get_blob(blobs[i])) for i in ids]


def cluster_images(
    lake: Lake, report: Mapping[str, Any], params: Mapping[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Figure], Figure]:
    """k-means over the embeddings, drilled down along `clustering.drill_path`.

    Returns:
        clusters: one row per image and level on the path (image_id, level,
            parent_path, cluster, path), so the hierarchy is kept;
        summary: cluster sizes per level and the settings;
        montages: one thumbnail grid per cluster of the last level;
        map: a 2-D map of the last level, by cluster and by confidence.
    """
    settings = params.get("clustering") or {}
    k = int(settings.get("k", 8))
    drill = [int(c) for c in (settings.get("drill_path") or [])]
    seed = int(settings.get("seed", 0))
    # Prediction images only: the store also holds the labelled reference.
    ids, vectors = _load(report, params, _predictions(lake)["image_id"].tolist())
    if not ids:
        raise ValueError("no embeddings to cluster: the lake has no predictions yet")
    k_eff = min(k, len(ids))
    levels, summary_levels = [], []
    for depth in range(len(drill) + 1):
        level = cluster_path(vectors, ids, drill[:depth], k=k_eff, seed=seed)
        parent = "/".join(str(c) for c in drill[:depth])
        levels.append(level.assign(level=depth, parent_path=parent))
        summary_levels.append(
            {
                "level": depth,
                "parent_path": parent,
                "members": len(level),
                "sizes": level["cluster"]
                .value_counts()
                .sort_index()
                .astype(int)
                .to_dict(),
            }
        )
    clusters = pd.concat(levels, ignore_index=True)[
        ["image_id", "level", "parent_path", "cluster", "path"]
    ]
    last = levels[-1]
    preds = (
        _predictions(lake)
        .drop_duplicates("image_id", keep="last")
        .set_index("image_id")
    )
    size = int(settings.get("montage_size", 24))
    montages = {}
    for _, group in last.groupby("cluster", sort=True):
        members = sorted(group["image_id"])[:size]
        path = group["path"].iloc[0]
        montages[f"cluster_{path.replace('/', '-')}.png"] = montage(
            _thumbs(lake, preds["image_blob"], members),
            title=f"cluster {path}: {len(group)} images (first {len(members)} by id)",
            captions=[f"{preds.at[i, 'mean_max_prob']:.2f}" for i in members],
        )
    member_rows = [ids.index(i) for i in last["image_id"]] if drill else slice(None)
    fig, _ = embedding_map(
        vectors[member_rows],
        last["cluster"].to_numpy(),
        preds.loc[last["image_id"], "mean_max_prob"].to_numpy(),
        seed=seed,
        title=f"{report['backbone']} ({report['weights']}), path "
        f"{'/'.join(map(str, drill)) or 'top'}",
    )
    summary = {
        "k": k_eff,
        "drill_path": drill,
        "seed": seed,
        "backbone": report["backbone"],
        "weights": report["weights"],
        "dim": report["dim"],
        "levels": summary_levels,
    }
    log.info(
        "clusters: %d images, k=%d, drilled %s -> %d members",
        len(ids),
        k_eff,
        drill or "(top)",
        len(last),
    )
    return clusters, summary, montages, fig


def find_similar(
    lake: Lake, report: Mapping[str, Any], params: Mapping[str, Any], iteration: int
) -> tuple[pd.DataFrame, dict[str, Figure]]:
    """The N unlabeled images most like each open bug's seeds (or given ids).

    Labeled images and the seeds themselves are left out; each candidate
    appears once per bug. A bug that gets candidates moves `open -> candidates`.

    Returns:
        (candidates with `KNN_COLUMNS`, one montage per bug: seeds then candidates)
    """
    settings = params.get("knn") or {}
    n = int(settings.get("n", 50))
    query = str(settings.get("query", "discriminative"))
    query_ids = [str(i) for i in (settings.get("image_ids") or [])]
    preds = _predictions(lake)
    labeled = set(lake.read("labels", columns=["image_id"])["image_id"])
    pool = unlabeled_pool(preds, labeled)
    ids, vectors = _load(report, params, preds["image_id"].tolist())
    bugs = current_bugs(lake.read("edge_cases"))
    if query_ids:
        queries = [("query", "query", query_ids)]
    else:
        live = bugs[bugs["status"].isin(LIVE_STATUSES)]
        queries = [
            (r.bug_id, r.tag, [str(s) for s in r.seed_image_ids])
            for r in live.sort_values("bug_id").itertuples()
        ]
    if not queries or not ids:
        log.info("no open bugs and no knn.image_ids: no KNN query to run")
        return pd.DataFrame(columns=KNN_COLUMNS), {}
    index_params = params.get("index") or {}
    pos = {i: p for p, i in enumerate(ids)}
    pool_set = set(pool["image_id"])
    in_pool = np.asarray([i in pool_set for i in ids], dtype=bool)
    pool_ids = [i for i, keep in zip(ids, in_pool, strict=True) if keep]
    outside_pool = set(ids) - pool_set
    colour = _colour_space(lake, preds, params, ids, settings, query)
    # A fused query scores every image exactly; a plain one searches the index.
    index = (
        VectorIndex.build(
            vectors[in_pool],
            pool_ids,
            kind=str(index_params.get("kind", "auto")),
            faiss_threshold=int(index_params.get("faiss_threshold", 50_000)),
        )
        if colour is None
        else None
    )
    # Fitted on every embedded image, so a query does not move as labels come in.
    background = (
        QueryBackground.fit(vectors, shrinkage=float(settings.get("shrinkage", 1.0)))
        if query == "discriminative"
        else None
    )
    frames, montages = [], {}
    blobs = preds.drop_duplicates("image_id").set_index("image_id")["image_blob"]
    for bug_id, tag, seeds in queries:
        known = [s for s in seeds if s in pos]
        unknown = sorted(set(seeds) - set(known))
        if unknown:
            log.warning(
                "%s: %d seed(s) have no embedding, e.g. %s",
                bug_id,
                len(unknown),
                unknown[:2],
            )
        if not known:
            continue
        seed_rows = [pos[s] for s in known]
        if index is not None:
            found = knn_candidates(
                index,
                vectors[seed_rows],
                known,
                n,
                exclude=labeled,
                query=query,
                background=background,
            )
        else:
            assert colour is not None
            hists, hist_background, weight = colour
            # Scored over every prediction image (fixed as labels come in),
            # searched in the pool only.
            found = fused_candidates(
                ids,
                [
                    QuerySpace(vectors, vectors[seed_rows], background),
                    QuerySpace(hists, hists[seed_rows], hist_background, weight),
                ],
                known,
                n,
                exclude=labeled | outside_pool,
            )
        frames.append(found.assign(bug_id=bug_id, tag=tag)[KNN_COLUMNS])
        shown = known[:6] + found["image_id"].tolist()[: 24 - min(len(known), 6)]
        montages[f"{bug_id}.png"] = montage(
            _thumbs(lake, blobs, shown),
            title=f"{bug_id} ({tag}): {min(len(known), 6)} seed(s), then nearest first",
            captions=["seed"] * min(len(known), 6)
            + [
                f"{d:.3f}"
                for d in found["distance"].tolist()[: len(shown) - min(len(known), 6)]
            ],
        )
    candidates = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=KNN_COLUMNS)
    )
    moved = []
    for bug_id in sorted(set(candidates["bug_id"]) - {"query"}):
        status = bugs.loc[bugs["bug_id"] == bug_id, "status"].iloc[0]
        if status == "open":
            moved.append(
                advance_status(
                    lake.read("edge_cases"),
                    bug_id,
                    "candidates",
                    iteration=int(iteration),
                    now=datetime.now(UTC),
                )
            )
    if moved:
        lake.append("edge_cases", pd.concat(moved, ignore_index=True))
    log.info(
        "KNN: %d candidate(s) for %d query(ies); %d bug(s) moved to candidates",
        len(candidates),
        len(queries),
        len(moved),
    )
    return candidates, montages
