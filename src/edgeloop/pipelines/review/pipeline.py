"""The review pipeline: import verdicts, sample predictions for people to check.

Its confidence checks rank by novelty and cap picks per cluster, so it runs
the similarity context (embeddings, clusters, novelty) first; embeddings are
incremental, so an unchanged lake costs almost nothing there.
"""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.review.nodes import (
    build_review,
    export_review_tasks,
    import_review_verdicts,
)
from edgeloop.pipelines.similarity.pipeline import context_pipeline


def review_nodes() -> Pipeline:
    """The review's own nodes; `clusters` and `novelty_scores` come from outside."""
    return pipeline(
        [
            node(
                import_review_verdicts,
                inputs=["lake", "params:review", "params:slicing", "params:iteration"],
                outputs=["review_import_report", "review_quarantine", "lake_reviewed"],
                name="import_review_verdicts",
            ),
            node(
                build_review,
                inputs=["lake_reviewed", "params:review", "novelty_scores", "clusters"],
                outputs=[
                    "review_queue",
                    "review_summary",
                    "model_health",
                    "model_health_plot",
                ],
                name="build_review",
            ),
            node(
                export_review_tasks,
                inputs=[
                    "lake_reviewed",
                    "review_queue",
                    "params:review",
                    "params:classes",
                    "params:slicing",
                ],
                outputs=[
                    "review_tasks",
                    "review_labeling_config",
                    "review_push_report",
                ],
                name="export_review_tasks",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return context_pipeline() + review_nodes()
