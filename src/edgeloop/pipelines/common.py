"""Helpers shared by pipeline definitions."""

from __future__ import annotations

from typing import Any

from edgeloop.lake import Lake


def lake_after(lake: Lake, *_done: Any) -> Lake:
    """The lake, once the nodes whose outputs are passed in have run.

    Nodes that write the lake as a side effect have no data edge to the nodes
    that read what they wrote. A node that reads `lake_after_x` (a MemoryDataset
    made by this node from x's output) is ordered after x in every composite.
    """
    return lake
