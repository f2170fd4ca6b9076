"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Registers every pipeline folder, and curates `__default__`.

    `__default__` is one whole first iteration on the built-in synthetic data:
    ingest, then `train_iteration` (slicing, training, evaluation), then
    `discover` (batch scoring of the production stream into the lake, review,
    verdict import, similarity search and the labeling queue). It is
    listed explicitly so a new pipeline folder never joins it by accident.
    `kedro run --pipelines X` makes Kedro import only the folders named, so
    `__default__` is only built when its parts were loaded.
    """
    pipelines = find_pipelines(raise_errors=True)
    if {"ingest", "train_iteration", "discover"} <= pipelines.keys():
        pipelines["__default__"] = (
            pipelines["ingest"] + pipelines["train_iteration"] + pipelines["discover"]
        )
    return pipelines
