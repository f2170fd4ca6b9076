"""train_iteration: slicing, training and evaluation of iteration k."""

from edgeloop.pipelines.train_iteration.pipeline import create_pipeline

__all__ = ["create_pipeline"]
