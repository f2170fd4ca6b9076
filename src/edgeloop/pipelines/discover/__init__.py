"""Discover: production, review, similarity and acquisition in one run."""

from edgeloop.pipelines.discover.pipeline import create_pipeline

__all__ = ["create_pipeline"]
