"""The annotation pipeline: export tasks for people, import their labels.

`discover` ends with the export; `train_iteration` starts with the import, and
slicing, training and evaluation read the lake tables the import hands on
(`images_after_import`, `labels_after_import`, `edge_cases_after_import`).
"""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.annotation.nodes import (
    export_annotation_tasks,
    import_annotations,
)


def export_pipeline() -> Pipeline:
    return pipeline(
        [
            node(
                export_annotation_tasks,
                inputs=[
                    "lake",
                    "labeling_queue",
                    "prelabels",
                    "params:annotation",
                    "params:pseudo_labelling",
                    "params:classes",
                ],
                outputs=[
                    "annotation_tasks",
                    "annotation_labeling_config",
                    "annotation_push_report",
                ],
                name="export_annotation_tasks",
            )
        ]
    )


def import_pipeline() -> Pipeline:
    return pipeline(
        [
            node(
                import_annotations,
                inputs=[
                    "lake",
                    "lake_images",
                    "lake_labels",
                    "lake_edge_cases",
                    "params:annotation",
                    "params:classes",
                    "params:iteration",
                ],
                outputs=[
                    "annotation_import_report",
                    "annotation_quarantine",
                    "images_after_import",
                    "labels_after_import",
                    "edge_cases_after_import",
                ],
                name="import_annotations",
            )
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return import_pipeline() + export_pipeline()
