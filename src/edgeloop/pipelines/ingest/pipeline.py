"""The ingest pipeline."""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.ingest.nodes import generate_synthetic_scenes, ingest_images


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                generate_synthetic_scenes,
                inputs=["params:synthetic", "params:ingest"],
                outputs=["synthetic_scenes", "synthetic_truth"],
                name="generate_synthetic_scenes",
            ),
            node(
                ingest_images,
                inputs=[
                    "synthetic_scenes",
                    "params:ingest",
                    "params:classes",
                    "params:iteration",
                ],
                outputs=[
                    "lake_images",
                    "lake_labels",
                    "ingest_quarantine",
                    "ingest_report",
                ],
                name="ingest_images",
            ),
        ]
    )
