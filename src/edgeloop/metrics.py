"""Segmentation metrics: one confusion-matrix implementation, all else derived.

Every score (per-class IoU and Dice, their means, pixel accuracy, the mean IoU
of a few named classes) is a function of a `(K, K)` confusion matrix, rows =
truth and columns = prediction. Keeping per-image matrices `(N, K, K)` around
makes slices and the bootstrap cheap: a slice's matrix is the sum of its
images' matrices, and a resample is a weighted sum of them.

A class absent from both truth and prediction has an undefined IoU and Dice
(`nan`); means skip it. A class predicted but absent from truth scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.checks import check_int

IGNORE_INDEX = 255
OVERALL_SLICE = "all"
METRICS = ("miou", "mdice", "pixel_accuracy", "iou:<class>[,<class>...]")


def _as_numpy(x: Any) -> np.ndarray:
    """Converts a numpy array, torch tensor or nested sequence to numpy."""
    # Duck-typed so torch stays an optional, lazily used dependency.
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _nan_to_singleton(x: float) -> float:
    """Returns `float(x)`, with every nan as the one `math.nan` object.

    Tuple (and so dataclass) equality checks identity before `==`, so scores
    that carry the same nan object compare equal, and a to_dict/from_dict
    round trip is exactly equal.
    """
    x = float(x)
    return math.nan if math.isnan(x) else x


def _check_num_classes(num_classes: int, ignore_index: int) -> int:
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    if 0 <= ignore_index < num_classes:
        # An ignore index that is also a class id would silently drop a class.
        raise ValueError(
            f"ignore_index must be outside [0, {num_classes}), got {ignore_index}"
        )
    return int(num_classes)


def _check_labels(
    target: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int
) -> None:
    if target.shape != pred.shape:
        raise ValueError(
            f"target and pred must have the same shape, got target {target.shape} "
            f"and pred {pred.shape}"
        )
    for name, arr in (("target", target), ("pred", pred)):
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(
            f"pred values must be in [0, {num_classes}), got range "
            f"[{pred.min()}, {pred.max()}] (shape {pred.shape})"
        )
    kept = target[target != ignore_index]
    if kept.size and (kept.min() < 0 or kept.max() >= num_classes):
        raise ValueError(
            f"target values must be in [0, {num_classes}) or the ignore index "
            f"{ignore_index}, got range [{kept.min()}, {kept.max()}] "
            f"(shape {target.shape})"
        )


def confusion_matrix(
    target: Any, pred: Any, num_classes: int, *, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Counts (truth, prediction) pixel pairs.

    Args:
        target: Integer truth labels, any shape (numpy or torch).
        pred: Integer predicted labels, the same shape as `target`.
        num_classes: K, the number of classes.
        ignore_index: Pixels whose target equals it are skipped.

    Returns:
        `(K, K)` int64 matrix, rows = truth, columns = prediction.

    Raises:
        ValueError: Shapes differ, labels are not integers, a prediction is
            outside `[0, K)`, or a kept target is outside `[0, K)`.
    """
    k = _check_num_classes(num_classes, ignore_index)
    t, p = _as_numpy(target), _as_numpy(pred)
    _check_labels(t, p, k, ignore_index)
    keep = t != ignore_index
    # int64 before K * t: uint8 labels would otherwise overflow.
    codes = k * t[keep].astype(np.int64) + p[keep].astype(np.int64)
    return np.bincount(codes, minlength=k * k).reshape(k, k)


def per_image_confusion(
    targets: Any,
    preds: Any,
    num_classes: int,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """One confusion matrix per image.

    Args:
        targets: `(N, H, W)` truth labels, or a sequence of N `(H_i, W_i)`
            arrays of varying sizes (numpy or torch).
        preds: Predictions matching `targets` image by image.
        num_classes: K.
        ignore_index: Target value to skip.

    Returns:
        `(N, K, K)` int64.

    Raises:
        ValueError: The numbers of images differ, or as `confusion_matrix`.
    """
    k = _check_num_classes(num_classes, ignore_index)
    stacked = not isinstance(targets, list | tuple) and not isinstance(
        preds, list | tuple
    )
    if stacked:
        t, p = _as_numpy(targets), _as_numpy(preds)
        if t.ndim != 3:
            # A lone (H, W) map would otherwise pass as H one-row images.
            raise ValueError(f"targets must be (N, H, W), got shape {t.shape}")
        _check_labels(t, p, k, ignore_index)
        n = t.shape[0]
        t, p = t.reshape(n, -1).astype(np.int64), p.reshape(n, -1).astype(np.int64)
        keep = t != ignore_index
        # One bincount for the whole batch: offset each image by n * K * K.
        codes = (np.arange(n, dtype=np.int64)[:, None] * k * k + k * t + p)[keep]
        return np.bincount(codes, minlength=n * k * k).reshape(n, k, k)
    targets, preds = list(targets), list(preds)
    if len(targets) != len(preds):
        raise ValueError(
            f"targets and preds must hold as many images, got {len(targets)} "
            f"and {len(preds)}"
        )
    out = np.zeros((len(targets), k, k), dtype=np.int64)
    for i, (t, p) in enumerate(zip(targets, preds, strict=True)):
        out[i] = confusion_matrix(t, p, k, ignore_index=ignore_index)
    return out


def _check_matrix(matrix: Any, name: str = "matrix") -> np.ndarray:
    m = _as_numpy(matrix)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"{name} must be (..., K, K), got shape {m.shape}")
    return m


