"""The training pipeline."""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.training.nodes import (
    assemble_model_input,
    refit_best_trial,
    select_promoted_model,
    sweep_hyperparameters,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                assemble_model_input,
                inputs=[
                    "lake_images",
                    "effective_labels",
                    "splits",
                    "sampling_weights",
                    "lake",
                    "params:training",
                    "params:classes",
                ],
                outputs="model_input",
                name="assemble_model_input",
            ),
            node(
                select_promoted_model,
                inputs=["lake_models", "lake"],
                outputs="promoted_model",
                name="select_promoted_model",
            ),
            node(
                sweep_hyperparameters,
                inputs=["model_input", "promoted_model", "params:training"],
                outputs="study_summary",
                name="sweep_hyperparameters",
            ),
            node(
                refit_best_trial,
                inputs=[
                    "model_input",
                    "promoted_model",
                    "study_summary",
                    "params:training",
                    "params:iteration",
                ],
                outputs="trained_model",
                name="refit_best_trial",
            ),
        ]
    )
