"""Pre-annotations ("pseudo labels") for the labeling queue, three ways.

- `slic_prelabel`: SLIC superpixels (scikit-image). With a model mask each
  superpixel takes the model's majority class, so the pre-annotation snaps to
  image edges; without one, every superpixel is a `segment?` region for the
  annotator to click and name.
- `OffTheShelf`: any torchvision segmentation checkpoint found locally, its
  classes mapped onto ours. A source class that maps to several of ours becomes
  a generic brush (`aeroplane?`): the model finds the object, the person picks
  the exact class. Generic brushes must be resolved before import.
- our own promoted model, through the one `Predictor`.

`agreement` and `quality` score each pre-annotation, so annotators see the
doubtful ones first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeloop.classmap import ClassMap
from edgeloop.predictor import Predictor

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "UNLABELED",
    "OffTheShelf",
    "PreLabel",
    "agreement",
    "class_mask",
    "generic_members",
    "generic_name",
    "load_off_the_shelf",
    "model_prelabel",
    "quality",
    "slic_prelabel",
    "slic_segments",
    "superpixel_vote",
]

METHODS = ("own_model", "slic", "off_the_shelf")
UNLABELED = 255  # a pixel the pre-annotation leaves to the annotator
SEGMENT_LABEL = "segment?"  # an unnamed superpixel (SLIC without a model)
_ARCHITECTURES = {
    "deeplabv3_mobilenet_v3_large": "DeepLabV3_MobileNet_V3_Large_Weights",
    "lraspp_mobilenet_v3_large": "LRASPP_MobileNet_V3_Large_Weights",
    "fcn_resnet50": "FCN_ResNet50_Weights",
    "deeplabv3_resnet50": "DeepLabV3_ResNet50_Weights",
}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def generic_name(source_class: str) -> str:
    """The generic brush of a source class that maps to several of ours."""
    return f"{source_class}?"


def generic_members(spec: Mapping[str, Any]) -> dict[str, list[str]]:
    """Generic brush -> the classes it stands for, from an off-the-shelf spec."""
    mapping = spec.get("class_mapping") or {}
    return {
        generic_name(src): list(t)
        for src, t in mapping.items()
        if not isinstance(t, str) and len(t) > 1
    }


@dataclass(frozen=True)
class PreLabel:
    """One method's pre-annotation of one image.

    Attributes:
        method: One of `METHODS`.
        mask: (H, W) uint8 index into `labels`; `UNLABELED` is left blank.
        labels: The brush label of each index: a class name, a generic brush
            (`aeroplane?`) or `segment?`.
        confidence: In [0, 1]: the model's mean max-probability, or for SLIC the
            mean fraction of each superpixel that agrees with its vote.
    """

    method: str
    mask: np.ndarray
    labels: tuple[str, ...]
    confidence: float


def class_mask(pre: PreLabel, class_map: ClassMap) -> np.ndarray:
    """The pre-annotation on the class map; generic and blank pixels are ignored."""
    lut = np.full(256, class_map.ignore_index, dtype=np.uint8)
    for i, label in enumerate(pre.labels):
        if label in class_map.names:
            lut[i] = class_map.id_of(label)
    return lut[pre.mask]


# -- SLIC ------------------------------------------------------------------------


def slic_segments(
    image: np.ndarray,
    *,
    n_segments: int = 300,
    compactness: float = 10.0,
    max_num_iter: int = 5,
) -> np.ndarray:
    """(H, W) int32 superpixel ids 0..S-1 of an (H, W, 3) uint8 image.

    `max_num_iter` k-means iterations: 5 instead of scikit-image's 10 keeps a
    480x360 image under 100 ms on one core (measured by
    benchmarks/pseudo_labels.py) with superpixels that have mostly settled.
    """
    from skimage.segmentation import slic

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    seg = slic(
        image,
        n_segments=int(n_segments),
        compactness=float(compactness),
        max_num_iter=int(max_num_iter),
        start_label=0,
        channel_axis=-1,
    )
    return seg.astype(np.int32)


def superpixel_vote(
    segments: np.ndarray, mask: np.ndarray, *, ignore_index: int = 255
) -> tuple[np.ndarray, float]:
    """Each superpixel takes the majority value of `mask` inside it.

    Returns:
        (voted, purity): the (H, W) voted mask (a superpixel that is all
        `ignore_index` stays so), and the pixel-weighted fraction of pixels that
        agree with their superpixel's vote.
    """
    if segments.shape != mask.shape:
        raise ValueError(
            f"segments {segments.shape} and mask {mask.shape} differ in size"
        )
    seg = segments.ravel()
    values = mask.ravel().astype(np.int64)
    keep = values != ignore_index
    n_seg = int(seg.max()) + 1
    counts = np.zeros((n_seg, 256), dtype=np.int64)
    np.add.at(counts, (seg[keep], values[keep]), 1)
    winner = counts.argmax(1).astype(np.uint8)
    winner[counts.sum(1) == 0] = ignore_index
    agree = counts.max(1).sum()
    purity = float(agree / max(int(keep.sum()), 1))
    return winner[segments], purity


def slic_prelabel(
    image: np.ndarray,
    *,
    class_names: Sequence[str],
    model_mask: np.ndarray | None = None,
    n_segments: int = 300,
    compactness: float = 10.0,
    max_num_iter: int = 5,
) -> PreLabel:
    """SLIC pre-annotation: voted by `model_mask` (class indices), or bare regions.

    Without a model, each superpixel is one `segment?` region (index = its id,
    capped at 254 superpixels) and the confidence is 0.
    """
    segments = slic_segments(
        image,
        n_segments=n_segments,
        compactness=compactness,
        max_num_iter=max_num_iter,
    )
    if model_mask is None:
        seg = np.minimum(segments, UNLABELED - 1).astype(np.uint8)
        n = int(seg.max()) + 1
        return PreLabel("slic", seg, (SEGMENT_LABEL,) * n, 0.0)
    voted, purity = superpixel_vote(segments, model_mask, ignore_index=UNLABELED)
    return PreLabel("slic", voted, tuple(class_names), purity)


# -- models ----------------------------------------------------------------------


def model_prelabel(
    predictor: Predictor, images: Sequence[np.ndarray], *, method: str
) -> list[PreLabel]:
    """Pre-annotations from a predictor: its mask, confidence = mean max-prob."""
    preds = predictor.predict(images)
    return [
        PreLabel(
            method,
            p.mask,
            tuple(predictor.class_names),
            float(p.scores["mean_max_prob"]),
        )
        for p in preds
    ]


class _Logits(nn.Module):
    """torchvision segmentation models return {"out": logits}; the predictor
    wants the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out["out"] if isinstance(out, Mapping) else out


