"""Edge-case retrieval benchmark: precision@50 of KNN from a few seed images.

Usage:
    .venv/bin/python benchmarks/retrieval.py [--project .] [--repeats 5]
        [--seeds 5] [--k 50] [--backbone resnet18] [--seed 0]
        [--low-conf-frac 0.05] [--colour-weight 1.0] [--object-weight 1.0]
        [--space-weighting loo] [--json OUT]
        [--camvid] [--camvid-lake PATH] [--store PATH]

Input: a project directory after `kedro run`: its lake (`data/lake`) holds the
`predictions` of the synthetic production stream and a promoted model. Images
are embedded with the project's own code (`make_embedder`: ImageNet weights if
they are in the torch cache, else the promoted model's encoder) through
`embed_frame` into the project's store (`data/04_feature/embeddings`, or
`--store`), so a project whose pipeline already embedded them embeds nothing.

Ground truth (only benchmarks and the simulator read it):
`data/01_raw/truth/stream/metadata.jsonl` (scene tags per stem) and
`data/01_raw/truth/stream/masks/<stem>.png` (0 background, 1-3 aircraft). A
stem's image_id is the sha256 of `data/01_raw/synthetic/stream/images/<stem>.png`.

Conditions: scene-level night, dusk, glare, haze (tags); object-level tiny (an
aircraft under 0.5% of the image) and many (>= 3 aircraft). An aircraft is an
8-connected component of aircraft pixels (any of classes 1-3) of at least 4
pixels. `edgeloop.features.mask_features` counts 4-connected components per
class instead, which splits rendered aircraft into 1-pixel fragments (a quarter
of the stream's images have one): by that count tiny and many have base rates
of about 0.47 and 0.31, so lift >= 3x would be impossible for tiny (1 / 0.47).
Both counts are printed.

For each condition and each of `--repeats` seeded repeats: draw `--seeds`
images of that condition, retrieve `--k` candidates with
`knn_candidates` over an exact `VectorIndex` (seeds excluded) and count how
many have the condition (precision@k). `--pooling` and `--query` are the
pipeline's `similarity.pooling` and `similarity.knn.query`: by default
style-and-content pooling and the discriminative (whitened-LDA) query.
With `--colour-weight` or `--object-weight` > 0 (the pipeline's
`similarity.knn.colour_weight` and `object_weight`, default 1) the table also
shows the pipeline's fused query (`fused_candidates`: the z-scored
similarities in the embedding, the colour histograms and the object profiles
of the predicted masks, summed with `--space-weighting` weights), and the
lift and targets judge it. CamVid has no predicted masks: colour only.
Baselines in the same table: the same query over colour histograms (8x8x8
RGB, L1-normalised, square root: Hellinger, cosine) and `--k` random
non-seed images. Lift = precision / base rate.
Targets: scene-level precision@k >= 0.8; object-level lift >= 3x.

Then "confidence checks pick rare conditions": the lowest `--low-conf-frac` of
predictions by mean_max_prob, the top `--low-conf-frac` by novelty, and the
review queue (`build_review_queue`, no feedback) ranked by mean_max_prob and
by novelty, with and without the cluster cap, as a rate of each rare
condition among the picks over its base rate (target >= 3x), and of the
scene-level rare conditions taken together ("any rare"). It also prints how
many condition tags 3x for every scene condition at once would need among
the queue's confidence picks: with one condition per image, more than 20
picks hold at these base rates. Novelty and the
clusters are the ones the project's run wrote
(`data/07_model_output/iter_0/novelty_scores.parquet`, `clusters.parquet`).

`--camvid`: the same retrieval over a CamVid lake (`--camvid-lake`, default
`<project>/data/lake_camvid`, else `<project>/data/lake` if it holds CamVid
images), the condition being the video sequence (file-name prefix, e.g.
0001TP). Without a CamVid lake it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from edgeloop.features import ObjectProfiles, mask_features
from edgeloop.imaging import decode_image, decode_mask, sha256
from edgeloop.lake import Lake
from edgeloop.novelty import colour_histograms
from edgeloop.registry import load_model, promoted_row
from edgeloop.review import ReviewConfig, build_review_queue, with_context
from edgeloop.similarity import (
    BACKBONES,
    POOLINGS,
    EmbeddingStore,
    embed_frame,
    make_embedder,
)
from edgeloop.synthetic import RARE_CONDITIONS
from edgeloop.vectorindex import (
    QUERIES,
    WEIGHTINGS,
    QueryBackground,
    QuerySpace,
    VectorIndex,
    fused_candidates,
    knn_candidates,
)

SCENE = ("night", "dusk", "glare", "haze")
OBJECT = ("tiny", "many")
RARE = ("night", "dusk", "glare", "haze", "cloud", "tiny", "many")
TINY_FRAC = 0.005  # an aircraft component under 0.5% of the image
MANY = 3  # aircraft components
MIN_PIXELS = 4  # smaller 8-connected specks are rasterisation fragments
# The synthetic stream's classes: 0 background, 1-3 aircraft; 255 ignored.
CLASS_IDS, OBJECT_IDS, IGNORE = (0, 1, 2, 3), (1, 2, 3), 255
SCENE_TARGET = 0.8  # precision@k
LIFT_TARGET = 3.0
ANY_RARE = "any rare"  # any of the scene-level rare conditions
STORE = "data/04_feature/embeddings"  # the similarity pipeline's store


# -- data -----------------------------------------------------------------------


def load_truth(project: Path) -> pd.DataFrame:
    """One row per stream stem: image_id, tags and the object conditions."""
    truth = project / "data/01_raw/truth/stream"
    images = project / "data/01_raw/synthetic/stream/images"
    meta = truth / "metadata.jsonl"
    if not meta.is_file():
        raise SystemExit(f"no ground truth at {meta}: is {project} a run project?")
    rows = []
    for line in meta.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        stem = rec["stem"]
        mask = decode_mask((truth / "masks" / f"{stem}.png").read_bytes())
        aircraft = np.isin(mask, OBJECT_IDS)
        regions, n = ndimage.label(aircraft, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
        sizes = sizes[sizes >= MIN_PIXELS]
        feats = mask_features(mask, CLASS_IDS, OBJECT_IDS, IGNORE)
        rows.append(
            {
                "stem": stem,
                "image_id": sha256((images / f"{stem}.png").read_bytes()),
                "tags": set(rec["tags"]),
                "tiny": bool((sizes < TINY_FRAC * mask.size).any()),
                "many": len(sizes) >= MANY,
                # the same by edgeloop.features (4-connected, per class)
                "tiny_4conn": any(f < TINY_FRAC for f in feats.object_fracs),
                "many_4conn": feats.n_objects >= MANY,
            }
        )
    frame = pd.DataFrame(rows)
    for tag in sorted(set().union(*frame["tags"])):
        frame[tag] = frame["tags"].map(lambda t, tag=tag: tag in t)
    return frame.drop(columns="tags")


def embed_rows(
    lake: Lake,
    items: pd.DataFrame,
    backbone: str,
    store_root: Path,
    pooling: str = "gap",
) -> tuple[str, list[str], np.ndarray, dict]:
    """Embeds items (image_id, image_blob) with the project's embedder.

    Returns (embedder description, ids, (N, D) vectors, embed_frame report).
    """
    row = promoted_row(lake.read("models"))
    model = load_model(lake, row) if row is not None else None
    embedder = make_embedder(backbone, model=model, pooling=pooling)
    store = EmbeddingStore(store_root)
    report = embed_frame(
        embedder,
        store,
        items[["image_id", "image_blob"]],
        lambda blob: decode_image(lake.get_blob(blob)),
        progress=False,
    )
    ids, vectors = store.load(
        embedder.backbone, embedder.weights, items["image_id"].tolist()
    )
    return f"{embedder.backbone} / {embedder.weights}", ids, vectors, report


# -- retrieval --------------------------------------------------------------------


def condition_rng(seed: int, name: str, repeat: int) -> np.random.Generator:
    """Per (condition, repeat) stream: results do not depend on condition order."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), repeat])


