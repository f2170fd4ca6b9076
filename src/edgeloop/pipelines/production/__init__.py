"""Batch scoring into the lake: the production stream or an unlabeled pool."""
