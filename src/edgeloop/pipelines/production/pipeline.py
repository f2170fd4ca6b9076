"""The production pipeline: batch scoring through the server's predictor and writer."""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.production.nodes import score_images


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                score_images,
                # `model_registration` (the models table, read after evaluation
                # appended to it) orders this after evaluation in __default__.
                inputs=["lake", "model_registration", "params:production"],
                outputs="production_report",
                name="score_images",
            )
        ]
    )
