"""The similarity pipeline: embeddings, clusters with drill-down, novelty, and
KNN candidates."""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.similarity.nodes import (
    cluster_images,
    embed_images,
    find_similar,
    score_novelty,
)


def context_pipeline() -> Pipeline:
    """Embeddings, clusters and novelty: what review's confidence checks use."""
    return pipeline(
        [
            node(
                embed_images,
                inputs=["lake", "lake_models", "params:similarity"],
                outputs="embedding_report",
                name="embed_images",
            ),
            node(
                cluster_images,
                inputs=["lake", "embedding_report", "params:similarity"],
                outputs=[
                    "clusters",
                    "cluster_summary",
                    "cluster_montages",
                    "embedding_map",
                ],
                name="cluster_images",
            ),
            node(
                score_novelty,
                inputs=["lake", "embedding_report", "params:similarity"],
                outputs="novelty_scores",
                name="score_novelty",
            ),
        ]
    )


def knn_pipeline() -> Pipeline:
    """KNN candidates for open bugs (after the verdict import opened them)."""
    return pipeline(
        [
            node(
                find_similar,
                inputs=[
                    "lake",
                    "embedding_report",
                    "params:similarity",
                    "params:iteration",
                    "params:classes",
                ],
                outputs=["knn_candidates", "knn_montages"],
                name="find_similar",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return context_pipeline() + knn_pipeline()
