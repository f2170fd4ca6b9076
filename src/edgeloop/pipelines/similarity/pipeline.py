"""The similarity pipeline: embeddings, clusters with drill-down, KNN candidates."""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.similarity.nodes import (
    cluster_images,
    embed_images,
    find_similar,
)


def create_pipeline(**kwargs) -> Pipeline:
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
                find_similar,
                inputs=[
                    "lake",
                    "embedding_report",
                    "params:similarity",
                    "params:iteration",
                ],
                outputs=["knn_candidates", "knn_montages"],
                name="find_similar",
            ),
        ]
    )
