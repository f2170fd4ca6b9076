"""Slicing: slices, stable splits, class balance and sampling weights."""

from edgeloop.pipelines.slicing.pipeline import create_pipeline

__all__ = ["create_pipeline"]
