"""Custom Kedro datasets: lake tables, scene folders, model input and models."""

from edgeloop.datasets.lake_table import LakeDataset, LakeTableDataset
from edgeloop.datasets.model_input import ModelInputDataset, TrainedModelDataset
from edgeloop.datasets.scene_folder import SceneFolderDataset

__all__ = [
    "LakeDataset",
    "LakeTableDataset",
    "ModelInputDataset",
    "SceneFolderDataset",
    "TrainedModelDataset",
]
