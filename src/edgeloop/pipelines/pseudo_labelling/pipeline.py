"""The pseudo_labelling pipeline: pre-annotate the labeling queue."""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.pseudo_labelling.nodes import prelabel_queue


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                prelabel_queue,
                inputs=[
                    "lake",
                    "labeling_queue",
                    "lake_models",
                    "params:pseudo_labelling",
                    "params:classes",
                ],
                outputs=["prelabels", "pseudo_label_report"],
                name="prelabel_queue",
            )
        ]
    )
