"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Registers every pipeline folder, and curates `__default__`.

    `__default__` is one whole first iteration on the built-in synthetic data:
    ingest, then `train_iteration` (slicing, training, evaluation), then
    `production` (batch scoring of the production stream into the lake). It is
    listed explicitly so a new pipeline folder never joins it by accident.
    `kedro run --pipelines X` makes Kedro import only the folders named, so
    `__default__` is only built when its parts were loaded.
    """
    pipelines = find_pipelines(raise_errors=True)
    if {"ingest", "train_iteration", "production"} <= pipelines.keys():
        pipelines["__default__"] = (
            pipelines["ingest"] + pipelines["train_iteration"] + pipelines["production"]
        )
    return pipelines
