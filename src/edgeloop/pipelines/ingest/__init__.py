"""Ingest: sources (synthetic, VOC, paired folders, CamVid) into the lake."""

from edgeloop.pipelines.ingest.pipeline import create_pipeline

__all__ = ["create_pipeline"]
