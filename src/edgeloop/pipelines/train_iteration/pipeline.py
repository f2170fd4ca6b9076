"""The composite pipeline of one training iteration.

It is a pipeline folder of its own (not only a sum in the registry) because
Kedro 1.7 imports just the folders named by `kedro run --pipelines`.
"""

from kedro.pipeline import Pipeline, pipeline

from edgeloop.pipelines.annotation import import_pipeline
from edgeloop.pipelines.evaluation import create_pipeline as evaluation
from edgeloop.pipelines.slicing import create_pipeline as slicing
from edgeloop.pipelines.training import create_pipeline as training


def create_pipeline(**kwargs) -> Pipeline:
    """Annotation import first; the rest reads the tables as the import left them."""
    return import_pipeline() + pipeline(
        slicing() + training() + evaluation(),
        inputs={
            "lake_images": "images_after_import",
            "lake_labels": "labels_after_import",
            "lake_edge_cases": "edge_cases_after_import",
        },
    )
