"""The discover composite: production, similarity context (embeddings, clusters,
novelty), review, KNN candidates, acquisition, pseudo-labelling and the
annotation export (tasks ready for people).

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
from edgeloop.pipelines.review.pipeline import review_nodes
from edgeloop.pipelines.similarity.pipeline import context_pipeline, knn_pipeline


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
        # Embeddings, clusters and novelty need only the scored lake; review's
        # confidence checks use them.
        + pipeline(context_pipeline(), inputs={"lake": "lake_scored"})
        + pipeline(review_nodes(), inputs={"lake": "lake_scored"})
        # KNN after the verdict import, so bugs flagged in this run get candidates.
        + pipeline(knn_pipeline(), inputs={"lake": "lake_reviewed"})
        + pipeline(acquisition(), inputs={"lake": "lake_reviewed"})
        + pipeline(pseudo_labelling(), inputs={"lake": "lake_reviewed"})
        + pipeline(export_pipeline(), inputs={"lake": "lake_reviewed"})
    )
