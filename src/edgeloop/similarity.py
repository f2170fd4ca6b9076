"""Image embeddings for similarity search: backbones, an incremental store, pictures.

- `make_embedder`: a ResNet18/34 trunk (ImageNet weights when present locally),
  else the promoted segmentation model's encoder, pooled. Never a random network
  unless asked for (`allow_random`).
- `Embedder.embed`: batched (N, D) float32 features of uint8 images.
- `EmbeddingStore`: Parquet parts keyed by (image_id, backbone, weights); only
  missing images are computed (`missing`), so a re-run on an unchanged lake does
  almost nothing.
- `montage`, `embedding_map`: the pictures of the similarity pipeline.

The index, k-means and drill-down live in `edgeloop.vectorindex`.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models import ResNet18_Weights, ResNet34_Weights, resnet18, resnet34  # noqa: E402

from edgeloop.models import IMAGENET_MEAN, IMAGENET_STD, load_weights  # noqa: E402

log = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "EMBEDDING_COLUMNS",
    "POOLINGS",
    "Embedder",
    "EmbeddingStore",
    "embedding_map",
    "make_embedder",
    "montage",
    "stored_vectors",
]

BACKBONES = ("resnet18", "resnet34")
_IMAGENET = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": ResNet34_Weights.IMAGENET1K_V1,
}
_CONSTRUCT = {"resnet18": resnet18, "resnet34": resnet34}
EMBEDDING_COLUMNS = ["image_id", "backbone", "weights", "dim", "vector"]


POOLINGS = ("gap", "style", "both")


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(
            f"similarity.pooling must be one of {POOLINGS}, got {pooling!r}"
        )


def _mean_std(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 2C): per-channel mean and std, L2-normalised."""
    return F.normalize(torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1), dim=1)


