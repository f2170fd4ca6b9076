"""Embedders, the incremental embedding store and the similarity pictures."""

import numpy as np
import pandas as pd
import pytest
import torch

from edgeloop import similarity
from edgeloop.similarity import EmbeddingStore, embed_frame, make_embedder


def _images(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_no_weights_and_no_model_refuses_a_random_network(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="no weights for the resnet18 embedder"):
        make_embedder("resnet18")
    with pytest.raises(ValueError, match="backbone must be one of"):
        make_embedder("vgg16")
    emb = make_embedder("resnet18", allow_random=True)
    assert (emb.weights, emb.dim) == ("random:seed0", 512)


def test_imagenet_file_in_the_torch_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = similarity._imagenet_file("resnet34")
    path.parent.mkdir(parents=True)
    from torchvision.models import resnet34

    torch.manual_seed(0)
    torch.save(resnet34(weights=None).state_dict(), path)
    emb = make_embedder("resnet34")
    assert emb.weights == f"imagenet:{path.stem}" and emb.dim == 512
    assert emb.embed(_images(3)).shape == (3, 512)
    # A file that is not a resnet34 state dict is refused with its name.
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        make_embedder("resnet34", weights_path=bad)


def test_promoted_model_encoder_is_the_fallback(tmp_path, monkeypatch):
    from conftest import register_tiny_model

    from edgeloop.lake import Lake
    from edgeloop.registry import load_model, promoted_row

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    lake = Lake(str(tmp_path / "lake"))
    version = register_tiny_model(lake)
    model = load_model(lake, promoted_row(lake.read("models")))
    emb = make_embedder("resnet18", model=model, batch_size=4)
    assert emb.weights == f"model:{version}"
    assert emb.backbone == "model:lraspp_mobilenet_v3_large" and emb.dim == 960
    images = _images(5, size=48)
    a = emb.embed(images)
    b = emb.embed(images[::-1])
    assert a.shape == (5, 960) and np.isfinite(a).all()
    np.testing.assert_allclose(a[::-1], b, rtol=1e-5, atol=1e-6)  # order-free


def test_embed_mixed_sizes_keeps_input_order():
    emb = make_embedder("resnet18", allow_random=True, batch_size=2)
    images = _images(3, size=32) + _images(2, size=40, seed=1)
    order = [0, 3, 1, 4, 2]
    mixed = emb.embed([images[i] for i in order])
    alone = np.stack([emb.embed([images[i]])[0] for i in order])
    np.testing.assert_allclose(mixed, alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"images\[0\] must be \(H, W, 3\) uint8"):
        emb.embed([np.zeros((8, 8), np.uint8)])


def test_store_is_incremental_and_keyed_by_backbone_and_weights(tmp_path):
    emb = make_embedder("resnet18", allow_random=True, batch_size=8)
    store = EmbeddingStore(tmp_path / "emb")
    images = {f"id{i}": img for i, img in enumerate(_images(6))}
    calls: list[str] = []

    def load(blob: str) -> np.ndarray:
        calls.append(blob)
        return images[blob]

    items = pd.DataFrame({"image_id": list(images)[:4], "image_blob": list(images)[:4]})
    first = embed_frame(emb, store, items, load, progress=False)
    assert (first["new"], first["reused"]) == (4, 0) and len(calls) == 4
    # Unchanged: nothing is read or computed.
    again = embed_frame(emb, store, items, load, progress=False)
    assert (again["new"], again["reused"]) == (0, 4) and len(calls) == 4
    # Two more images (and a duplicate row): only those two are computed.
    more = pd.DataFrame({"image_id": list(images), "image_blob": list(images)})
    grown = embed_frame(emb, store, pd.concat([more, more]), load, progress=False)
    assert (grown["new"], grown["reused"]) == (2, 4) and calls[4:] == ["id4", "id5"]
    ids, vectors = store.load(emb.backbone, emb.weights)
    assert ids == sorted(images) and vectors.shape == (6, 512)
    np.testing.assert_allclose(
        vectors[ids.index("id1")], emb.embed([images["id1"]])[0], rtol=1e-4, atol=1e-5
    )
    # Other weights: a separate key, nothing reused.
    assert store.missing(emb.backbone, "model:it1-abc", ids) == ids
    sub_ids, sub = store.load(emb.backbone, emb.weights, ["id5", "id0", "nope"])
    assert sub_ids == ["id0", "id5"] and sub.shape == (2, 512)


@pytest.mark.parametrize("workers", [1, 3])
def test_embed_frame_workers_keep_the_order_and_the_finished_chunks(tmp_path, workers):
    """Batches run in parallel workers; vectors match their ids; a bad read stops."""
    emb = make_embedder("resnet18", allow_random=True, batch_size=2)
    store = EmbeddingStore(tmp_path / "emb")
    threads = torch.get_num_threads()
    images = {f"id{i}": img for i, img in enumerate(_images(5))}

    def load(blob: str) -> np.ndarray:
        if blob == "bad":
            raise ValueError("corrupt or unreadable image: bad")
        return images[blob]

    items = pd.DataFrame({"image_id": list(images), "image_blob": list(images)})
    report = embed_frame(
        emb, store, items, load, chunk=2, workers=workers, progress=False
    )
    assert (report["new"], report["workers"]) == (5, workers)
    # The workers' thread setting does not leak into this thread.
    assert torch.get_num_threads() == threads
    ids, vectors = store.load(emb.backbone, emb.weights)
    assert ids == list(images)
    direct = emb.embed([images[i] for i in ids])
    np.testing.assert_array_equal(vectors, direct)  # bit for bit, any thread count
    # A corrupt image in the third chunk: the first two chunks are kept.
    other = EmbeddingStore(tmp_path / "other")
    rows = pd.DataFrame({"image_id": [*images, "zz"], "image_blob": [*images, "bad"]})
    with pytest.raises(ValueError, match="corrupt"):
        embed_frame(emb, other, rows, load, chunk=2, workers=workers, progress=False)
    kept, _ = other.load(emb.backbone, emb.weights)
    assert kept == ["id0", "id1", "id2", "id3"]


def test_pictures_have_the_content_asked_for():
    fig = similarity.montage(_images(7), title="cluster 3/1", captions=list("abcdefg"))
    assert fig._suptitle.get_text() == "cluster 3/1"
    assert sum(1 for ax in fig.axes if ax.images) == 7
    vectors = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    fig, xy = similarity.embedding_map(
        vectors, [i % 3 for i in range(30)], np.linspace(0, 1, 30)
    )
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert xy.shape == (30, 2)
    assert titles == [
        "PCA of embeddings, by cluster",
        "PCA of embeddings, by confidence",
    ]


@pytest.mark.parametrize(
    ("pooling", "dim", "name"),
    [
        ("gap", 512, "resnet18"),
        ("style", 384, "resnet18+style"),
        ("both", 896, "resnet18+both"),
    ],
)
def test_pooling_sets_dim_name_and_norms(pooling, dim, name):
    emb = make_embedder("resnet18", allow_random=True, pooling=pooling)
    assert (emb.backbone, emb.dim) == (name, dim)
    vecs = emb.embed(_images(3, size=48))
    assert vecs.shape == (3, dim) and np.isfinite(vecs).all()
    if pooling != "gap":  # unit-norm blocks, scaled to a unit vector
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    if pooling == "both":  # the first 384 dims are the style block, scaled
        style = make_embedder("resnet18", allow_random=True, pooling="style")
        np.testing.assert_allclose(
            vecs[:, :384] * np.sqrt(3.0),
            style.embed(_images(3, size=48)) * np.sqrt(2.0),
            rtol=1e-4,
            atol=1e-5,
        )
    with pytest.raises(ValueError, match="pooling must be one of"):
        make_embedder("resnet18", allow_random=True, pooling="max")


def test_style_pooling_sees_a_global_colour_cast():
    """Style features separate a tinted copy from the original more than GAP
    does, relative to how far apart two unrelated images are."""
    base = _images(2, size=64, seed=5)
    tinted = (base[0] * np.array([1.0, 0.6, 0.4])).astype(np.uint8)

    def relative(pooling: str) -> float:
        emb = make_embedder("resnet18", allow_random=True, pooling=pooling)
        v = emb.embed([base[0], tinted, base[1]])
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        return float((1 - v[0] @ v[1]) / (1 - v[0] @ v[2]))

    assert relative("style") > relative("gap")


def test_knn_space_weights_are_checked_before_anything_is_read():
    from edgeloop.pipelines.similarity.nodes import _extra_spaces

    def knn(**settings):
        return {"knn": {"query": "discriminative", **settings}}

    off = knn(colour_weight=0, object_weight=0, query="nearest_seed")
    assert _extra_spaces(None, None, off, [], {}) == []
    with pytest.raises(ValueError, match="colour_weight must be >= 0, got -1.0"):
        _extra_spaces(None, None, knn(colour_weight=-1), [], {})
    with pytest.raises(ValueError, match="object_weight must be >= 0, got -2.0"):
        _extra_spaces(None, None, knn(object_weight=-2), [], {})
    with pytest.raises(ValueError, match="need query: discriminative"):  # weights 1
        _extra_spaces(None, None, knn(query="nearest_seed"), [], {})


def test_embed_workers_share_out_the_cores():
    threads = torch.get_num_threads()
    try:
        for cores, want in [
            (1, (1, 1)),
            (2, (2, 1)),
            (6, (3, 2)),
            (16, (4, 4)),
            (7, (1, 7)),
        ]:
            torch.set_num_threads(cores)
            assert similarity.embed_workers() == want, cores
        torch.set_num_threads(2)
        assert similarity.embed_workers(3) == (3, 1)
    finally:
        torch.set_num_threads(threads)
