"""Acquisition: the labeling queue."""

from edgeloop.pipelines.acquisition.pipeline import create_pipeline

__all__ = ["create_pipeline"]
