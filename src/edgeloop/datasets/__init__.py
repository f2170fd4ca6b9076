"""Custom Kedro datasets: the lake tables and the synthetic scene folders."""

from edgeloop.datasets.lake_table import LakeTableDataset
from edgeloop.datasets.scene_folder import SceneFolderDataset

__all__ = ["LakeTableDataset", "SceneFolderDataset"]
