"""Slicing nodes: effective labels, slices, splits, balance and weights."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from edgeloop.classmap import ClassMap  # noqa: E402
from edgeloop.lake import Lake, labels_at_iteration  # noqa: E402
from edgeloop.registry import last_rejection  # noqa: E402
from edgeloop.review_tasks import current_bugs  # noqa: E402
from edgeloop.slicing import (  # noqa: E402
    SlicingConfig,
    assign_splits,
    build_slices,
    class_balance,
    sampling_weights,
)

log = logging.getLogger(__name__)


def resolve_labels(lake_labels: pd.DataFrame, iteration: int) -> pd.DataFrame:
    """One effective label per image at this iteration, with its first iteration."""
    effective = labels_at_iteration(lake_labels, int(iteration))
    first = lake_labels.groupby("image_id")["iteration"].min()
    return effective.assign(first_iteration=effective["image_id"].map(first).to_numpy())


def build_slice_table(
    labels: pd.DataFrame,
    classes: dict[str, Any],
    slicing: dict[str, Any],
    edge_cases: pd.DataFrame,
) -> pd.DataFrame:
    """The long (image_id, slice) table; `edge:<tag>` for every bug ever opened."""
    bugs = current_bugs(edge_cases)
    cfg = replace(
        SlicingConfig.from_params(slicing),
        edge_cases=tuple(
            (str(tag), frozenset(str(s) for g in group for s in g))
            for tag, group in bugs.groupby("tag", sort=True)["seed_image_ids"]
        ),
    )
    return build_slices(labels, ClassMap.from_params(classes), cfg)


def split_images(
    lake_images: pd.DataFrame, labels: pd.DataFrame, slicing: dict[str, Any]
) -> pd.DataFrame:
    """Train/val/test per labelled image: official split kept, else a stable hash."""
    return assign_splits(lake_images, labels, SlicingConfig.from_params(slicing))


def report_class_balance(
    labels: pd.DataFrame, splits: pd.DataFrame, classes: dict[str, Any]
) -> tuple[pd.DataFrame, plt.Figure]:
    """Pixel and image frequency per class and split, as a table and a plot."""
    balance = class_balance(labels, splits, ClassMap.from_params(classes))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, col, title in (
        (axes[0], "pixel_freq", "pixel frequency"),
        (axes[1], "image_freq", "image frequency (class present)"),
    ):
        table = balance.pivot(index="class", columns="split", values=col)
        table = table.reindex(index=balance["class"].drop_duplicates())
        table.plot.bar(ax=ax, rot=30)
        ax.set_title(f"Class balance: {title}")
        if col == "pixel_freq":
            ax.set_yscale("log")  # background dwarfs the objects otherwise
        ax.set_ylabel(col)
        ax.set_xlabel("")
    return balance, fig


def compute_sampling_weights(
    slices: pd.DataFrame,
    splits: pd.DataFrame,
    slicing: dict[str, Any],
    lake: Lake,
    lake_models: pd.DataFrame,
    iteration: int,
) -> pd.DataFrame:
    """Training sampling weights so rare classes and conditions are seen.

    If the last gate rejected its model, the train images of the slices it
    found regressed weigh `slicing.sampling.regressed_boost` times more, so
    this iteration's model rehearses what that one forgot.
    """
    cfg = SlicingConfig.from_params(slicing)
    rejected, regressed = last_rejection(lake, lake_models, int(iteration))
    weights = sampling_weights(slices, splits, cfg, regressed)
    if regressed:
        n = int((weights["boost"] > 1.0).sum())
        log.info(
            "the last gate rejected %s for %s: %d of the %d train images are in "
            "them and weigh %gx%s",
            rejected,
            ", ".join(regressed),
            n,
            len(weights),
            cfg.regressed_boost,
            " (all of them: no change)" if n == len(weights) else "",
        )
    return weights


def summarise_slicing(
    lake_images: pd.DataFrame,
    lake_labels: pd.DataFrame,
    slices: pd.DataFrame,
    splits: pd.DataFrame,
    iteration: int,
) -> dict[str, Any]:
    """What this slicing run read (Delta versions) and what it found."""
    return {
        "iteration": int(iteration),
        "lake_versions": {
            "images": lake_images.attrs.get("delta_version"),
            "labels": lake_labels.attrs.get("delta_version"),
        },
        "n_images": len(lake_images),
        "n_labelled": int(splits["image_id"].nunique()),
        "splits": splits["split"].value_counts().sort_index().to_dict(),
        "split_sources": splits["split_source"].value_counts().sort_index().to_dict(),
        "slices": slices["slice"].value_counts().sort_index().to_dict(),
    }