@dataclass(frozen=True)
class OffTheShelf:
    """A loaded off-the-shelf model and how its classes map onto ours.

    Attributes:
        predictor: Runs the model (its output classes are `categories`).
        categories: The source model's class names, in output order.
        lut: (len(categories),) index into `labels` per source class, or
            `UNLABELED` for a source class mapped to nothing.
        labels: Our class names, then the generic brushes.
        source: Where the weights came from.
    """

    predictor: Predictor
    categories: tuple[str, ...]
    lut: np.ndarray
    labels: tuple[str, ...]
    source: str

    def prelabel(self, images: Sequence[np.ndarray]) -> list[PreLabel]:
        out = []
        for pre in model_prelabel(self.predictor, images, method="off_the_shelf"):
            out.append(
                PreLabel(pre.method, self.lut[pre.mask], self.labels, pre.confidence)
            )
        return out


def class_mapping(
    categories: Sequence[str],
    mapping: Mapping[str, str | Sequence[str]],
    class_names: Sequence[str],
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Maps source classes onto ours.

    Args:
        categories: The source classes, in output order.
        mapping: source class -> one of our classes, or a list of ours (a
            generic brush `<source>?`). Source classes not named are left blank.
        class_names: Our classes.

    Returns:
        (lut, labels): `lut[source index]` indexes `labels` (our classes, then
        the generic brushes) or is `UNLABELED`.

    Raises:
        ValueError: a source class or target class that does not exist.
    """
    names = list(class_names)
    unknown = sorted(set(mapping) - set(categories))
    if unknown:
        raise ValueError(
            f"off_the_shelf.class_mapping names source class(es) {unknown} the "
            f"model does not have; it has {list(categories)}"
        )
    labels = list(names)
    lut = np.full(len(categories), UNLABELED, dtype=np.uint8)
    for i, source in enumerate(categories):
        if source not in mapping:
            continue
        target = mapping[source]
        targets = [target] if isinstance(target, str) else list(target)
        bad = [t for t in targets if t not in names]
        if bad or not targets:
            raise ValueError(
                f"off_the_shelf.class_mapping[{source!r}] -> {targets}: "
                f"{bad or 'empty'} not among our classes {names}"
            )
        if len(targets) == 1:
            lut[i] = names.index(targets[0])
        else:
            labels.append(generic_name(source))
            lut[i] = len(labels) - 1
    if len(labels) >= UNLABELED:
        raise ValueError(f"too many brush labels ({len(labels)})")
    return lut, tuple(labels)


def _torchvision_builder(architecture: str) -> Any:
    import torchvision.models.segmentation as seg

    if architecture not in _ARCHITECTURES:
        raise ValueError(
            f"off_the_shelf.architecture {architecture!r} is not supported; "
            f"valid: {sorted(_ARCHITECTURES)}"
        )
    return getattr(seg, architecture), getattr(seg, _ARCHITECTURES[architecture])


def load_off_the_shelf(
    spec: Mapping[str, Any], class_names: Sequence[str]
) -> OffTheShelf | None:
    """Loads the configured off-the-shelf checkpoint, or None when there is none.

    `spec` (the `pseudo_labelling.off_the_shelf` parameters):
        architecture: a torchvision segmentation builder, e.g.
            `deeplabv3_mobilenet_v3_large`.
        checkpoint: a file saved by `save_checkpoint` (state_dict + categories)
            or a bare state_dict (then `categories` is needed). Empty: the
            torchvision weights `weights` (e.g. `COCO_WITH_VOC_LABELS_V1`) from
            the local torch hub cache, never downloaded.
        categories: source class names, when the checkpoint does not carry them.
        class_mapping: source class -> our class or list of ours.
        input_size: [H, W] the model runs at (empty: each image's own size).
    """
    arch = str(spec.get("architecture", "deeplabv3_mobilenet_v3_large"))
    builder, weights_enum = _torchvision_builder(arch)
    checkpoint = spec.get("checkpoint")
    categories = spec.get("categories")
    mean, std = _IMAGENET
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            log.warning("off_the_shelf: checkpoint %s not found; method skipped", path)
            return None
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob.get("state_dict", blob)
        categories = blob.get("categories", categories)
        mean = tuple(blob.get("mean", mean))
        std = tuple(blob.get("std", std))
        source = str(path)
    else:
        name = str(spec.get("weights") or "COCO_WITH_VOC_LABELS_V1")
        try:
            weights = weights_enum[name]
        except KeyError:
            raise ValueError(
                f"off_the_shelf.weights {name!r} unknown for {arch}; "
                f"valid: {[w.name for w in weights_enum]}"
            ) from None
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file():
            log.warning(
                "off_the_shelf: no checkpoint given and %s is not in the torch "
                "cache (%s); method skipped (nothing is downloaded)",
                weights,
                cached,
            )
            return None
        state = torch.load(cached, map_location="cpu", weights_only=True)
        categories = categories or weights.meta["categories"]
        source = f"torchvision:{weights}"
    if not categories:
        raise ValueError(
            "off_the_shelf: the checkpoint has no categories; set "
            "pseudo_labelling.off_the_shelf.categories"
        )
    model = builder(
        weights=None,
        weights_backbone=None,
        num_classes=len(categories),
        aux_loss=any(k.startswith("aux_classifier") for k in state),
    )
    model.load_state_dict(state)
    lut, labels = class_mapping(
        categories, spec.get("class_mapping") or {}, class_names
    )
    size = spec.get("input_size")
    predictor = Predictor(
        _Logits(model),
        class_names=categories,
        mean=mean,
        std=std,
        input_size=tuple(size) if size else None,
        batch_size=int(spec.get("batch_size", 8)),
    )
    log.info("off_the_shelf: %s (%s), %d classes", arch, source, len(categories))
    return OffTheShelf(predictor, tuple(categories), lut, labels, source)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    categories: Sequence[str],
    mean: Sequence[float] = _IMAGENET[0],
    std: Sequence[float] = _IMAGENET[1],
) -> None:
    """Saves a torchvision segmentation model for `load_off_the_shelf`."""
    torch.save(
        {
            "state_dict": model.state_dict(),
            "categories": list(categories),
            "mean": list(mean),
            "std": list(std),
        },
        path,
    )


# -- scores ----------------------------------------------------------------------


def _concrete(pre: PreLabel, class_map: ClassMap) -> np.ndarray:
    """(H, W) class ids, with a generic brush kept as -(1 + its index)."""
    lut = np.full(256, -1000, dtype=np.int32)
    for i, label in enumerate(pre.labels):
        lut[i] = class_map.id_of(label) if label in class_map.names else -(1 + i)
    return lut[pre.mask]


def agreement(
    a: PreLabel,
    b: PreLabel,
    class_map: ClassMap,
    *,
    generic_members: Mapping[str, Sequence[str]] | None = None,
) -> float:
    """Fraction of pixels, labelled by both, on which two pre-annotations agree.

    A generic brush agrees with any class it stands for (`generic_members`:
    generic label -> our classes).
    """
    if a.mask.shape != b.mask.shape:
        raise ValueError(f"masks differ in size: {a.mask.shape} vs {b.mask.shape}")
    ca, cb = _concrete(a, class_map), _concrete(b, class_map)
    both = (a.mask != UNLABELED) & (b.mask != UNLABELED)
    if not both.any():
        return 0.0
    same = ca == cb
    for pre, mine, other in ((a, ca, cb), (b, cb, ca)):
        for i, label in enumerate(pre.labels):
            members = (generic_members or {}).get(label)
            if not members:
                continue
            ids = [class_map.id_of(m) for m in members]
            same |= (mine == -(1 + i)) & np.isin(other, ids)
    return float((same & both).sum() / both.sum())


def quality(confidence: float, agreements: Sequence[float]) -> float:
    """A pre-annotation's quality: its confidence, averaged with its mean
    agreement with the other methods when there are any."""
    if not agreements:
        return float(confidence)
    return float(0.5 * confidence + 0.5 * np.mean(agreements))


def train_stand_in(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    categories: Sequence[str],
    architecture: str = "lraspp_mobilenet_v3_large",
    steps: int = 50,
    size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """Trains a small torchvision model to stand in for an off-the-shelf one.

    Where no COCO/VOC weights can be had (no network), this gives a real
    checkpoint with its own class list (e.g. background/aircraft) to exercise
    the off-the-shelf method. `masks` hold indices into `categories`.
    """
    import torch.nn.functional as F

    builder, _ = _torchvision_builder(architecture)
    torch.manual_seed(seed)
    model = builder(weights=None, weights_backbone=None, num_classes=len(categories))
    mean = torch.tensor(_IMAGENET[0]).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET[1]).view(1, 3, 1, 1)
    x = torch.stack(
        [torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images]
    )
    y = torch.stack([torch.from_numpy(m.astype(np.int64)) for m in masks])
    x = F.interpolate((x - mean) / std, size=(size, size), mode="bilinear")
    y = F.interpolate(y[:, None].float(), size=(size, size), mode="nearest")[:, 0]
    # Inverse-frequency class weights: objects are a few % of the pixels.
    counts = torch.bincount(y[y != UNLABELED].long(), minlength=len(categories))
    weight = (counts.sum() / counts.clamp_min(1).float()) ** 0.5
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(int(steps)):
        idx = torch.randint(len(x), (min(8, len(x)),), generator=gen)
        out = model(x[idx])["out"]
        loss = F.cross_entropy(
            out, y[idx].long(), weight=weight / weight.sum(), ignore_index=UNLABELED
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    # MobileNetV3's BatchNorm momentum (0.01) is far too slow for a short run:
    # recompute the running statistics over the data before eval.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average
        for start in range(0, len(x), 8):
            model(x[start : start + 8])
    return model.eval()
