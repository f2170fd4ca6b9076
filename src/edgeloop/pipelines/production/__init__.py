"""Batch scoring into the lake: the production stream or an unlabeled pool."""

from edgeloop.pipelines.production.pipeline import create_pipeline

__all__ = ["create_pipeline"]
