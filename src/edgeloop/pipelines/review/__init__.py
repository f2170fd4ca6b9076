"""Review: what people should look at next, and why."""

from edgeloop.pipelines.review.pipeline import create_pipeline

__all__ = ["create_pipeline"]
