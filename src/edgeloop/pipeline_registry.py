"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Registers every pipeline folder, and curates the composites.

    - `train_iteration`: slicing, training and evaluation of iteration k;
    - `__default__`: one whole first iteration on the built-in synthetic data.

    Both are listed explicitly so a new pipeline folder never joins them by
    accident.
    """
    pipelines = find_pipelines(raise_errors=True)
    pipelines["train_iteration"] = (
        pipelines["slicing"] + pipelines["training"] + pipelines["evaluation"]
    )
    pipelines["__default__"] = pipelines["ingest"] + pipelines["train_iteration"]
    return pipelines
