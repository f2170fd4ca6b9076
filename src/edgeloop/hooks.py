"""Provenance hook: records what every node loaded, for the model card.

For each dataset loaded during a run it records a content fingerprint
(deterministic: same data, same fingerprint) and, for versioned datasets, the
Kedro load version (a timestamp: volatile) or the Delta version read. The card
node reads the record through the `run_provenance` catalog entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np
import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

log = logging.getLogger(__name__)


# When a row was written says nothing about its content: not fingerprinted.
# `card_uri` addresses a card by all its bytes, its volatile section included.
VOLATILE_COLUMNS = ("ingested_at", "created_at", "card_uri")
# Tables whose `ts` is when an event row was written (the bugs log).
_EVENT_LOG_COLUMNS = {"event_id", "bug_id", "ts"}


def _hashable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return json.dumps(value.tolist())
    if isinstance(value, bytes):  # e.g. PNG blobs: str() of bytes is not utf-8 safe
        return hashlib.sha256(value).hexdigest()
    return value


def _without_volatile(text: Any) -> Any:
    """A JSON object column (e.g. models.metadata_json) less its `volatile` key."""
    if not isinstance(text, str) or not text.startswith("{"):
        return text
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    obj.pop("volatile", None)
    return json.dumps(obj, sort_keys=True)


def fingerprint(data: Any) -> str | None:
    """A sha256 of a loaded object's content, or None for handles and unknowns.

    For a table the fingerprint ignores row order (a Delta read has none) and
    what only says when or on which machine a row was written.
    """
    h = hashlib.sha256()
    if isinstance(data, pd.DataFrame):
        volatile = [c for c in VOLATILE_COLUMNS if c in data.columns]
        if set(data.columns) >= _EVENT_LOG_COLUMNS:
            volatile.append("ts")
        data = data.drop(columns=volatile)
        if "metadata_json" in data.columns:
            data = data.assign(
                metadata_json=data["metadata_json"].map(_without_volatile)
            )
        h.update(json.dumps([str(c) for c in data.columns]).encode())
        hashable = data.map(_hashable)
        rows = pd.util.hash_pandas_object(hashable.astype(str), index=False).values
        h.update(np.sort(rows).tobytes())
        return h.hexdigest()
    if hasattr(data, "images") and hasattr(data, "masks"):  # ModelInput
        for arr in (
            data.images,
            data.masks,
            data.image_ids.astype(str),
            data.splits.astype(str),
        ):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()
    if hasattr(data, "weights_hash"):  # TrainedModel
        return data.weights_hash
    if isinstance(data, dict | list | str | int | float):
        h.update(json.dumps(data, sort_keys=True, default=str).encode())
        return h.hexdigest()
    return None


class ProvenanceHook:
    """Collects dataset fingerprints and versions into `run_provenance`."""

    def __init__(self) -> None:
        self._record: dict[str, dict[str, Any]] = {}
        self._catalog: Any = None

    @hook_impl
    def after_catalog_created(self, catalog: Any, save_version: str | None) -> None:
        self._record = {"datasets": {}, "save_version": save_version}
        self._catalog = catalog
        # "assign": the card node sees this very dict, filled as the run goes.
        catalog["run_provenance"] = MemoryDataset(self._record, copy_mode="assign")

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        self._record["env"] = run_params.get("env")
        self._record["runtime_params"] = run_params.get("runtime_params") or {}
        self._record["pipeline_names"] = run_params.get("pipeline_names")

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node: Any) -> None:
        if dataset_name.startswith("params:") or dataset_name in (
            "parameters",
            "run_provenance",
        ):
            return
        entry: dict[str, Any] = {"fingerprint": fingerprint(data)}
        attrs = getattr(data, "attrs", None)
        if isinstance(attrs, dict) and "delta_version" in attrs:
            entry["delta_version"] = attrs["delta_version"]
        try:
            dataset = (
                self._catalog.get(dataset_name) if self._catalog is not None else None
            )
            resolve = getattr(dataset, "resolve_load_version", None)
            if resolve is not None and getattr(dataset, "_version", None) is not None:
                entry["load_version"] = resolve()
        except Exception as err:  # noqa: BLE001 - provenance must never break a run
            log.debug("no load version for %s: %s", dataset_name, err)
        self._record["datasets"][dataset_name] = entry
