"""The composite pipeline of one training iteration.

It is a pipeline folder of its own (not only a sum in the registry) because
Kedro 1.7 imports just the folders named by `kedro run --pipelines`.
"""

from kedro.pipeline import Pipeline

from edgeloop.pipelines.evaluation import create_pipeline as evaluation
from edgeloop.pipelines.slicing import create_pipeline as slicing
from edgeloop.pipelines.training import create_pipeline as training


def create_pipeline(**kwargs) -> Pipeline:
    return slicing() + training() + evaluation()
