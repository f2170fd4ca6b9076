"""A Kedro dataset over one lake table, backed by the lake module."""

from __future__ import annotations

from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError

from edgeloop.lake import LabelBatch, LabelRegistry, Lake, add_images
from edgeloop.registry import register_model


class LakeTableDataset(AbstractDataset[Any, pd.DataFrame]):
    """Loads a Delta table of the lake as a DataFrame; saves through the lake module.

    The loaded frame carries ``attrs["delta_version"]``, the version read, so
    nodes can record exactly what they saw. Saving ``images`` takes a list of
    `ImageRecord`, saving ``labels`` a `LabelBatch` (through
    `LabelRegistry.append`); other tables take a DataFrame.

    Args:
        table: Table name (``images``, ``labels``...).
        lake_root: Lake root path or URI.
        delta_version: Delta version to read (time travel); latest when None or
            "latest"; -1 reads the table as before its first commit. (Kedro
            reserves `version` for its own dataset versioning.)
        storage_options: For object stores.
    """

    def __init__(
        self,
        *,
        table: str,
        lake_root: str = "data/lake",
        delta_version: int | str | None = None,
        storage_options: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._table = table
        self._lake_root = lake_root
        self._delta_version = (
            None if delta_version in (None, "", "latest") else int(delta_version)
        )
        self._storage_options = storage_options
        self.metadata = metadata

    def _lake(self) -> Lake:
        return Lake(self._lake_root, storage_options=self._storage_options)

    def load(self) -> pd.DataFrame:
        return self._lake().read(self._table, version=self._delta_version)

    def save(self, data: Any) -> None:
        lake = self._lake()
        if self._table == "images":
            add_images(lake, data)
        elif self._table == "models":
            register_model(lake, data)
        elif self._table == "labels":
            if not isinstance(data, LabelBatch):
                raise DatasetError(
                    "labels are saved as a LabelBatch, through the registry"
                )
            LabelRegistry(lake, data.class_map, data.object_classes).append(
                data.records
            )
        else:
            lake.append(self._table, data)

    def _exists(self) -> bool:
        return self._lake().version(self._table) is not None

    def _describe(self) -> dict[str, Any]:
        return {
            "table": self._table,
            "lake_root": self._lake_root,
            "version": self._delta_version,
        }


class LakeDataset(AbstractDataset[None, Lake]):
    """Loads a handle on the lake, for nodes that read blobs (images, masks...)."""

    def __init__(
        self,
        *,
        lake_root: str = "data/lake",
        storage_options: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._lake_root = lake_root
        self._storage_options = storage_options
        self.metadata = metadata

    def load(self) -> Lake:
        return Lake(self._lake_root, storage_options=self._storage_options)

    def save(self, data: None) -> None:
        raise DatasetError("the lake handle is read-only; write through lake tables")

    def _describe(self) -> dict[str, Any]:
        return {"lake_root": self._lake_root}
