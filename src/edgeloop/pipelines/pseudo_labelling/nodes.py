"""Pseudo-labelling node: every queued image pre-annotated by each chosen method."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.classmap import ClassMap
from edgeloop.imaging import decode_image, decode_mask, encode_png
from edgeloop.lake import Lake
from edgeloop.progress import tqdm
from edgeloop.pseudo import (
    METHODS,
    PreLabel,
    agreement,
    generic_members,
    load_off_the_shelf,
    model_prelabel,
    quality,
    slic_prelabel,
)
from edgeloop.registry import load_model, promoted_row

log = logging.getLogger(__name__)

PRELABEL_COLUMNS = [
    "image_id",
    "method",
    "labels",
    "mask_png",
    "confidence",
    "agreement",
    "quality",
    "model_version",
]


@dataclass(frozen=True)
class PseudoConfig:
    """The `pseudo_labelling` parameters."""

    methods: tuple[str, ...]
    n_segments: int
    compactness: float
    max_num_iter: int
    off_the_shelf: Mapping[str, Any]
    batch_size: int

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PseudoConfig:
        methods = tuple(params.get("methods") or METHODS)
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(
                f"pseudo_labelling.methods has unknown {unknown}; "
                f"valid: {list(METHODS)}"
            )
        slic = params.get("slic") or {}
        return cls(
            methods=methods,
            n_segments=int(slic.get("n_segments", 300)),
            compactness=float(slic.get("compactness", 10.0)),
            max_num_iter=int(slic.get("max_num_iter", 5)),
            off_the_shelf=dict(params.get("off_the_shelf") or {}),
            batch_size=int(params.get("batch_size", 8)),
        )


def prelabels_from_frame(
    frame: pd.DataFrame,
) -> dict[str, list[tuple[PreLabel, float]]]:
    """image_id -> [(pre-annotation, quality)] from the `prelabels` table."""
    out: dict[str, list[tuple[PreLabel, float]]] = {}
    for row in frame.itertuples(index=False):
        pre = PreLabel(
            row.method,
            decode_mask(row.mask_png),
            tuple(row.labels),
            float(row.confidence),
        )
        out.setdefault(row.image_id, []).append((pre, float(row.quality)))
    return out


def prelabel_queue(
    lake: Lake,
    queue: pd.DataFrame,
    models: pd.DataFrame,
    params: Mapping[str, Any],
    classes: Mapping[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Pre-annotates every queued image with each method in `methods`.

    - own_model: the promoted model (skipped, with a log line, when none is).
    - slic: superpixels voted by the promoted model, or bare regions without one.
    - off_the_shelf: a local torchvision checkpoint (skipped when none is found).

    Each row gets a confidence, its mean agreement with the other methods and
    a quality (the two averaged), so annotators see doubtful ones first.

    Returns:
        (prelabels, report): one row per (image, method), `PRELABEL_COLUMNS`;
        the report has per-method counts, mean scores, seconds per image and
        the methods skipped with why.
    """
    config = PseudoConfig.from_params(params)
    cm = ClassMap.from_params(classes)
    report: dict[str, Any] = {"methods": list(config.methods), "skipped": {}}
    if queue.empty:
        log.info("pseudo-labelling: the labeling queue is empty")
        return pd.DataFrame(columns=PRELABEL_COLUMNS), report | {"images": 0}
    row = promoted_row(models)
    own = load_model(lake, row) if row is not None else None
    own_predictor = own.predictor(batch_size=config.batch_size) if own else None
    if own is None:
        if "own_model" in config.methods:
            report["skipped"]["own_model"] = "no promoted model"
        log.warning("pseudo-labelling: no promoted model; own_model skipped")
    shelf = None
    if "off_the_shelf" in config.methods:
        shelf = load_off_the_shelf(config.off_the_shelf, cm.names)
        if shelf is None:
            report["skipped"]["off_the_shelf"] = "no checkpoint found locally"
    versions = {
        "own_model": own.version if own else None,
        "slic": own.version if own else None,
        "off_the_shelf": shelf.source if shelf else None,
    }
    ids = queue["image_id"].tolist()
    blobs = queue["image_blob"].tolist()
    seconds = {m: 0.0 for m in config.methods}
    per_image: dict[str, list[PreLabel]] = {}
    step = max(config.batch_size, 1)
    for start in tqdm(range(0, len(ids), step), desc="pre-labelling", unit="batch"):
        chunk_ids = ids[start : start + step]
        images = [decode_image(lake.get_blob(b)) for b in blobs[start : start + step]]
        got: dict[str, list[PreLabel]] = {i: [] for i in chunk_ids}
        own_pres = None
        if own_predictor is not None:
            t0 = time.perf_counter()
            own_pres = model_prelabel(own_predictor, images, method="own_model")
            if "own_model" in config.methods:
                seconds["own_model"] += time.perf_counter() - t0
                for i, pre in zip(chunk_ids, own_pres, strict=True):
                    got[i].append(pre)
        if "slic" in config.methods:
            t0 = time.perf_counter()
            for k, (i, image) in enumerate(zip(chunk_ids, images, strict=True)):
                got[i].append(
                    slic_prelabel(
                        image,
                        class_names=cm.names,
                        model_mask=None if own_pres is None else own_pres[k].mask,
                        n_segments=config.n_segments,
                        compactness=config.compactness,
                        max_num_iter=config.max_num_iter,
                    )
                )
            seconds["slic"] += time.perf_counter() - t0
        if shelf is not None:
            t0 = time.perf_counter()
            for i, pre in zip(chunk_ids, shelf.prelabel(images), strict=True):
                got[i].append(pre)
            seconds["off_the_shelf"] += time.perf_counter() - t0
        per_image.update(got)

    members = generic_members(config.off_the_shelf)
    rows = []
    for image_id in ids:
        pres = per_image[image_id]
        agree: dict[int, list[float]] = {k: [] for k in range(len(pres))}
        for a, b in combinations(range(len(pres)), 2):
            value = agreement(pres[a], pres[b], cm, generic_members=members)
            agree[a].append(value)
            agree[b].append(value)
        for k, pre in enumerate(pres):
            rows.append(
                {
                    "image_id": image_id,
                    "method": pre.method,
                    "labels": list(pre.labels),
                    "mask_png": encode_png(pre.mask),
                    "confidence": pre.confidence,
                    "agreement": float(np.mean(agree[k])) if agree[k] else None,
                    "quality": quality(pre.confidence, agree[k]),
                    "model_version": versions[pre.method],
                }
            )
    frame = pd.DataFrame(rows, columns=PRELABEL_COLUMNS)
    report["images"] = len(ids)
    report["per_method"] = {
        m: {
            "n": int(len(g)),
            "mean_confidence": float(g["confidence"].mean()),
            "mean_agreement": None
            if g["agreement"].isna().all()
            else float(g["agreement"].mean()),
            "mean_quality": float(g["quality"].mean()),
            "seconds_per_image": seconds[m] / max(len(ids), 1),
            "model_version": versions[m],
        }
        for m, g in frame.groupby("method", sort=True)
    }
    log.info(
        "pre-labelled %d image(s): %s",
        len(ids),
        ", ".join(
            f"{m} q={v['mean_quality']:.2f}" for m, v in report["per_method"].items()
        )
        or "no method ran",
    )
    return frame, report
