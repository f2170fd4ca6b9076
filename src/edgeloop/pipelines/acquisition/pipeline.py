"""The acquisition pipeline: what goes to labeling next."""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.acquisition.nodes import build_labeling_queue


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                build_labeling_queue,
                inputs=[
                    "lake",
                    "knn_candidates",
                    "clusters",
                    "novelty_scores",
                    "embedding_report",
                    "params:acquisition",
                    "params:similarity",
                ],
                outputs=["labeling_queue", "acquisition_summary"],
                name="build_labeling_queue",
            )
        ]
    )