def retrieve(
    name: str,
    positive: np.ndarray,
    ids: list[str],
    indexes: Indexes,
    args: argparse.Namespace,
) -> dict[str, list[float]]:
    """Precision@k per repeat for each index and for random picks."""
    pos_rows = np.flatnonzero(positive)
    id_arr = np.asarray(ids, dtype=object)
    label = dict(zip(ids, positive.tolist(), strict=True))
    searched = {k: v for k, v in indexes.items() if v[0] is not None}
    out: dict[str, list[float]] = {name_: [] for name_ in (*searched, "random")}
    for r in range(args.repeats):
        rng = condition_rng(args.seed, name, r)
        seed_rows = rng.choice(pos_rows, args.seeds, replace=False)
        seed_ids = id_arr[seed_rows].tolist()
        for kind, (index, vectors, background) in searched.items():
            hits = knn_candidates(
                index,
                vectors[seed_rows],
                seed_ids,
                args.k,
                query=args.query,
                background=background,
            )
            out[kind].append(float(np.mean([label[i] for i in hits["image_id"]])))
        if fused(args):
            weights = {
                "cnn": 1.0,
                "hist": args.colour_weight,
                "objects": args.object_weight,
            }
            spaces = [
                QuerySpace(x, x[seed_rows], bg, weights[kind])
                for kind, (_, x, bg) in indexes.items()
                if weights[kind] > 0
            ]
            hits = fused_candidates(
                ids, spaces, seed_ids, args.k, weighting=args.space_weighting
            )
            out.setdefault("fused", []).append(
                float(np.mean([label[i] for i in hits["image_id"]]))
            )
        others = np.setdiff1d(np.arange(len(ids)), seed_rows)
        picks = rng.choice(others, min(args.k, len(others)), replace=False)
        out["random"].append(float(positive[picks].mean()))
    return out


