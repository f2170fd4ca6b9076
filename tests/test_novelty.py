"""Novelty: kNN distance to the labelled images, in features and in colour."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from edgeloop.novelty import (
    NOVELTY_COLUMNS,
    ColourHistograms,
    colour_histograms,
    join_novelty,
    knn_distance,
    novelty_frame,
)


def _image(value: tuple[int, int, int], size: int = 8) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.uint8), (size, size, 3)).copy()


def test_colour_histograms_are_square_rooted_and_l1_normalised():
    half = _image((0, 0, 0))
    half[:4] = 255  # half black, half white
    h = colour_histograms([half, _image((200, 10, 10))], bins=2)
    assert h.shape == (2, 8)
    # sqrt of (0.5, 0.5): black in bin 0, white in bin 7.
    np.testing.assert_allclose(h[0], [np.sqrt(0.5), 0, 0, 0, 0, 0, 0, np.sqrt(0.5)])
    np.testing.assert_allclose(h[1], [0, 0, 0, 0, 1, 0, 0, 0])  # (1, 0, 0) -> bin 4
    np.testing.assert_allclose((h**2).sum(1), 1.0, rtol=1e-6)
    # The same, behind embed_frame's embedder interface (stored per image).
    stored = ColourHistograms(bins=2)
    assert stored.describe() == {
        "backbone": "colour-hist2",
        "weights": "none",
        "dim": 8,
    }
    np.testing.assert_array_equal(stored.embed([half, _image((200, 10, 10))]), h)
    with pytest.raises(ValueError, match="power of two"):
        colour_histograms([half], bins=6)
    with pytest.raises(ValueError, match=r"image 0 must be \(H, W, 3\) uint8"):
        colour_histograms([half.astype(np.float32)])


def test_knn_distance_by_hand():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    q = np.array([[2.0, 0.0], [0.0, -1.0]])
    # cosine distances of q0: 0, 1, 1 - 1/sqrt(2); k=2 averages the two smallest.
    d = knn_distance(q, ref, k=2, metric="cosine")
    np.testing.assert_allclose(d[0], (0 + (1 - 1 / np.sqrt(2))) / 2)
    np.testing.assert_allclose(d[1], (1 + (1 + 1 / np.sqrt(2))) / 2)  # 1, 2, 1+1/√2
    l2 = knn_distance(q, ref, k=1, metric="l2", chunk=1)  # chunking changes nothing
    np.testing.assert_allclose(l2, [1.0, np.sqrt(2)])  # (2,0)->(1,0); (0,-1)->(1,0)
    # k is capped at the reference size.
    np.testing.assert_allclose(
        knn_distance(q, ref, k=50, metric="l2"),
        knn_distance(q, ref, k=3, metric="l2"),
    )
    with pytest.raises(ValueError, match="reference set is empty"):
        knn_distance(q, np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        knn_distance(q, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="k must be a positive int"):
        knn_distance(q, ref, k=0)
    with pytest.raises(ValueError, match="metric"):
        knn_distance(q, ref, metric="manhattan")


def test_either_detector_alone_makes_an_image_the_most_novel():
    rng = np.random.default_rng(0)
    ref_vectors = rng.normal(size=(30, 16)) + 5.0  # one tight labelled cloud
    ref_images = [_image((90 + i, 120, 160)) for i in range(30)]  # daylight sky
    vectors = rng.normal(size=(6, 16)) + 5.0
    images = [_image((95 + i, 120, 160)) for i in range(6)]
    vectors[2] = -5.0  # looks like nothing labelled, in familiar colours
    images[4] = _image((5, 5, 20))  # a dark image the features do not tell apart
    frame = novelty_frame(
        [f"i{n}" for n in range(6)],
        vectors,
        ref_vectors,
        colour_histograms(images),
        colour_histograms(ref_images),
        k=3,
    )
    assert list(frame.columns) == NOVELTY_COLUMNS
    assert frame["novelty_features"].idxmax() == 2
    assert frame["novelty_colour"].idxmax() == 4
    # The larger percentile rank: both outliers share the top score.
    assert frame.loc[[2, 4], "novelty"].tolist() == [1.0, 1.0]
    assert (frame.drop(index=[2, 4])["novelty"] < 1.0).all()
    assert frame["novelty"].between(0, 1, inclusive="right").all()
    with pytest.raises(ValueError, match="6 image ids need as many"):
        novelty_frame(
            ["a"] * 6, vectors[:5], ref_vectors, np.zeros((6, 8)), np.zeros((3, 8))
        )


def test_join_novelty_maps_by_image_and_leaves_the_unscored_nan():
    frame = pd.DataFrame({"image_id": ["a", "b", "c"], "novelty": [9.0, 9.0, 9.0]})
    scores = pd.DataFrame({"image_id": ["b", "a", "a"], "novelty": [0.5, 0.25, 0.9]})
    out = join_novelty(frame, scores)
    assert out["novelty"].tolist()[:2] == [0.25, 0.5]  # first score of a duplicate
    assert np.isnan(out["novelty"].iloc[2]) and len(out) == 3
    empty = join_novelty(frame, pd.DataFrame(columns=["image_id", "novelty"]))
    assert empty["novelty"].isna().all()
