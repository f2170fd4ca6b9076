"""Trained models and the model registry (the `models` lake table).

"The promoted model" everywhere means the latest promoted row of `models`.
Weights and cards are content-addressed blobs in the lake, so every registered
model stays loadable, by the server as much as by the next iteration.
"""

from __future__ import annotations

import functools
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import torch
from torch import nn

from edgeloop.gate import regressed_slices
from edgeloop.lake import Lake
from edgeloop.models import build_model, load_weights, weights_hash
from edgeloop.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedModel:
    """Weights plus the metadata needed to rebuild and explain them.

    `metadata` holds: architecture, class_names, normalisation (mean, std),
    input_size, hyperparameters, epochs, curves, seed, weights_source,
    parent_version, iteration, n_params and a `volatile` block (training time,
    hardware) that determinism checks ignore.
    """

    state_dict: Mapping[str, torch.Tensor] = field(repr=False)
    metadata: Mapping[str, Any]

    @functools.cached_property
    def weights_hash(self) -> str:
        # Hashing every tensor takes ~40 ms for a 14M-parameter model: once.
        return weights_hash(self.state_dict)

    @property
    def version(self) -> str:
        return f"it{int(self.metadata['iteration'])}-{self.weights_hash[:12]}"

    def build(self) -> nn.Module:
        """The model with these weights, in eval mode."""
        meta = self.metadata
        model, _ = build_model(
            meta["architecture"],
            len(meta["class_names"]),
            pretrained=False,
            input_norm=meta.get("hyperparameters", {}).get("input_norm", "dataset"),
        )
        model.load_state_dict(self.state_dict)
        return model.eval()

    def predictor(self, **kwargs: Any) -> Predictor:
        meta = self.metadata
        return Predictor(
            self.build(),
            class_names=meta["class_names"],
            mean=meta["normalisation"]["mean"],
            std=meta["normalisation"]["std"],
            input_size=tuple(meta["input_size"]) if meta.get("input_size") else None,
            **kwargs,
        )


def weights_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    return buf.getvalue()


@dataclass(frozen=True)
class ModelRecord:
    """A trained model with its gate verdict and card, ready to register."""

    model: TrainedModel
    card: Mapping[str, Any]
    metric: str
    score: float
    slice_scores: Mapping[str, float]
    promoted: bool
    reason: str


def register_model(lake: Lake, record: ModelRecord) -> int | None:
    """Stores weights and card as blobs and appends the `models` row."""
    meta = record.model.metadata
    weights_uri = lake.put_blob(
        weights_bytes(record.model.state_dict), kind="models", ext="pt"
    )
    card_uri = lake.put_blob(
        json.dumps(record.card, indent=1, sort_keys=True, default=str).encode(),
        kind="cards",
        ext="json",
    )
    row = {
        "model_version": record.model.version,
        "iteration": int(meta["iteration"]),
        "architecture": meta["architecture"],
        "parent_version": meta.get("parent_version"),
        "weights_uri": weights_uri,
        "card_uri": card_uri,
        "metric": record.metric,
        "score": float(record.score),
        "slice_scores_json": json.dumps(dict(record.slice_scores), sort_keys=True),
        "metadata_json": json.dumps(_stable(meta), sort_keys=True, default=str),
        "promoted": bool(record.promoted),
        "reason": record.reason,
        "created_at": datetime.now(UTC),
    }
    return lake.append("models", pd.DataFrame([row]))


def _stable(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "curves"}


def promoted_row(models: pd.DataFrame) -> pd.Series | None:
    """The latest promoted row of the registry, or None."""
    promoted = models[models["promoted"]] if len(models) else models
    if promoted.empty:
        return None
    return promoted.sort_values(["created_at", "iteration"]).iloc[-1]


def load_model(lake: Lake, row: Mapping[str, Any]) -> TrainedModel:
    """Loads a registered model's weights (weights only: no pickled code)."""
    state = load_weights(io.BytesIO(lake.get_blob(row["weights_uri"])))
    return TrainedModel(state_dict=state, metadata=json.loads(row["metadata_json"]))


def last_rejection(
    lake: Lake, models: pd.DataFrame, iteration: int
) -> tuple[str | None, list[str]]:
    """The slices the last gate before `iteration` found regressed.

    The last registered model of an earlier iteration is the gate's latest
    decision. If it was rejected, its card (a lake blob) holds the gate's
    comparisons; returns (its model_version, its regressed slices, sorted).
    Otherwise (promoted, or nothing registered yet) returns (None, []).
    """
    earlier = models[models["iteration"] < int(iteration)] if len(models) else models
    if earlier.empty:
        return None, []
    last = earlier.sort_values(["iteration", "created_at"]).iloc[-1]
    if bool(last["promoted"]):
        return None, []
    try:
        card = json.loads(lake.get_blob(last["card_uri"]))
    except (FileNotFoundError, ValueError) as err:
        log.warning(
            "model %s was rejected, but its card %s cannot be read (%s): "
            "no slice is boosted",
            last["model_version"],
            last["card_uri"],
            err,
        )
        return str(last["model_version"]), []
    return str(last["model_version"]), regressed_slices(card.get("gate") or {})


def best_so_far(models: pd.DataFrame) -> dict[str, float]:
    """Each slice's best score among promoted models: the drift baseline."""
    best: dict[str, float] = {}
    for raw in (
        models.loc[models["promoted"], "slice_scores_json"] if len(models) else []
    ):
        for name, value in json.loads(raw).items():
            if value is not None and value == value:  # skip nan
                best[name] = max(best.get(name, float("-inf")), float(value))
    return best
