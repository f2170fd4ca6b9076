"""Similarity nodes: embed lake images, cluster and drill down, find more like a bug."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from edgeloop.acquisition import KNN_COLUMNS, learnable, unlabeled_pool
from edgeloop.classmap import ClassMap
from edgeloop.features import ObjectProfiles
from edgeloop.imaging import decode_image, decode_mask
from edgeloop.lake import Lake
from edgeloop.novelty import NOVELTY_COLUMNS, ColourHistograms, novelty_frame
from edgeloop.registry import load_model, promoted_row
from edgeloop.review_tasks import advance_status, current_bugs, live_bug_seeds
from edgeloop.similarity import (
    EmbeddingStore,
    embed_frame,
    embedding_map,
    make_embedder,
    montage,
    stored_vectors,
)
from edgeloop.vectorindex import (
    WEIGHTINGS,
    QueryBackground,
    QuerySpace,
    VectorIndex,
    cluster_path,
    fused_candidates,
    knn_candidates,
)

log = logging.getLogger(__name__)


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
            "mask_blob",
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
    keep = learnable(images, labelled)
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
    ids, vectors = stored_vectors(report, params, preds["image_id"].tolist())
    ref_ids, ref_vectors = stored_vectors(
        report, params, reference["image_id"].tolist()
    )
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
    blobs = pd.concat([preds[["image_id", "image_blob"]], reference])
    blobs = blobs.drop_duplicates("image_id").set_index("image_id")["image_blob"]

    def stored(keys: list[str]) -> np.ndarray:
        return _stored(
            store,
            histograms,
            pd.Series(keys),
            blobs.loc[keys],
            lambda blob: decode_image(lake.get_blob(blob)),
        )

    frame = novelty_frame(ids, vectors, ref_vectors, stored(ids), stored(ref_ids), k=k)
    log.info(
        "novelty: %d images against %d labelled (k=%d, %d colour bins)",
        len(frame),
        len(ref_ids),
        k,
        bins,
    )
    return frame


def _extra_spaces(
    lake: Lake,
    preds: pd.DataFrame,
    params: Mapping[str, Any],
    ids: list[str],
    classes: Mapping[str, Any],
) -> list[tuple[str, np.ndarray, float]]:
    """The spaces KNN fuses with the embedding: (name, vectors of `ids`, weight).

    `preds` are the lake's predictions (`_predictions`); each image's latest
    one gives its predicted mask.

    - `knn.colour_weight` > 0: joint RGB histograms of the images (the
      novelty's, in the embedding store; computed there if missing);
    - `knn.object_weight` > 0: object profiles of the latest predicted mask of
      each image (`edgeloop.features.object_profile`: how many objects of which
      sizes), stored by the mask's content address.

    Both need `knn.query: discriminative`.
    """
    settings = params.get("knn") or {}
    query = str(settings.get("query", "discriminative"))
    weights = {
        name: float(settings.get(f"{name}_weight", 1.0))
        for name in ("colour", "object")
    }
    for name, weight in weights.items():
        if not weight >= 0:
            raise ValueError(
                f"similarity.knn.{name}_weight must be >= 0, got {weight!r}"
            )
    if not any(weights.values()):
        return []
    if query != "discriminative":
        raise ValueError(
            "similarity.knn.colour_weight and object_weight > 0 need query: "
            f"discriminative (got {query!r}); set both to 0 for {query!r}"
        )
    store = EmbeddingStore(params.get("store", "data/04_feature/embeddings"))
    preds = preds.sort_values("ts", kind="stable").drop_duplicates(
        "image_id", keep="last"
    )
    preds = preds.set_index("image_id").loc[ids].reset_index()
    spaces = []
    if weights["colour"]:
        bins = int((params.get("novelty") or {}).get("colour_bins", 8))
        histograms = ColourHistograms(bins)
        spaces.append(
            (
                "colour",
                _stored(
                    store,
                    histograms,
                    preds["image_id"],
                    preds["image_blob"],
                    lambda blob: decode_image(lake.get_blob(blob)),
                ),
                weights["colour"],
            )
        )
    if weights["object"]:
        class_map = ClassMap.from_params(classes)
        names = tuple(classes.get("object_classes") or ()) or tuple(
            n for n in class_map.names if n != "background"
        )
        profiles = ObjectProfiles(tuple(class_map.id_of(n) for n in names))
        # Keyed by the mask blob's content address: a new prediction, a new key.
        keys = preds["mask_blob"].map(lambda blob: Path(blob).stem)
        spaces.append(
            (
                "object",
                _stored(
                    store,
                    profiles,
                    keys,
                    preds["mask_blob"],
                    lambda blob: decode_mask(lake.get_blob(blob)),
                ),
                weights["object"],
            )
        )
    return spaces


def _stored(
    store: EmbeddingStore,
    embedder: Any,
    keys: pd.Series,
    blobs: pd.Series,
    load: Any,
) -> np.ndarray:
    """`embedder`'s vectors of `blobs`, in order, computed only when not stored."""
    keys = keys.astype(str).tolist()
    items = pd.DataFrame({"image_id": keys, "image_blob": blobs.tolist()})
    embed_frame(embedder, store, items, load, progress=False)
    stored, vectors = store.load(embedder.backbone, embedder.weights, keys)
    row = {k: r for r, k in enumerate(stored)}
    missing = [k for k in keys if k not in row]
    if missing:
        raise RuntimeError(f"{embedder.backbone}: no stored vector for {missing[:3]}")
    return vectors[[row[k] for k in keys]]


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
    ids, vectors = stored_vectors(
        report, params, _predictions(lake)["image_id"].tolist()
    )
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
    lake: Lake,
    report: Mapping[str, Any],
    params: Mapping[str, Any],
    iteration: int,
    classes: Mapping[str, Any],
) -> tuple[pd.DataFrame, dict[str, Figure]]:
    """The N unlabeled images most like each open bug's seeds (or given ids).

    Labeled images and the seeds themselves are left out; each candidate
    appears once per bug. A bug that gets candidates moves `open -> candidates`.
    With `knn.colour_weight` or `knn.object_weight` > 0 the discriminative
    query is asked in those spaces too and the answers fused
    (`vectorindex.fused_candidates`, weighted by `knn.space_weighting`).

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
    ids, vectors = stored_vectors(report, params, preds["image_id"].tolist())
    bugs = current_bugs(lake.read("edge_cases"))
    queries = [("query", "query", query_ids)] if query_ids else live_bug_seeds(bugs)
    if not queries or not ids:
        log.info("no open bugs and no knn.image_ids: no KNN query to run")
        return pd.DataFrame(columns=KNN_COLUMNS), {}
    index_params = params.get("index") or {}
    pos = {i: p for p, i in enumerate(ids)}
    pool_set = set(pool["image_id"])
    in_pool = np.asarray([i in pool_set for i in ids], dtype=bool)
    pool_ids = [i for i, keep in zip(ids, in_pool, strict=True) if keep]
    outside_pool = set(ids) - pool_set
    weighting = str(settings.get("space_weighting", "loo"))
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"similarity.knn.space_weighting must be one of {WEIGHTINGS}, "
            f"got {weighting!r}"
        )
    extra = _extra_spaces(lake, preds, params, ids, classes)
    # A fused query scores every image exactly; a plain one searches the index.
    index = (
        VectorIndex.build(
            vectors[in_pool],
            pool_ids,
            kind=str(index_params.get("kind", "auto")),
            faiss_threshold=int(index_params.get("faiss_threshold", 50_000)),
        )
        if not extra
        else None
    )
    # Fitted on every embedded image, so a query does not move as labels come in.
    shrinkage = float(settings.get("shrinkage", 1.0))
    background = (
        QueryBackground.fit(vectors, shrinkage=shrinkage)
        if query == "discriminative"
        else None
    )
    backgrounds = {
        name: QueryBackground.fit(x, shrinkage=shrinkage) for name, x, _ in extra
    }
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
            # Scored over every prediction image (fixed as labels come in),
            # searched in the pool only.
            spaces = [QuerySpace(vectors, vectors[seed_rows], background)] + [
                QuerySpace(x, x[seed_rows], backgrounds[name], weight)
                for name, x, weight in extra
            ]
            found = fused_candidates(
                ids,
                spaces,
                known,
                n,
                exclude=labeled | outside_pool,
                weighting=weighting,
            )
            used = found.attrs["space_weights"]
            log.info(
                "%s: space weights %s",
                bug_id,
                ", ".join(
                    f"{name} {w:.2f}"
                    for name, w in zip(
                        ["embedding", *(e[0] for e in extra)], used, strict=True
                    )
                ),
            )
        frames.append(found.assign(bug_id=bug_id, tag=tag)[KNN_COLUMNS])
        shown = known[:6] + found["image_id"].tolist()[: 24 - min(len(known), 6)]
        montages[f"{bug_id}.png"] = montage(
            _thumbs(lake, blobs, shown),
            title=f"{bug_id} ({tag}): {min(len(known), 6)} seed(s), then nearest first",
            # A fused query's "distance" is minus its summed z-score: show the score.
            captions=["seed"] * min(len(known), 6)
            + [
                f"{d:.3f}" if index is not None else f"score {-d:.1f}"
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
