"""Ingest nodes: generate the built-in synthetic scenes, then ingest a source."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from edgeloop import synthetic
from edgeloop.classmap import ClassMap
from edgeloop.datasets.scene_folder import FolderItem
from edgeloop.ingest import IngestLimits, ingest_source
from edgeloop.lake import ImageRecord, LabelBatch
from edgeloop.sources import SourceConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticConfig:
    """The `synthetic` parameters: sizes and counts of the generated sets."""

    seed: int = 0
    size: int = 128
    n_collected: int = 300
    n_eval: int = 300
    n_stream: int = 2000
    stream_days: int = 3
    stream_rare_rate: float = synthetic.STREAM_RARE_RATE
    rare_look: str = "colour"
    eval_split: str = "test"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SyntheticConfig:
        counts = params.get("counts") or {}
        return cls(
            seed=int(params.get("seed", cls.seed)),
            size=int(params.get("size", cls.size)),
            n_collected=int(counts.get("collected", cls.n_collected)),
            n_eval=int(counts.get("eval", cls.n_eval)),
            n_stream=int(counts.get("stream", cls.n_stream)),
            stream_days=int(params.get("stream_days", cls.stream_days)),
            stream_rare_rate=float(
                params.get("stream_rare_rate", cls.stream_rare_rate)
            ),
            rare_look=str(params.get("rare_look", cls.rare_look)),
            eval_split=str(params.get("eval_split", cls.eval_split)),
        )


def generate_synthetic_scenes(
    synthetic_params: dict[str, Any], ingest_params: dict[str, Any]
) -> tuple[dict[str, list[FolderItem]], dict[str, list[FolderItem]]]:
    """Generates the collected, eval and stream sets; the stream's truth apart.

    Returns:
        The scene folders ingest reads (labeled collected and eval sets, and the
        unlabeled stream), and the stream's truth (masks and condition tags),
        which only the simulated annotator and benchmarks may read.
    """
    if ingest_params["source"]["kind"] != "synthetic":
        log.info(
            "ingest source is %s: no synthetic scenes generated",
            ingest_params["source"]["kind"],
        )
        return {}, {}
    cfg = SyntheticConfig.from_params(synthetic_params)
    scenes: dict[str, list[FolderItem]] = {}
    truth: dict[str, list[FolderItem]] = {}
    for kind, n in (("collected", cfg.n_collected), ("eval", cfg.n_eval)):
        split = cfg.eval_split if kind == "eval" else None
        scenes[kind] = [
            FolderItem(
                stem=s.name,
                image=s.image,
                mask=s.mask,
                meta={"split": split, "tags": list(s.tags)},
            )
            for s in synthetic.generate_scenes(
                kind, n, size=cfg.size, seed=cfg.seed, rare_look=cfg.rare_look
            )
        ]
    stream = synthetic.generate_scenes(
        "stream",
        cfg.n_stream,
        size=cfg.size,
        seed=cfg.seed,
        days=cfg.stream_days,
        rare_rate=cfg.stream_rare_rate,
        rare_look=cfg.rare_look,
    )
    scenes["stream"] = [
        FolderItem(stem=s.name, image=s.image, meta={"captured_at": s.captured_at})
        for s in stream
    ]
    truth["stream"] = [
        FolderItem(stem=s.name, mask=s.mask, meta={"tags": list(s.tags)})
        for s in stream
    ]
    log.info(
        "generated %s synthetic scenes at %dpx",
        {k: len(v) for k, v in scenes.items()},
        cfg.size,
    )
    return scenes, truth


def ingest_images(
    synthetic_scenes: dict[str, Any],
    ingest_params: dict[str, Any],
    classes: dict[str, Any],
    iteration: int,
) -> tuple[list[ImageRecord], LabelBatch, pd.DataFrame, dict[str, Any]]:
    """Reads the configured source into image records and seed labels.

    Args:
        synthetic_scenes: The scene-folder manifest (its root is the synthetic
            source's root; it also orders this node after generation).

    Returns:
        Images and labels for the lake (stored in one commit each, skipping what
        is already there), the quarantine report and a summary.
    """
    source = dict(ingest_params["source"])
    if source["kind"] == "synthetic":
        source["root"] = synthetic_scenes["root"]
    config = SourceConfig.from_params(source)
    class_map = ClassMap.from_params(classes)
    object_classes = tuple(classes.get("object_classes") or ()) or tuple(
        n for n in class_map.names if n != "background"
    )
    batch = ingest_source(
        config,
        class_map,
        limits=IngestLimits.from_params(ingest_params.get("limits")),
        object_classes=object_classes,
        iteration=int(iteration),
    )
    report = {
        "source": config.name,
        "kind": config.kind,
        "root": config.root,
        "iteration": int(iteration),
        "listed": batch.n_listed,
        "good": len(batch.images),
        "labelled": len(batch.labels),
        "quarantined": len(batch.quarantine),
        "quarantine_reasons": batch.quarantine["reason"]
        .str.split(":")
        .str[0]
        .value_counts()
        .to_dict(),
        "splits": pd.Series([r.split for r in batch.images], dtype="object")
        .fillna("none")
        .value_counts()
        .to_dict(),
    }
    labels = LabelBatch(batch.labels, class_map, object_classes)
    return batch.images, labels, batch.quarantine, report