def _per_class(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU and Dice of `(..., K, K)` matrices, each `(..., K)`.

    nan where the class is absent from truth and prediction (union == 0).
    """
    m = matrix.astype(np.float64, copy=False)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    fn = m.sum(axis=-1) - tp
    fp = m.sum(axis=-2) - tp
    union = tp + fp + fn
    defined = union > 0
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=defined)
    dice = np.divide(
        2 * tp, 2 * tp + fp + fn, out=np.full_like(tp, np.nan), where=defined
    )
    return iou, dice


def _nanmean(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis, skipping nan; nan (no warning) if all nan."""
    valid = ~np.isnan(x)
    count = valid.sum(axis=-1)
    total = np.where(valid, x, 0.0).sum(axis=-1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def _pixel_accuracy(matrix: np.ndarray) -> np.ndarray:
    m = matrix.astype(np.float64, copy=False)
    correct = np.trace(m, axis1=-2, axis2=-1)
    total = m.sum(axis=(-2, -1))
    return np.divide(correct, total, out=np.full(total.shape, np.nan), where=total > 0)


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one confusion matrix.

    Attributes:
        iou: Per-class IoU; nan when the class is in neither truth nor
            prediction.
        dice: Per-class Dice, 2TP / (2TP + FP + FN); nan likewise.
        miou: Mean of the defined IoUs (nan if none).
        mdice: Mean of the defined Dice scores (nan if none).
        pixel_accuracy: Correct pixels / pixels (nan if no pixels).
        n_pixels: Pixels counted (ignored pixels excluded).
    """

    iou: tuple[float, ...]
    dice: tuple[float, ...]
    miou: float
    mdice: float
    pixel_accuracy: float
    n_pixels: int

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> SegmentationScores:
        """Scores a `(K, K)` confusion matrix."""
        m = _check_matrix(matrix)
        if m.ndim != 2:
            raise ValueError(f"matrix must be (K, K), got shape {m.shape}")
        iou, dice = _per_class(m)
        return cls(
            iou=tuple(_nan_to_singleton(v) for v in iou),
            dice=tuple(_nan_to_singleton(v) for v in dice),
            miou=_nan_to_singleton(_nanmean(iou)),
            mdice=_nan_to_singleton(_nanmean(dice)),
            pixel_accuracy=_nan_to_singleton(_pixel_accuracy(m)),
            n_pixels=int(m.sum()),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: nan becomes None."""
        return {
            "iou": [_json_float(v) for v in self.iou],
            "dice": [_json_float(v) for v in self.dice],
            "miou": _json_float(self.miou),
            "mdice": _json_float(self.mdice),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "n_pixels": self.n_pixels,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SegmentationScores:
        """Inverse of `to_dict`: None becomes nan."""
        return cls(
            iou=tuple(_float_or_nan(v) for v in d["iou"]),
            dice=tuple(_float_or_nan(v) for v in d["dice"]),
            miou=_float_or_nan(d["miou"]),
            mdice=_float_or_nan(d["mdice"]),
            pixel_accuracy=_float_or_nan(d["pixel_accuracy"]),
            n_pixels=int(d["n_pixels"]),
        )


def _json_float(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _float_or_nan(x: float | None) -> float:
    return math.nan if x is None else _nan_to_singleton(x)


def _object_ids(objects: Sequence[int], k: int) -> list[int]:
    ids = sorted({int(i) for i in objects})
    if not ids or ids[0] < 0 or ids[-1] >= k:
        raise ValueError(
            f"objects must be class ids in [0, {k}), at least one, got {list(objects)}"
        )
    return ids


def object_matrix(matrix: Any, objects: Sequence[int]) -> np.ndarray:
    """Collapses `(..., K, K)` matrices to the other classes against `objects`.

    Row and column 0 are the classes not in `objects` merged, 1 the object
    classes merged: how well a model finds objects, whatever class it gives
    them (and whatever it calls the rest).
    """
    m = _check_matrix(matrix)
    k = m.shape[-1]
    obj = np.zeros(k, dtype=bool)
    obj[_object_ids(objects, k)] = True
    if obj.all():
        raise ValueError("objects must leave at least one class out")
    out = np.empty((*m.shape[:-2], 2, 2), dtype=m.dtype)
    for row, rows in enumerate((~obj, obj)):
        for col, cols in enumerate((~obj, obj)):
            out[..., row, col] = m[..., rows, :][..., :, cols].sum(axis=(-2, -1))
    return out


def right_class_matrix(matrix: Any, objects: Sequence[int]) -> np.ndarray:
    """The matrix if every pixel found as some object had the right class.

    Confusions among the `objects` classes move onto the diagonal; objects
    missed (predicted as another class) or invented (truly another class) stay.
    The gap between its scores and the real ones is what confusing the object
    classes with each other costs.
    """
    m = _check_matrix(matrix).copy()
    ids = _object_ids(objects, m.shape[-1])
    for i in ids:
        others = [j for j in ids if j != i]
        m[..., i, i] += m[..., i, others].sum(axis=-1)
        m[..., i, others] = 0
    return m


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches (torchvision-reference style).

    Example:
        >>> cm = ConfusionMatrix(3)
        >>> cm.update(target_batch, pred_batch)  # (B, H, W) numpy or torch
        >>> cm.scores().miou
    """

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX):
        self.num_classes = _check_num_classes(num_classes, ignore_index)
        self.ignore_index = ignore_index
        self._matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, target: Any, pred: Any) -> None:
        """Adds a batch `(B, H, W)` or a single image `(H, W)`."""
        self._matrix += confusion_matrix(
            target, pred, self.num_classes, ignore_index=self.ignore_index
        )

    def reset(self) -> None:
        """Zeroes the matrix."""
        self._matrix[...] = 0

    @property
    def matrix(self) -> np.ndarray:
        """`(K, K)` int64, a copy (so callers cannot corrupt the running sum)."""
        return self._matrix.copy()

    def scores(self) -> SegmentationScores:
        """Scores of the accumulated matrix."""
        return SegmentationScores.from_matrix(self._matrix)


def metric_fn(
    metric: str, class_names: Sequence[str]
) -> Callable[[np.ndarray], float | np.ndarray]:
    """The scalar metric that drives the sweep and the gate.

    Args:
        metric: `"miou"`, `"mdice"`, `"pixel_accuracy"`, or
            `"iou:<class>[,<class>...]"` (mean IoU of the named classes only,
            for when some classes matter most).
        class_names: The K class names, in id order.

    Returns:
        `f(matrix)`: a float for a `(K, K)` matrix, a float array of shape
        `(...)` for stacked `(..., K, K)` matrices (vectorised, so a bootstrap
        scores all its resamples in one call).

    Raises:
        ValueError: Unknown metric or class (the message lists the valid ones).
    """
    names = list(class_names)
    k = len(names)

    if metric == "miou":

        def score(m: np.ndarray) -> np.ndarray:
            return _nanmean(_per_class(m)[0])

    elif metric == "mdice":

        def score(m: np.ndarray) -> np.ndarray:
            return _nanmean(_per_class(m)[1])

    elif metric == "pixel_accuracy":
        score = _pixel_accuracy
    elif isinstance(metric, str) and metric.startswith("iou:"):
        wanted = [c.strip() for c in metric[len("iou:") :].split(",") if c.strip()]
        unknown = [c for c in wanted if c not in names]
        if not wanted or unknown:
            raise ValueError(
                f"metric {metric!r} names unknown classes {unknown or '(none)'}; "
                f"valid classes: {names}"
            )
        idx = np.array([names.index(c) for c in dict.fromkeys(wanted)])

        def score(m: np.ndarray) -> np.ndarray:
            return _nanmean(_per_class(m)[0][..., idx])

    else:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {list(METRICS)}")

    def fn(matrix: np.ndarray) -> float | np.ndarray:
        m = _check_matrix(matrix)
        if m.shape[-1] != k:
            raise ValueError(
                f"matrix must be (..., {k}, {k}) for {k} classes, got shape {m.shape}"
            )
        out = score(m)
        return float(out) if np.ndim(out) == 0 else out

    return fn


@dataclass(frozen=True)
class SliceResult:
    """The score of one slice.

    Attributes:
        slice: Slice name, e.g. `"cond:night"`.
        n_images: Images of the slice that were evaluated.
        score: The chosen metric on the slice's summed matrix.
        scores: All scores of that matrix.
        insufficient: True when `n_images < min_images`: reported, never gated.
    """

    slice: str
    n_images: int
    score: float
    scores: SegmentationScores
    insufficient: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: nan becomes None."""
        return {
            "slice": self.slice,
            "n_images": self.n_images,
            "score": _json_float(self.score),
            "scores": self.scores.to_dict(),
            "insufficient": self.insufficient,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SliceResult:
        """Inverse of `to_dict`."""
        return cls(
            slice=str(d["slice"]),
            n_images=int(d["n_images"]),
            score=_float_or_nan(d["score"]),
            scores=SegmentationScores.from_dict(d["scores"]),
            insufficient=bool(d["insufficient"]),
        )


def slice_indices(
    image_ids: Sequence[str],
    slices: pd.DataFrame,
    *,
    overall_slice: str = OVERALL_SLICE,
) -> dict[str, np.ndarray]:
    """Which of the evaluated images each slice holds.

    Args:
        image_ids: The N evaluated images, in the order of the per-image
            matrices.
        slices: Long table with columns `image_id` and `slice`.
        overall_slice: Name of the slice over every image; added unless the
            table already has it.

    Returns:
        Slice name -> sorted int indices into `image_ids`; the overall slice
        first, then the others by name. Slices with no evaluated image are
        left out (an empty slice has no score to report).

    Raises:
        ValueError: Duplicate image ids or missing columns.
    """
    ids = [str(i) for i in image_ids]
    position = {image_id: i for i, image_id in enumerate(ids)}
    if len(position) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"image_ids has duplicates: {dupes[:10]}")
    missing = {"image_id", "slice"} - set(slices.columns)
    if missing:
        raise ValueError(
            f"slices must have columns image_id and slice, missing {sorted(missing)} "
            f"(got {list(slices.columns)})"
        )
    pos = slices["image_id"].astype(str).map(position)
    table = pd.DataFrame({"slice": slices["slice"].astype(str), "pos": pos})
    table = table.dropna().drop_duplicates()
    out: dict[str, np.ndarray] = {}
    if overall_slice not in set(table["slice"]) and ids:
        out[overall_slice] = np.arange(len(ids))
    for name, group in table.groupby("slice", sort=True):
        out[str(name)] = np.sort(group["pos"].to_numpy(dtype=np.int64))
    if overall_slice in out:
        # Overall first: it is what readers (and the gate) look at first.
        out = {overall_slice: out.pop(overall_slice), **out}
    return out


def _check_per_image(per_image: Any, name: str = "per_image") -> np.ndarray:
    m = _as_numpy(per_image)
    if m.ndim != 3 or m.shape[1] != m.shape[2]:
        raise ValueError(f"{name} must be (N, K, K), got shape {m.shape}")
    return m


def evaluate_slices(
    per_image: np.ndarray,
    image_ids: Sequence[str],
    slices: pd.DataFrame,
    *,
    metric: str,
    class_names: Sequence[str],
    min_images: int = 20,
    overall_slice: str = OVERALL_SLICE,
) -> dict[str, SliceResult]:
    """Scores every slice by summing its images' confusion matrices.

    Args:
        per_image: `(N, K, K)` per-image confusion matrices.
        image_ids: The N image ids, in the same order.
        slices: Long table `(image_id, slice)`; rows of other images are
            ignored.
        metric: See `metric_fn`.
        class_names: The K class names.
        min_images: Slices with fewer images are flagged `insufficient`.
        overall_slice: The slice over every image, always included.

    Returns:
        Slice name -> result, overall slice first; empty slices are skipped.

    Raises:
        ValueError: Bad shapes, ids, metric or classes.
    """
    m = _check_per_image(per_image)
    if len(image_ids) != m.shape[0]:
        raise ValueError(
            f"image_ids must have one id per matrix: {len(image_ids)} ids for "
            f"per_image of shape {m.shape}"
        )
    if m.shape[1] != len(class_names):
        raise ValueError(
            f"per_image must be (N, {len(class_names)}, {len(class_names)}) for "
            f"class_names {list(class_names)}, got shape {m.shape}"
        )
    fn = metric_fn(metric, class_names)
    out: dict[str, SliceResult] = {}
    for name, idx in slice_indices(
        image_ids, slices, overall_slice=overall_slice
    ).items():
        total = m[idx].sum(axis=0)
        out[name] = SliceResult(
            slice=name,
            n_images=len(idx),
            score=_nan_to_singleton(fn(total)),
            scores=SegmentationScores.from_matrix(total),
            insufficient=len(idx) < min_images,
        )
    return out
