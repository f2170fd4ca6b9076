"""The discover composite: production, review, similarity, acquisition,
pseudo-labelling and the annotation export (tasks ready for people).

The stages share the lake as a side effect, so each stage reads the lake from
the `lake_after` node of the stage before it (`lake_scored`, `lake_reviewed`):
that is what orders them.
"""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.acquisition import create_pipeline as acquisition
from edgeloop.pipelines.annotation import export_pipeline
from edgeloop.pipelines.common import lake_after
from edgeloop.pipelines.production import create_pipeline as production
from edgeloop.pipelines.pseudo_labelling import create_pipeline as pseudo_labelling
from edgeloop.pipelines.review import create_pipeline as review
from edgeloop.pipelines.similarity import create_pipeline as similarity


def create_pipeline(**kwargs) -> Pipeline:
    scored = pipeline(
        [
            node(
                lake_after,
                inputs=["lake", "production_report"],
                outputs="lake_scored",
                name="lake_after_production",
            )
        ]
    )
    return (
        production()
        + scored
        + pipeline(review(), inputs={"lake": "lake_scored"})
        + pipeline(similarity(), inputs={"lake": "lake_reviewed"})
        + pipeline(acquisition(), inputs={"lake": "lake_reviewed"})
        + pipeline(pseudo_labelling(), inputs={"lake": "lake_reviewed"})
        + pipeline(export_pipeline(), inputs={"lake": "lake_reviewed"})
    )
