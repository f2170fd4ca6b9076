"""train_iteration: annotation import, slicing, training, evaluation (iteration k)."""

from edgeloop.pipelines.train_iteration.pipeline import create_pipeline

__all__ = ["create_pipeline"]
