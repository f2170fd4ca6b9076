"""pseudo_labelling: pre-annotations for the labeling queue."""

from edgeloop.pipelines.pseudo_labelling.pipeline import create_pipeline

__all__ = ["create_pipeline"]
