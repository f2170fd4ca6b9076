"""The evaluation pipeline."""

from kedro.pipeline import Pipeline, node, pipeline

from edgeloop.pipelines.evaluation.nodes import (
    evaluate_models,
    gate_new_model,
    plot_confusion_matrix,
    plot_optuna_history,
    plot_slice_scores,
    plot_training_curves,
    register_trained_model,
    render_worst_gallery,
    track_bugs,
    write_model_card,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                evaluate_models,
                inputs=["trained_model", "promoted_model", "model_input"],
                outputs="evaluations",
                name="evaluate_models",
            ),
            node(
                gate_new_model,
                inputs=[
                    "evaluations",
                    "slices",
                    "lake_models",
                    "params:evaluation",
                    "params:training",
                    "params:classes",
                ],
                outputs=["slice_metrics", "gate_verdict"],
                name="gate_new_model",
            ),
            node(
                track_bugs,
                inputs=[
                    "lake",
                    "lake_edge_cases",
                    "gate_verdict",
                    "slice_metrics",
                    "slices",
                    "effective_labels",
                    "params:iteration",
                ],
                outputs="bug_report",
                name="track_bugs",
            ),
            node(
                plot_slice_scores,
                inputs=["slice_metrics", "params:training"],
                outputs="slice_scores_plot",
                name="plot_slice_scores",
            ),
            node(
                plot_confusion_matrix,
                inputs=["evaluations", "params:classes"],
                outputs="confusion_matrix_plot",
                name="plot_confusion_matrix",
            ),
            node(
                plot_training_curves,
                inputs="trained_model",
                outputs="training_curves_plot",
                name="plot_training_curves",
            ),
            node(
                plot_optuna_history,
                inputs="study_summary",
                outputs="optuna_history_plot",
                name="plot_optuna_history",
            ),
            node(
                render_worst_gallery,
                inputs=[
                    "evaluations",
                    "model_input",
                    "slices",
                    "params:evaluation",
                    "params:classes",
                ],
                outputs="worst_gallery",
                name="render_worst_gallery",
            ),
            node(
                write_model_card,
                inputs=[
                    "trained_model",
                    "promoted_model",
                    "gate_verdict",
                    "slice_metrics",
                    "study_summary",
                    "evaluations",
                    "model_input",
                    "slices",
                    "effective_labels",
                    "lake_images",
                    "lake_models",
                    "run_provenance",
                    "parameters",
                    "params:evaluation",
                    "bug_report",
                    "annotation_import_report",
                    "sampling_weights",
                ],
                outputs=["model_card_json", "model_card_md"],
                name="write_model_card",
            ),
            node(
                register_trained_model,
                inputs=[
                    "trained_model",
                    "model_card_json",
                    "gate_verdict",
                    "slice_metrics",
                    "params:training",
                ],
                outputs="model_registration",
                name="register_trained_model",
            ),
        ]
    )
