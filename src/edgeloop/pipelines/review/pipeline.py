"""The review pipeline: sample predictions for people to check."""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.review.nodes import build_review


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                build_review,
                inputs=["lake", "params:review"],
                outputs=[
                    "review_queue",
                    "review_summary",
                    "model_health",
                    "model_health_plot",
                ],
                name="build_review",
            )
        ]
    )
