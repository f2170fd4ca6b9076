"""Similarity: embeddings, index, clusters, drill-down and KNN candidates."""

from edgeloop.pipelines.similarity.pipeline import create_pipeline

__all__ = ["create_pipeline"]
