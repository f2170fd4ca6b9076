"""Novelty: how far a production image is from everything labelled so far.

Softmax confidence (`mean_max_prob`, entropy, margin) is the model's belief in
its own output, and a model is often confidently wrong on images unlike its
training data. Novelty measures that distance directly (epistemic rather than
aleatoric uncertainty, as in DDU), with two detectors:

- **features**: the mean cosine distance to the k nearest labelled images in
  the similarity embedding (what the image shows, and its textures, as the
  embedder sees them);
- **colour**: the mean L2 distance between square-rooted joint RGB histograms
  to the k nearest labelled images (global lighting and colour casts, which an
  embedder that standardises each image, `input_norm: instance`, cannot see).

`novelty` is the larger of the two detectors' percentile ranks among the
scored images, so either detector alone can raise an image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

NOVELTY_COLUMNS = ["image_id", "novelty_features", "novelty_colour", "novelty"]


def colour_histograms(images: Sequence[np.ndarray], bins: int = 8) -> np.ndarray:
    """(N, bins^3) square-rooted, L1-normalised joint RGB histograms.

    Args:
        images: (H, W, 3) uint8 images.
        bins: Bins per channel, a power of two in [1, 256].

    Raises:
        ValueError: a bad `bins`, or an image that is not (H, W, 3) uint8.
    """
    if not isinstance(bins, int) or bins < 1 or bins > 256 or bins & (bins - 1):
        raise ValueError(f"bins must be a power of two in [1, 256], got {bins!r}")
    shift = 8 - int(math.log2(bins))
    out = np.empty((len(images), bins**3), dtype=np.float32)
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image {i} must be (H, W, 3) uint8, got {image.shape} {image.dtype}"
            )
        q = image.reshape(-1, 3).astype(np.int32) >> shift
        idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
        h = np.bincount(idx, minlength=bins**3).astype(np.float32)
        out[i] = np.sqrt(h / max(h.sum(), 1.0))
    return out


@dataclass(frozen=True)
class ColourHistograms:
    """`colour_histograms` behind the embedder interface of `embed_frame`.

    So histograms are stored in the embedding store, keyed by image_id and
    ``colour-hist<bins>``, and computed once per image like the embeddings.
    """

    bins: int = 8
    batch_size: int = 64

    @property
    def backbone(self) -> str:
        return f"colour-hist{self.bins}"

    @property
    def weights(self) -> str:
        return "none"

    @property
    def dim(self) -> int:
        return self.bins**3

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "weights": self.weights, "dim": self.dim}

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return colour_histograms(images, self.bins)


def knn_distance(
    queries: np.ndarray,
    reference: np.ndarray,
    *,
    k: int = 5,
    metric: str = "cosine",
    chunk: int = 1024,
) -> np.ndarray:
    """Each query's mean distance to its k nearest reference rows (exact).

    Args:
        queries: (N, D) vectors.
        reference: (M, D) vectors, M >= 1; k is capped at M.
        k: Neighbours to average (>= 1).
        metric: ``cosine`` (1 - cosine similarity) or ``l2``.
        chunk: Queries per block, to bound memory at chunk x M.

    Returns:
        (N,) float64 distances.

    Raises:
        ValueError: empty reference, mismatched dimensions, bad k or metric.
    """
    q = np.asarray(queries, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if q.ndim != 2 or r.ndim != 2 or (len(q) and q.shape[1] != r.shape[1]):
        raise ValueError(
            f"queries and reference must be (N, D) and (M, D), got {q.shape}, {r.shape}"
        )
    if len(r) == 0:
        raise ValueError("the reference set is empty: nothing to measure novelty to")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    k = min(k, len(r))
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    r_sq = (r**2).sum(1)
    out = np.empty(len(q))
    for start in range(0, len(q), chunk):
        block = q[start : start + chunk]
        if metric == "cosine":
            dist = 1.0 - block @ r.T  # (B, M)
        else:
            sq = (block**2).sum(1)[:, None] - 2.0 * block @ r.T + r_sq[None]
            dist = np.sqrt(np.maximum(sq, 0.0))
        nearest = np.partition(dist, k - 1, axis=1)[:, :k]
        out[start : start + chunk] = nearest.mean(1)
    return out


def novelty_frame(
    image_ids: Sequence[str],
    vectors: np.ndarray,
    reference_vectors: np.ndarray,
    histograms: np.ndarray,
    reference_histograms: np.ndarray,
    *,
    k: int = 5,
) -> pd.DataFrame:
    """Novelty of each image against a labelled reference set.

    Returns:
        `NOVELTY_COLUMNS`: the two detectors' raw distances and `novelty`,
        the larger of their percentile ranks among these images (in (0, 1];
        higher is more novel).

    Raises:
        ValueError: mismatched lengths, or an empty reference.
    """
    n = len(image_ids)
    if len(vectors) != n or len(histograms) != n:
        raise ValueError(
            f"{n} image ids need as many vectors and histograms, got "
            f"{len(vectors)} and {len(histograms)}"
        )
    features = knn_distance(vectors, reference_vectors, k=k, metric="cosine")
    colour = knn_distance(histograms, reference_histograms, k=k, metric="l2")
    frame = pd.DataFrame(
        {
            "image_id": list(image_ids),
            "novelty_features": features,
            "novelty_colour": colour,
        }
    )
    frame["novelty"] = np.maximum(
        frame["novelty_features"].rank(pct=True),
        frame["novelty_colour"].rank(pct=True),
    )
    return frame[NOVELTY_COLUMNS]


def join_novelty(frame: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """`frame` (with image_id) plus a float `novelty` column from `scores`.

    Images without a score get NaN; so does every image when `scores` is
    empty or has no `novelty` column (no similarity context yet).
    """
    out = frame.drop(columns=["novelty"], errors="ignore")
    if not len(scores) or "novelty" not in scores.columns:
        return out.assign(novelty=np.nan)
    by_id = scores.drop_duplicates("image_id").set_index("image_id")["novelty"]
    return out.assign(novelty=out["image_id"].map(by_id).astype(float))
