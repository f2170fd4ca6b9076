"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Registers every pipeline folder, and curates the composites.

    `__default__` is one first iteration on the built-in synthetic data; it is
    listed explicitly so a new pipeline folder never joins it by accident.
    """
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = pipelines["ingest"] + pipelines["slicing"]
    return pipelines