def _resnet_trunk(
    net: nn.Module, pooling: str = "gap"
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """A torchvision ResNet pooled to one vector per image, and its dim.

    - ``gap``: layer4 averaged over space (512-d): what is in the image.
    - ``style``: the per-channel mean and std of layer1 and layer2 (384-d), as
      in style transfer (Gatys et al.): how the image looks, i.e. lighting,
      weather, colour cast and texture, wherever in the frame they are.
    - ``both``: style and gap blocks side by side (896-d).

    Every block is L2-normalised, and ``both`` is scaled to unit norm, so no
    block dominates the cosine distance by its size. `make_embedder` checks
    `pooling`.
    """
    c1 = net.layer1[-1].conv1.in_channels  # 64 for resnet18/34
    c2 = net.layer2[-1].conv1.in_channels  # 128
    dims = {"gap": 512, "style": 2 * (c1 + c2), "both": 2 * (c1 + c2) + 512}

    def pooled(x: torch.Tensor) -> torch.Tensor:
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        l1 = net.layer1(x)
        l2 = net.layer2(l1)
        style = [_mean_std(l1), _mean_std(l2)]
        if pooling == "style":
            return torch.cat(style, 1) / np.sqrt(2.0)
        gap = net.layer4(net.layer3(l2)).mean(dim=(2, 3))
        if pooling == "gap":
            return gap
        return torch.cat([*style, F.normalize(gap, dim=1)], 1) / np.sqrt(3.0)

    return pooled, dims[pooling]


@dataclass
class Embedder:
    """Pooled CNN features, batched.

    Attributes:
        backbone: "resnet18", "resnet34" or "model:<arch>" (a segmentation
            model's encoder).
        weights: Where the weights came from, e.g. "imagenet:resnet18-f37072fd"
            or "model:it0-7a4a7bc6752f"; part of the store key, so new weights
            mean new embeddings.
        dim: Feature dimension.
        trunk: (B, 3, H, W) normalised -> (B, dim) pooled features.
        mean, std: Input normalisation.
        instance_norm: Standardise each image per channel first (what a model
            trained with `input_norm: instance` saw).
        batch_size: Images per forward pass.
        input_size: (height, width) images are resized to; None keeps each
            image's own size (images of one size are batched together).
    """

    backbone: str
    weights: str
    dim: int
    trunk: Callable[[torch.Tensor], torch.Tensor]
    mean: Sequence[float]
    std: Sequence[float]
    instance_norm: bool = False
    batch_size: int = 32
    input_size: tuple[int, int] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "weights": self.weights,
            "dim": self.dim,
            "batch_size": self.batch_size,
            "input_size": list(self.input_size) if self.input_size else None,
        }

    def _tensor(self, batch: np.ndarray) -> torch.Tensor:
        # (x / 255 - mean) / std as one scale and one shift, in place.
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
        x = x.mul_(1.0 / (255.0 * std)).sub_(mean / std)
        if self.input_size and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.interpolate(
                x, size=self.input_size, mode="bilinear", align_corners=False
            )
        if self.instance_norm:
            m = x.mean(dim=(2, 3), keepdim=True)
            s = x.std(dim=(2, 3), keepdim=True)
            x = (x - m) / (s + 1e-2)
        return x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, dim) pooled features."""
        return self.trunk(x)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 features of (H, W, 3) uint8 images, in input order."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"images[{i}] must be (H, W, 3) uint8, "
                    f"got {image.shape} {image.dtype}"
                )
            by_size.setdefault(image.shape[:2], []).append(i)
        for idx in by_size.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                x = self._tensor(np.stack([images[i] for i in chunk]))
                out[chunk] = self.forward(x).numpy()
        return out


def _imagenet_file(backbone: str) -> Path:
    url = _IMAGENET[backbone].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def make_embedder(
    backbone: str = "resnet18",
    *,
    weights_path: str | os.PathLike[str] | None = None,
    model: Any | None = None,
    allow_random: bool = False,
    batch_size: int = 32,
    input_size: Sequence[int] | None = None,
    pooling: str = "gap",
) -> Embedder:
    """The embedder a run uses, and one log line saying which weights it has.

    `pooling` ("gap", "style" or "both", see `_resnet_trunk`) is part of the
    embedder's `backbone` name (e.g. "resnet18+style"), so the store keeps
    vectors of different poolings apart.

    Order of precedence:

    1. `weights_path`: a torchvision `backbone` state dict (classifier keys
       ignored); weights "file:<name>".
    2. The torchvision ImageNet file of `backbone`, if it is in the torch hub
       cache; weights "imagenet:<file stem>".
    3. `model` (a `TrainedModel`, normally the promoted one): its segmentation
       encoder, pooled; weights "model:<version>".
    4. With `allow_random` only, a randomly initialised `backbone` (for tests
       and benchmarks of speed, never for retrieval quality).

    Raises:
        ValueError: unknown backbone, or none of the above available.
    """
    if backbone not in BACKBONES:
        raise ValueError(
            f"similarity.backbone must be one of {BACKBONES}, got {backbone!r}"
        )
    _check_pooling(pooling)
    size = tuple(int(v) for v in input_size) if input_size else None
    common = {"batch_size": int(batch_size), "input_size": size}
    name = backbone if pooling == "gap" else f"{backbone}+{pooling}"
    state, source = None, None
    if weights_path:
        state = load_weights(weights_path)
        source = f"file:{Path(weights_path).stem}"
    elif _imagenet_file(backbone).is_file():
        state = load_weights(_imagenet_file(backbone))
        source = f"imagenet:{_imagenet_file(backbone).stem}"
    if state is not None:
        net = _CONSTRUCT[backbone](weights=None)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        what = weights_path or _imagenet_file(backbone)
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as err:  # right keys, wrong shapes
            raise ValueError(f"{what} does not fit {backbone}: {err}") from err
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise ValueError(
                f"{what} is not a {backbone} state dict "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        log.info("embeddings: %s with %s weights", name, source)
        trunk, dim = _resnet_trunk(net.eval(), pooling)
        return Embedder(
            name,
            source,
            dim,
            trunk,
            IMAGENET_MEAN,
            IMAGENET_STD,
            **common,
        )
    if model is not None:
        return _model_embedder(model, pooling=pooling, **common)
    if allow_random:
        log.warning(
            "embeddings: %s with RANDOM weights (allow_random): fine for speed "
            "tests, meaningless for retrieval",
            name,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # "random:seed0" names these weights
            net = _CONSTRUCT[backbone](weights=None).eval()
        trunk, dim = _resnet_trunk(net, pooling)
        return Embedder(
            name,
            "random:seed0",
            dim,
            trunk,
            IMAGENET_MEAN,
            IMAGENET_STD,
            **common,
        )
    raise ValueError(
        f"no weights for the {backbone} embedder: put the torchvision ImageNet file "
        f"at {_imagenet_file(backbone)}, give similarity.weights_path, or promote a "
        "segmentation model first (its encoder is the fallback)"
    )


def _model_embedder(model: Any, *, pooling: str = "gap", **common: Any) -> Embedder:
    """The promoted segmentation model's encoder, pooled.

    A ResNet encoder (U-Net) supports every pooling; the MobileNetV3 backbones
    of LRASPP and DeepLabV3 only ``gap`` (other poolings fall back to it, with
    a warning).

    Images are normalised with the dataset statistics only, even when the model
    itself standardises each image (`input_norm: instance`): per-image
    standardisation removes the brightness and colour cast that scene
    conditions (night, dusk, haze) are made of. On the synthetic stream this
    took night precision@50 from 0.34 to 1.00 and dusk from 0.12 to 1.00.
    """
    seg = model.build()
    meta = model.metadata
    norm = meta["normalisation"]
    if seg.arch == "unet_resnet18":
        trunk, dim = _resnet_trunk(seg.net.encoder, pooling)
    else:
        backbone = seg.backbone
        if pooling != "gap":
            log.warning(
                "embeddings: %s has no ResNet encoder; pooling %r falls back to gap",
                seg.arch,
                pooling,
            )
            pooling = "gap"

        def trunk(x: torch.Tensor) -> torch.Tensor:
            feats = backbone(x)
            feats = feats[next(reversed(feats))] if isinstance(feats, dict) else feats
            return feats.mean(dim=(2, 3))

        with torch.no_grad():
            dim = int(trunk(torch.zeros(1, 3, 64, 64)).shape[1])
    log.info(
        "embeddings: no ImageNet weights in the torch cache; using the promoted "
        "model's encoder (%s, %s), %s pooling, %d-d",
        seg.arch,
        model.version,
        pooling,
        dim,
    )
    return Embedder(
        f"model:{seg.arch}" + ("" if pooling == "gap" else f"+{pooling}"),
        f"model:{model.version}",
        dim,
        trunk,
        norm["mean"],
        norm["std"],
        **common,
    )


class EmbeddingStore:
    """Embeddings as Parquet parts under `root/<backbone>__<weights>/`.

    Each run that computes something writes one new part; parts are never
    rewritten, so an interrupted run loses at most its own part. Rows are keyed
    by (image_id, backbone, weights); a duplicate key keeps the first row.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @staticmethod
    def _safe(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)

    def folder(self, backbone: str, weights: str) -> Path:
        return self.root / f"{self._safe(backbone)}__{self._safe(weights)}"

    def ids(self, backbone: str, weights: str) -> set[str]:
        folder = self.folder(backbone, weights)
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            return set()
        table = pads.dataset(folder, format="parquet").to_table(columns=["image_id"])
        return set(table.column("image_id").to_pylist())

    def missing(
        self, backbone: str, weights: str, image_ids: Sequence[str]
    ) -> list[str]:
        """The ids (unique, in input order) with no stored embedding yet."""
        have = self.ids(backbone, weights)
        return [i for i in dict.fromkeys(image_ids) if i not in have]

    def write(
        self, backbone: str, weights: str, image_ids: Sequence[str], vectors: np.ndarray
    ) -> Path | None:
        """Stores new rows as one part; returns its path (None if nothing new)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(image_ids):
            raise ValueError(
                f"vectors must be (N, D) with N = {len(image_ids)} ids, "
                f"got {vectors.shape}"
            )
        if not len(image_ids):
            return None
        dim = vectors.shape[1]
        table = pa.table(
            {
                "image_id": pa.array(list(image_ids), pa.string()),
                "backbone": pa.array([backbone] * len(image_ids), pa.string()),
                "weights": pa.array([weights] * len(image_ids), pa.string()),
                "dim": pa.array([dim] * len(image_ids), pa.int32()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1), pa.float32()), dim
                ),
            }
        )
        folder = self.folder(backbone, weights)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, folder / name)  # readers never see a half-written part
        return folder / name

    def load(
        self, backbone: str, weights: str, image_ids: Sequence[str] | None = None
    ) -> tuple[list[str], np.ndarray]:
        """(ids, (N, D) vectors) sorted by id; only `image_ids` if given."""
        folder = self.folder(backbone, weights)
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            return [], np.zeros((0, 0), dtype=np.float32)
        table = pads.dataset(folder, format="parquet").to_table(
            columns=["image_id", "vector"]
        )
        ids = np.asarray(table.column("image_id").to_pylist(), dtype=object)
        flat = table.column("vector").combine_chunks()
        dim = flat.type.list_size
        vectors = flat.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
        _, first = np.unique(ids, return_index=True)  # sorted ids, first row each
        ids, vectors = ids[first], vectors[first]
        if image_ids is not None:
            keep = np.isin(ids, np.asarray(list(image_ids), dtype=object))
            ids, vectors = ids[keep], vectors[keep]
        return [str(i) for i in ids], np.ascontiguousarray(vectors, dtype=np.float32)


def stored_vectors(
    report: Mapping[str, Any], params: Mapping[str, Any], ids: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """(ids, vectors) of `ids` that `embed_images` stored (sorted by id).

    Args:
        report: The `embedding_report` (its backbone and weights name the
            store's folder).
        params: The `similarity` parameters (`store`: the store's root).
    """
    store = EmbeddingStore(params.get("store", "data/04_feature/embeddings"))
    return store.load(report["backbone"], report["weights"], ids)


# -- pictures -------------------------------------------------------------------


def montage(
    images: Sequence[np.ndarray],
    *,
    title: str,
    captions: Sequence[str] | None = None,
    columns: int = 6,
) -> Figure:
    """A grid of thumbnails with a title (one cluster, or one KNN query)."""
    n = max(len(images), 1)
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.8 * cols, 1.9 * rows + 0.4), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for i, image in enumerate(images):
        ax = axes.ravel()[i]
        ax.imshow(image)
        if captions is not None:
            ax.set_title(captions[i], fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def embedding_map(
    vectors: np.ndarray,
    clusters: Sequence[int],
    confidence: Sequence[float] | None = None,
    *,
    seed: int = 0,
    title: str = "",
) -> tuple[Figure, np.ndarray]:
    """A 2-D map of the embeddings, coloured by cluster and by confidence.

    PCA of the L2-normalised vectors (UMAP when `umap-learn` is installed).

    Returns:
        (figure, (N, 2) coordinates).
    """
    from sklearn.decomposition import PCA

    x = np.asarray(vectors, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    method = "PCA"
    try:  # optional, never a dependency
        import umap  # type: ignore[import-not-found]

        xy = umap.UMAP(random_state=seed).fit_transform(x)
        method = "UMAP"
    except ImportError:
        xy = (
            PCA(n_components=2, random_state=seed).fit_transform(x)
            if len(x) >= 2
            else np.zeros((len(x), 2))
        )
    panels = 2 if confidence is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5), squeeze=False)
    ax = axes[0, 0]
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(clusters), cmap="tab20", s=6)
    ax.set_title(f"{method} of embeddings, by cluster")
    fig.colorbar(sc, ax=ax, label="cluster")
    if confidence is not None:
        ax = axes[0, 1]
        sc = ax.scatter(
            xy[:, 0], xy[:, 1], c=np.asarray(confidence), cmap="viridis", s=6
        )
        ax.set_title(f"{method} of embeddings, by confidence")
        fig.colorbar(sc, ax=ax, label="mean max prob")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, np.asarray(xy)


# Embedding workers at most: each holds its batches' activations in memory.
MAX_EMBED_WORKERS = 4


def embed_workers(workers: int | None = None) -> tuple[int, int]:
    """(worker threads, torch threads per worker) for `embed_frame`.

    By default as many workers as share the cores torch uses out evenly, at
    most `MAX_EMBED_WORKERS`: 2 x 1 on 2 cores, 3 x 2 on 6, 4 x 4 on 16, and
    one worker on all of them when no split is even (5 or 7 cores).
    """
    cores = torch.get_num_threads()
    if workers is None:
        workers = max(
            d for d in range(1, min(cores, MAX_EMBED_WORKERS) + 1) if cores % d == 0
        )
    workers = max(1, workers)
    return workers, max(1, cores // workers)


@contextmanager
def embed_pool(workers: int | None = None) -> Iterator[ThreadPoolExecutor]:
    """The embedding workers' thread pool (`embed_workers` sizes it).

    Each worker runs torch on its share of the cores. Setting that also sets
    torch's default for threads started later, so on exit this thread's own
    count is put back as the default.
    """
    n, per_worker = embed_workers(workers)
    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(
            max_workers=n,
            initializer=torch.set_num_threads,
            initargs=(per_worker,),
            thread_name_prefix="embed",
        ) as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


def embed_frame(
    embedder: Embedder,
    store: EmbeddingStore,
    items: pd.DataFrame,
    load_image: Callable[[str], np.ndarray],
    *,
    chunk: int = 256,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Embeds the rows of `items` (image_id, image_blob) the store lacks.

    `workers` threads (default: `embed_workers`, e.g. 2 on 2 cores, at most
    4) each read, decode and embed one batch at a time, the cores shared out
    among them. On a few CPU cores, one batch per core runs the network
    faster than one batch spread over all of them, and one thread's PNG
    decoding (zlib releases the GIL) overlaps the others' forward.
    Vectors are stored in input order, `chunk` at a time, one Parquet part
    per chunk, so a killed run keeps the chunks it finished.

    Returns:
        A report: total, new, seconds, images_per_second and the embedder.
    """
    from edgeloop.progress import tqdm

    t0 = time.perf_counter()
    items = items.drop_duplicates("image_id")
    todo = store.missing(
        embedder.backbone, embedder.weights, items["image_id"].tolist()
    )
    blobs = items.set_index("image_id")["image_blob"]
    step = max(1, embedder.batch_size)
    batches = iter([todo[start : start + step] for start in range(0, len(todo), step)])
    workers = embed_workers(workers)[0]

    def embed_batch(ids: list[str]) -> np.ndarray:
        return embedder.embed([load_image(blobs[i]) for i in ids])

    done = 0
    kept_ids: list[str] = []
    kept: list[np.ndarray] = []

    def flush() -> None:
        nonlocal done
        if kept_ids:
            store.write(
                embedder.backbone, embedder.weights, kept_ids, np.concatenate(kept)
            )
            done += len(kept_ids)
            kept_ids.clear()
            kept.clear()

    with (
        embed_pool(workers) as pool,
        tqdm(
            total=len(todo), desc="embedding", unit="img", disable=not progress
        ) as bar,
    ):
        # At most two batches per worker in flight; results in input order.
        pending = deque(
            (ids, pool.submit(embed_batch, ids)) for ids in islice(batches, 2 * workers)
        )
        while pending:
            ids, future = pending.popleft()
            vectors = future.result()
            following = next(batches, None)
            if following is not None:
                pending.append((following, pool.submit(embed_batch, following)))
            kept.append(vectors)
            kept_ids.extend(ids)
            bar.update(len(ids))
            if len(kept_ids) >= chunk:
                flush()
        flush()
    seconds = time.perf_counter() - t0
    return {
        **embedder.describe(),
        "images": int(len(items)),
        "new": int(done),
        "reused": int(len(items) - done),
        "workers": workers,
        "seconds": round(seconds, 3),
        "images_per_second": round(done / seconds, 1) if done and seconds > 0 else None,
    }
