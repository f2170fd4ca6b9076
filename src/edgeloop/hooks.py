"""Run hooks: provenance for the model card, and where a run's time went.

`ProvenanceHook`: for each dataset loaded during a run it records a content
fingerprint (deterministic: same data, same fingerprint) and, for versioned
datasets, the Kedro load version (a timestamp: volatile) or the Delta version
read. The card node reads the record through the `run_provenance` catalog entry.

`RunTimingHook`: wall-clock seconds per node, logged and written to
`data/08_reporting/run_timings.json` after every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from edgeloop.fileio import atomic_write

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


# Where `RunTimingHook` writes, relative to the project.
RUN_TIMINGS_PATH = Path("data/08_reporting/run_timings.json")


class RunTimingHook:
    """Times every node of a run: the slowest are logged, all are written down.

    After each run, failed ones included, `<project>/data/08_reporting/
    run_timings.json` holds the pipelines, env and runtime params, the total
    seconds, and every node that ran in order with its seconds and status
    (``ok`` or ``failed``). A node's seconds are its function's; loading and
    saving its catalog datasets count only in the total. Each run replaces the
    file. Timings are wall clock, so nothing deterministic (cards,
    reproduction) reads them.

    Args:
        top: How many of the slowest nodes the log line names.
    """

    def __init__(self, top: int = 5) -> None:
        self.top = top
        self._start: float | None = None
        self._open: dict[str, float] = {}
        self._nodes: list[dict[str, Any]] = []

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        self._start = time.perf_counter()
        self._open, self._nodes = {}, []

    @hook_impl
    def before_node_run(self, node: Any) -> None:
        self._open[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Any) -> None:
        self._close(node.name, "ok")

    @hook_impl
    def on_node_error(self, node: Any) -> None:
        self._close(node.name, "failed")

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any]) -> None:
        self._finish(run_params, "ok")

    @hook_impl
    def on_pipeline_error(self, run_params: dict[str, Any]) -> None:
        self._finish(run_params, "failed")

    def _close(self, name: str, status: str) -> None:
        started = self._open.pop(name, None)
        if started is not None:
            seconds = round(time.perf_counter() - started, 3)
            self._nodes.append({"node": name, "seconds": seconds, "status": status})

    def _finish(self, run_params: dict[str, Any], status: str) -> None:
        if self._start is None:
            return
        elapsed = time.perf_counter() - self._start
        total = round(elapsed, 3)
        self._start = None
        slowest = sorted(self._nodes, key=lambda n: -n["seconds"])[: self.top]
        log.info(
            "run %s in %.1f s; slowest nodes: %s",
            status,
            total,
            ", ".join(
                f"{n['node']} {n['seconds']:.1f} s ({n['seconds'] / elapsed:.0%})"
                for n in slowest
            )
            or "none",
        )
        record = {
            "status": status,
            "finished_at": datetime.now(UTC).isoformat(),
            # `kedro run` without --pipelines runs __default__ and says [].
            "pipeline_names": run_params.get("pipeline_names") or ["__default__"],
            "env": run_params.get("env"),
            "runtime_params": run_params.get("runtime_params") or {},
            "total_seconds": total,
            "nodes": self._nodes,
        }
        path = Path(run_params.get("project_path") or ".") / RUN_TIMINGS_PATH
        text = json.dumps(record, indent=2, default=str) + "\n"
        try:
            atomic_write(path, text.encode())
        except OSError as err:  # timings must never fail a run
            log.warning("could not write %s: %s", path, err)