def fused(args: argparse.Namespace) -> bool:
    """Whether the pipeline's KNN fuses other spaces (`fused_candidates`)."""
    extra = args.colour_weight > 0 or args.object_weight > 0
    return extra and args.query == "discriminative"


def fmt(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def retrieval_table(
    conditions: dict[str, tuple[str, np.ndarray]],
    ids: list[str],
    indexes: Indexes,
    args: argparse.Namespace,
    *,
    targets: bool,
) -> list[dict]:
    """Runs `retrieve` for every condition and prints one markdown table.

    The lift and the target judge what the pipeline's KNN does: the fused
    query (embedding, colour, object profiles) when `fused(args)`, else the
    CNN query alone.
    """
    results = []
    judged = "fused" if fused(args) else "CNN"
    head = [
        "condition",
        "kind",
        "base rate",
        "n",
        f"CNN p@{args.k}",
        *([f"fused p@{args.k}"] if fused(args) else []),
        f"{judged} lift",
        f"colour-hist p@{args.k}",
        f"random p@{args.k}",
    ]
    if targets:
        head += ["target", "met"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, (level, positive) in conditions.items():
        n, base = int(positive.sum()), float(positive.mean())
        row: dict = {"condition": name, "kind": level, "base_rate": base, "n": n}
        if n < args.seeds + 1:
            cells = [name, level, f"{base:.3f}", str(n), "too few"]
            cells += [""] * (len(head) - len(cells) - (2 if targets else 0))
            if targets:
                cells += ["", ""]
            print("| " + " | ".join(cells) + " |")
            results.append(row)
            continue
        prec = retrieve(name, positive, ids, indexes, args)
        cnn = float(np.mean(prec["cnn"]))
        best = float(np.mean(prec["fused"])) if fused(args) else cnn
        lift = best / base
        row.update(
            {
                "cnn_precision": prec["cnn"],
                "cnn_lift": cnn / base,
                **({"fused_precision": prec["fused"]} if fused(args) else {}),
                "judged": judged,
                "lift": lift,
                "hist_precision": prec["hist"],
                "random_precision": prec["random"],
                # what a perfect retriever could score: not enough positives
                "max_precision": min(1.0, (n - args.seeds) / args.k),
            }
        )
        cells = [
            name,
            level,
            f"{base:.3f}",
            str(n),
            fmt(prec["cnn"]),
            *([fmt(prec["fused"])] if fused(args) else []),
            f"{lift:.1f}x",
            fmt(prec["hist"]),
            fmt(prec["random"]),
        ]
        if targets:
            if level == "scene":
                target, met = f"p@{args.k} >= {SCENE_TARGET}", best >= SCENE_TARGET
            else:
                target, met = f"lift >= {LIFT_TARGET:.0f}x", lift >= LIFT_TARGET
            cells += [target, "met" if met else "NOT met"]
            row.update({"target": target, "met": bool(met)})
        print("| " + " | ".join(cells) + " |")
        results.append(row)
    return results


Indexes = dict[str, tuple[VectorIndex | None, np.ndarray, QueryBackground | None]]


def build_indexes(
    vectors: np.ndarray,
    hists: np.ndarray,
    ids: list[str],
    args: argparse.Namespace,
    objects: np.ndarray | None = None,
) -> Indexes:
    """Exact index, vectors and (for the discriminative query) background.

    `objects` (object profiles of predicted masks) only take part in the
    fused query, so they get no index.
    """

    def one(x: np.ndarray) -> tuple[VectorIndex, np.ndarray, QueryBackground | None]:
        background = (
            QueryBackground.fit(x, shrinkage=args.shrinkage)
            if args.query == "discriminative"
            else None
        )
        return VectorIndex.build(x, ids, kind="exact"), x, background

    out = {"cnn": one(vectors), "hist": one(hists)}
    if objects is not None and args.object_weight > 0:
        background = QueryBackground.fit(objects, shrinkage=args.shrinkage)
        out["objects"] = (None, objects, background)
    return out


# -- the synthetic stream -----------------------------------------------------------


def confidence_checks(
    preds: pd.DataFrame,
    cond: pd.DataFrame,
    args: argparse.Namespace,
    context: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> list[dict]:
    """Rate of each rare condition among confidence picks over its base rate.

    `context` (novelty_scores, clusters) is what the review node joins in
    (`with_context`); without it only the predictor's scores rank.
    """
    n_low = max(1, round(args.low_conf_frac * len(preds)))
    low = preds.sort_values(["mean_max_prob", "request_id"]).head(n_low)
    feedback = pd.DataFrame(
        columns=["feedback_id", "request_id", "image_id", "ts", "verdict"]
    )

    def queue_picks(frame: pd.DataFrame, config: ReviewConfig) -> tuple[list, list]:
        queue = build_review_queue(frame, feedback, config)
        low = queue[queue["reasons"].map(lambda r: "low_confidence" in r)]
        return queue["image_id"].tolist(), low["image_id"].tolist()

    plain, plain_low = queue_picks(preds, ReviewConfig())
    picks: dict[str, list[str]] = {
        f"lowest {args.low_conf_frac:.0%} mean_max_prob": low["image_id"].tolist(),
        "review queue, mean_max_prob (all samplers)": plain,
        "review queue, mean_max_prob picks": plain_low,
    }
    if context is not None:
        joined = with_context(preds, *context)
        top = joined.sort_values(
            ["novelty", "request_id"], ascending=[False, True]
        ).head(n_low)
        picks[f"top {args.low_conf_frac:.0%} novelty"] = top["image_id"].tolist()
        for cap in (None, 3):
            config = ReviewConfig(confidence_score="novelty", cluster_cap=cap)
            queue, queue_low = queue_picks(joined, config)
            what = f"cluster cap {cap}" if cap else "no cluster cap"
            picks[f"review queue, novelty, {what} (all samplers)"] = queue
            picks[f"review queue, novelty, {what} picks"] = queue_low
    cond = cond.set_index("image_id")
    scene_rare = [c for c in RARE_CONDITIONS if c in cond.columns]
    # The scene-level rare conditions taken together: is a pick rare at all?
    cond = cond.assign(**{ANY_RARE: cond[scene_rare].any(axis=1)})
    rare = [c for c in RARE if c in cond.columns] + [ANY_RARE]
    head = ["picks", "n", *rare]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    base = {c: float(cond[c].mean()) for c in rare}
    print(
        "| base rate | "
        + str(len(cond))
        + " | "
        + " | ".join(f"{base[c]:.3f}" for c in rare)
        + " |"
    )
    out = []
    for what, image_ids in picks.items():
        sub = cond.loc[[i for i in image_ids if i in cond.index]]
        lifts = {
            c: (float(sub[c].mean()) / base[c] if base[c] and len(sub) else math.nan)
            for c in rare
        }
        cells = [
            f"{lifts[c]:.1f}x {'met' if lifts[c] >= LIFT_TARGET else 'NOT met'}"
            for c in rare
        ]
        print(f"| {what} | {len(sub)} | " + " | ".join(cells) + " |")
        out.append(
            {
                "picks": what,
                "n": len(sub),
                "rate": {c: float(sub[c].mean()) if len(sub) else None for c in rare},
                "lift": lifts,
            }
        )
    top_k = ReviewConfig().confidence_top_k
    need = {c: math.ceil(LIFT_TARGET * base[c] * top_k - 1e-9) for c in scene_rare}
    multi = float((cond[scene_rare].sum(axis=1) >= 2).mean())
    print(
        f"\n{LIFT_TARGET:.0f}x for each of the {len(scene_rare)} scene conditions at "
        f"once needs {sum(need.values())} condition tags among the {top_k} "
        "confidence picks ("
        + ", ".join(f"{c} {n}" for c, n in need.items())
        + f"); {multi:.1%} of the stream has two or more of them."
    )
    return out


def review_context(project: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The similarity context the project's last run wrote for review.

    (novelty_scores, clusters), or None when the run predates novelty.
    """
    out = project / "data/07_model_output/iter_0"
    novelty, clusters = out / "novelty_scores.parquet", out / "clusters.parquet"
    if not novelty.is_file() or not clusters.is_file():
        print(f"(no {novelty.name} or {clusters.name} under {out}: novelty skipped)")
        return None
    return pd.read_parquet(novelty), pd.read_parquet(clusters)


def stream_benchmark(args: argparse.Namespace, project: Path) -> dict:
    lake = Lake(str(project / "data/lake"))
    if lake.version("predictions") is None or promoted_row(lake.read("models")) is None:
        raise SystemExit(
            f"{lake.root} needs a `predictions` table and a promoted model: "
            "run `kedro run` in the project first"
        )
    truth = load_truth(project)
    preds = lake.read("predictions").drop_duplicates("image_id")
    matched = preds[preds["image_id"].isin(set(truth["image_id"]))]
    print(
        f"\nground truth: {len(truth)} stream stems, {len(matched)} of "
        f"{len(preds)} prediction images matched by sha256"
    )
    if matched.empty:
        raise SystemExit(
            "no prediction image_id matches a stream image's sha256: "
            "the predictions are not of this project's synthetic stream"
        )
    what, ids, vectors, report = embed_rows(
        lake, matched, args.backbone, args.store or project / STORE, args.pooling
    )
    print(
        f"embeddings: {what}, {len(ids)} x {vectors.shape[1]} "
        f"({report['new']} new, {report['reused']} reused from the store)"
    )
    blobs = matched.set_index("image_id")["image_blob"]
    hists = colour_histograms([decode_image(lake.get_blob(blobs[i])) for i in ids])
    cond = truth.set_index("image_id").loc[ids].reset_index()
    conditions = {c: ("scene", cond[c].to_numpy(bool)) for c in SCENE if c in cond}
    conditions |= {c: ("object", cond[c].to_numpy(bool)) for c in OBJECT}
    base = " ".join(f"{c} {cond[c].mean():.3f}" for c in RARE if c in cond)
    print(f"base rates: {base}")
    print(
        "  (by edgeloop.features.mask_features, 4-connected per class: "
        f"tiny {cond['tiny_4conn'].mean():.3f} many {cond['many_4conn'].mean():.3f})"
    )
    print(
        f"\nKNN from {args.seeds} seeds of each condition, {args.k} candidates, "
        f"exact cosine, query {args.query} (shrinkage {args.shrinkage}); "
        f"mean ± std over {args.repeats} repeats (seed {args.seed})\n"
    )
    # Object profiles of the predicted masks, as the pipeline's KNN computes them.
    masks = matched.set_index("image_id")["mask_blob"]
    objects = ObjectProfiles(OBJECT_IDS).embed(
        [decode_mask(lake.get_blob(masks[i])) for i in ids]
    )
    indexes = build_indexes(vectors, hists, ids, args, objects)
    rows = retrieval_table(conditions, ids, indexes, args, targets=True)
    short = [r["condition"] for r in rows if r.get("max_precision", 1.0) < 1.0]
    if short:
        print(
            f"\n(too few positives for a perfect p@{args.k}: "
            + ", ".join(
                f"{r['condition']} max {r['max_precision']:.2f}"
                for r in rows
                if r["condition"] in short
            )
            + ")"
        )
    print(
        "\nconfidence checks pick rare conditions "
        f"(lift; target >= {LIFT_TARGET:.0f}x)\n"
    )
    conf = confidence_checks(
        matched, cond.drop(columns="stem"), args, review_context(project)
    )
    return {
        "embedder": what,
        "n": len(ids),
        "base_rates": {c: float(cond[c].mean()) for c in RARE if c in cond},
        "retrieval": rows,
        "confidence_checks": conf,
    }


# -- CamVid ----------------------------------------------------------------------


def camvid_lake(project: Path, given: str | None) -> Lake | None:
    """The lake holding CamVid images, or None."""
    candidates = (
        [Path(given)]
        if given
        else [
            project / "data/lake_camvid",
            project / "data/lake",
        ]
    )
    for root in candidates:
        if not (root / "tables/images").is_dir():
            continue
        lake = Lake(str(root))
        images = lake.read("images", columns=["source"])
        if (images["source"] == "camvid").any():
            return lake
    return None


def camvid_benchmark(args: argparse.Namespace, project: Path) -> dict | None:
    lake = camvid_lake(project, args.camvid_lake)
    if lake is None:
        where = args.camvid_lake or f"{project}/data/lake_camvid or {project}/data/lake"
        print(f"\nCamVid: no lake with CamVid images at {where}; skipped.")
        return None
    if promoted_row(lake.read("models")) is None:
        print(f"\nCamVid: {lake.root} has no promoted model to embed with; skipped.")
        return None
    images = lake.read("images")
    images = images[images["source"] == "camvid"].rename(
        columns={"blob_uri": "image_blob"}
    )
    what, ids, vectors, report = embed_rows(
        lake, images, args.backbone, args.store or project / STORE, args.pooling
    )
    blobs = images.set_index("image_id")["image_blob"]
    hists = colour_histograms([decode_image(lake.get_blob(blobs[i])) for i in ids])
    seq = (
        images.set_index("image_id")
        .loc[ids, "source_path"]
        .map(lambda p: Path(p).name.split("_")[0])
        .to_numpy()
    )
    print(
        f"\nCamVid ({lake.root}): {len(ids)} images, embeddings {what} "
        f"({report['new']} new, {report['reused']} reused); condition = sequence\n"
    )
    conditions = {s: ("sequence", seq == s) for s in sorted(set(seq))}
    rows = retrieval_table(
        conditions, ids, build_indexes(vectors, hists, ids, args), args, targets=False
    )
    return {"lake": lake.root, "embedder": what, "n": len(ids), "retrieval": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument(
        "--project", default=".", help="project directory after `kedro run` (.)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="seeded repeats (5)")
    parser.add_argument(
        "--seeds", type=int, default=5, help="seed images per query (5)"
    )
    parser.add_argument("--k", type=int, default=50, help="candidates retrieved (50)")
    parser.add_argument("--backbone", choices=BACKBONES, default="resnet18")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (0)")
    parser.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="both",
        help="embedding pooling, as similarity.pooling (both)",
    )
    parser.add_argument(
        "--query",
        choices=QUERIES,
        default="discriminative",
        help="how seeds query the index, as similarity.knn.query (discriminative)",
    )
    parser.add_argument(
        "--colour-weight",
        type=float,
        default=1.0,
        help="weight of colour histograms fused into the discriminative query, "
        "as similarity.knn.colour_weight (1.0; 0: the CNN query alone)",
    )
    parser.add_argument(
        "--object-weight",
        type=float,
        default=1.0,
        help="weight of predicted-mask object profiles in the fused query, "
        "as similarity.knn.object_weight (1.0; 0: none)",
    )
    parser.add_argument(
        "--space-weighting",
        choices=WEIGHTINGS,
        default="loo",
        help="how the fused query weights its spaces, as "
        "similarity.knn.space_weighting (loo)",
    )
    parser.add_argument(
        "--shrinkage",
        type=float,
        default=1.0,
        help="ridge of the discriminative query, as similarity.knn.shrinkage (1.0)",
    )
    parser.add_argument(
        "--low-conf-frac",
        type=float,
        default=0.05,
        help="fraction of lowest-confidence predictions picked (0.05)",
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help=f"embedding store (default <project>/{STORE})",
    )
    parser.add_argument(
        "--camvid", action="store_true", help="also run the CamVid sequence check"
    )
    parser.add_argument(
        "--camvid-lake",
        default=None,
        help="CamVid lake root (default <project>/data/lake_camvid, then data/lake)",
    )
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    project = Path(args.project).resolve()

    out: dict = {
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        }
    }
    out["stream"] = stream_benchmark(args, project)
    if args.camvid:
        out["camvid"] = camvid_benchmark(args, project)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=_jsonable))
        print(f"\nwrote {args.json}", file=sys.stderr)


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


if __name__ == "__main__":
    main()
