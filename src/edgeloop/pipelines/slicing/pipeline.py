"""The slicing pipeline."""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.slicing.nodes import (
    build_slice_table,
    compute_sampling_weights,
    report_class_balance,
    resolve_labels,
    split_images,
    summarise_slicing,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                resolve_labels,
                inputs=["lake_labels", "params:iteration"],
                outputs="effective_labels",
                name="resolve_labels",
            ),
            node(
                build_slice_table,
                inputs=[
                    "effective_labels",
                    "params:classes",
                    "params:slicing",
                    "lake_edge_cases",
                ],
                outputs="slices",
                name="build_slice_table",
            ),
            node(
                split_images,
                inputs=["lake_images", "effective_labels", "params:slicing"],
                outputs="splits",
                name="split_images",
            ),
            node(
                report_class_balance,
                inputs=["effective_labels", "splits", "params:classes"],
                outputs=["class_balance", "class_balance_plot"],
                name="report_class_balance",
            ),
            node(
                compute_sampling_weights,
                inputs=[
                    "slices",
                    "splits",
                    "params:slicing",
                    "lake",
                    "lake_models",
                    "params:iteration",
                ],
                outputs="sampling_weights",
                name="compute_sampling_weights",
            ),
            node(
                summarise_slicing,
                inputs=[
                    "lake_images",
                    "lake_labels",
                    "slices",
                    "splits",
                    "params:iteration",
                ],
                outputs="slicing_summary",
                name="summarise_slicing",
            ),
        ]
    )
