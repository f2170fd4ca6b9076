"""Small builders for test sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_pair(rng: np.random.Generator, size: tuple[int, int] = (24, 32)):
    """A random RGB image and a mask with an object of class 1 and one of class 2."""
    h, w = size
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[2:6, 2:8] = 1
    mask[10:20, 12:30] = 2
    return image, mask


def make_folder_source(root: Path, n: int = 5, seed: int = 0, tags=None) -> Path:
    """A paired-folder source with `n` good items and a metadata sidecar."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        image, mask = make_pair(rng)
        write_png(root / "images" / f"img{i:03d}.png", image)
        write_png(root / "masks" / f"img{i:03d}.png", mask)
        lines.append(json.dumps({"stem": f"img{i:03d}", "tags": tags or ["day"]}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root
