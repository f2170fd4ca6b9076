"""Training nodes: model input, the promoted model, the sweep and the refit."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.card import hardware
from edgeloop.data import resize_pair
from edgeloop.imaging import decode_image, decode_mask
from edgeloop.lake import Lake
from edgeloop.models import IMAGENET_MEAN, IMAGENET_STD
from edgeloop.progress import tqdm
from edgeloop.registry import TrainedModel, load_model, promoted_row
from edgeloop.training import (
    FitConfig,
    ModelInput,
    SweepConfig,
    fit_soup,
    run_sweep,
    study_summary,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotedModel:
    """The currently promoted model, if any (a node output cannot be None)."""

    model: TrainedModel | None
    version: str | None


def assemble_model_input(
    lake_images: pd.DataFrame,
    effective_labels: pd.DataFrame,
    splits: pd.DataFrame,
    sampling_weights: pd.DataFrame,
    lake: Lake,
    training: dict[str, Any],
    classes: dict[str, Any],
) -> ModelInput:
    """Decodes every labelled image of the iteration at training resolution.

    Images resize bilinearly, masks with nearest neighbour; pseudo-labelled
    images excluded from evaluation splits are dropped.
    """
    size = tuple(int(v) for v in training["input_size"])
    rows = splits[splits["split"].isin(["train", "val", "test"])].merge(
        effective_labels[["image_id", "mask_blob"]], on="image_id"
    )
    rows = rows.merge(lake_images[["image_id", "blob_uri"]], on="image_id")
    rows = rows.sort_values("image_id", kind="stable").reset_index(drop=True)
    if rows.empty:
        raise ValueError(
            "no labelled image in train/val/test: run ingest and slicing first"
        )
    weights = sampling_weights.set_index("image_id")["weight"]
    images = np.empty((len(rows), *size, 3), dtype=np.uint8)
    masks = np.empty((len(rows), *size), dtype=np.uint8)
    for i, row in enumerate(
        tqdm(rows.itertuples(), total=len(rows), desc="model input", unit="img")
    ):
        image = decode_image(lake.get_blob(row.blob_uri))
        mask = decode_mask(lake.get_blob(row.mask_blob))
        images[i], masks[i] = resize_pair(image, mask, size)
    return ModelInput(
        images=images,
        masks=masks,
        image_ids=rows["image_id"].to_numpy(dtype=str),
        splits=rows["split"].to_numpy(dtype=str),
        weights=rows["image_id"].map(weights).fillna(1.0).to_numpy(dtype=np.float64),
        class_names=tuple(classes["names"]),
    )


def select_promoted_model(lake_models: pd.DataFrame, lake: Lake) -> PromotedModel:
    """The latest promoted model of the registry (warm start and comparison)."""
    row = promoted_row(lake_models)
    if row is None:
        log.info("no promoted model yet: iteration trains without a parent")
        return PromotedModel(None, None)
    log.info(
        "promoted model: %s (iteration %s)", row["model_version"], row["iteration"]
    )
    return PromotedModel(load_model(lake, row), str(row["model_version"]))


def _init_states(promoted: PromotedModel, training: dict[str, Any]) -> dict[str, Any]:
    if training.get("init", "warm") != "warm" or promoted.model is None:
        return {}
    return {promoted.model.metadata["architecture"]: promoted.model.state_dict}


def sweep_hyperparameters(
    model_input: ModelInput, promoted: PromotedModel, training: dict[str, Any]
) -> dict[str, Any]:
    """Runs (or resumes) the Optuna study; returns its summary."""
    base = FitConfig.from_params(training)
    sweep = SweepConfig.from_params(training)
    study = run_sweep(
        model_input,
        base=base,
        sweep=sweep,
        init_states=_init_states(promoted, training),
        init_label=f"warm:{promoted.version}",
    )
    summary = study_summary(study)
    log.info(
        "sweep: best trial #%d %s=%.4f %s",
        summary["best_trial"],
        base.metric,
        summary["best_value"],
        summary["best_params"],
    )
    return summary


def refit_best_trial(
    model_input: ModelInput,
    promoted: PromotedModel,
    study: dict[str, Any],
    training: dict[str, Any],
    iteration: int,
) -> TrainedModel:
    """Refits the best trial's configuration with the same `fit` the sweep used.

    `training.refit_epochs` (default: `training.epochs`) lets the final model
    train longer than each trial of the sweep did. `training.refit_decay`
    says what its exponential LR decay does over the longer schedule:
    ``stretch`` (default) slows it so the LR ends where the trial's did;
    ``keep`` keeps the trial's per-epoch gamma, so the LR ends lower.
    `training.refit_soup` (default 1) > 1 refits that many times from the
    warm start (the first with `training.seed`, the others with seeds derived
    from it) and keeps the average of their weights
    (`edgeloop.training.fit_soup`).

    Raises:
        ValueError: an unknown `training.refit_decay`, a `refit_soup` < 1.
    """
    trial_epochs = int(training.get("epochs", 20))
    epochs = int(training.get("refit_epochs") or trial_epochs)
    decay = str(training.get("refit_decay", "stretch"))
    if decay not in ("stretch", "keep"):
        raise ValueError(
            f"training.refit_decay must be 'stretch' or 'keep', got {decay!r}"
        )
    config = FitConfig.from_params(training, **study["best_params"], epochs=epochs)
    if epochs != trial_epochs and decay == "stretch":
        # The same total LR decay over the longer schedule as the trial had:
        # gamma ** trial_epochs == refit_gamma ** refit_epochs.
        config = dataclasses.replace(
            config, lr_gamma=config.lr_gamma ** (trial_epochs / epochs)
        )
    start = time.perf_counter()
    result = fit_soup(
        config,
        model_input,
        ingredients=training.get("refit_soup", 1),
        init_state=_init_states(promoted, training).get(config.architecture),
        init_label=f"warm:{promoted.version}",
        progress=False,
    )
    seconds = time.perf_counter() - start
    warm = result.weights_source.startswith("warm:")
    meta = {
        "architecture": config.architecture,
        "class_names": list(model_input.class_names),
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "input_size": list(model_input.images.shape[1:3]),
        "hyperparameters": {
            k: v for k, v in config.__dict__.items() if k not in ("seed",)
        },
        "seed": config.seed,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "policy": result.policy,
        "n_params": result.n_params,
        "val_score": result.best_score,
        "curves": result.curves,
        "weights_source": result.weights_source,
        **result.extra,
        "parent_version": promoted.version if warm else None,
        "iteration": int(iteration),
        "volatile": {
            "training_seconds": round(seconds, 2),
            "trained_at": datetime.now(UTC).isoformat(),
            "hardware": hardware(),
        },
    }
    log.info(
        "refit %s: val %s=%.4f after %d epochs (%s), %.1fs",
        config.architecture,
        config.metric,
        result.best_score,
        result.epochs_run,
        result.policy,
        seconds,
    )
    return TrainedModel(state_dict=result.model.state_dict(), metadata=meta)
