"""Slices, stable splits, class balance and sampling weights.

A slice is a named predicate over an image's effective label; its name carries a
prefix (`class:`, `size:`, `cond:`, `iter:`, `edge:`; `feedback:` is reserved
for later). Each family below is one predicate with its docstring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.classmap import ClassMap

SPLITS = ("train", "val", "test")
SLICE_PREFIXES = ("all", "class", "size", "cond", "iter", "edge", "feedback")
SAMPLING_SCHEMES = {
    "uniform": 0.0,
    "sqrt_inverse_frequency": 0.5,
    "inverse_frequency": 1.0,
}


@dataclass(frozen=True)
class SlicingConfig:
    """The `slicing` parameters, checked once at the node boundary."""

    families: tuple[str, ...] = ("all", "class", "size", "cond", "iter", "edge")
    size_buckets: tuple[tuple[str, float, float], ...] = (
        ("small", 0.0, 0.005),
        ("medium", 0.005, 0.05),
        ("large", 0.05, 1.0),
    )
    min_class_pixels: int = 1
    split_ratios: tuple[tuple[str, float], ...] = (
        ("train", 0.7),
        ("val", 0.15),
        ("test", 0.15),
    )
    # Images added after iteration 0 (the `iter:` and `edge:` slices) use their
    # own ratios, so those slices reach enough test images quickly.
    new_data_ratios: tuple[tuple[str, float], ...] = (
        ("train", 0.5),
        ("val", 0.1),
        ("test", 0.4),
    )
    split_salt: str = "edgeloop"
    sampling_scheme: str = "inverse_frequency"
    sampling_by: tuple[str, ...] = ("class", "cond")
    max_weight: float = 10.0
    # Train images of the slices the last gate found regressed weigh this many
    # times more in the next training (1: no boost).
    regressed_boost: float = 2.0
    # The bugs the `edge:` family is built from: (tag, seed image ids) each.
    # Not a parameter: the slicing node fills it from the `edge_cases` table.
    edge_cases: tuple[tuple[str, frozenset[str]], ...] = ()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SlicingConfig:
        families = tuple(params.get("families", cls.families))
        unknown = [f for f in families if f not in SLICE_PREFIXES]
        if unknown:
            raise ValueError(
                f"slicing.families has unknown {unknown}; valid: {list(SLICE_PREFIXES)}"
            )
        buckets = (
            tuple(
                (str(name), float(lo), float(hi))
                for name, (lo, hi) in (params.get("size_buckets") or {}).items()
            )
            or cls.size_buckets
        )
        for name, lo, hi in buckets:
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(
                    f"slicing.size_buckets.{name} must satisfy 0 <= lo < hi <= 1, "
                    f"got [{lo}, {hi}]"
                )
        splits = params.get("splits") or {}
        ratios = _ratios(splits, "ratios", cls.split_ratios)
        new_ratios = _ratios(splits, "new_data_ratios", cls.new_data_ratios)
        sampling = params.get("sampling") or {}
        scheme = str(sampling.get("scheme", cls.sampling_scheme))
        if scheme not in SAMPLING_SCHEMES:
            raise ValueError(
                f"slicing.sampling.scheme {scheme!r} is not one of "
                f"{list(SAMPLING_SCHEMES)}"
            )
        boost = sampling.get("regressed_boost", cls.regressed_boost)
        if (
            isinstance(boost, bool)
            or not isinstance(boost, int | float)
            or not (1.0 <= boost < float("inf"))
        ):
            raise ValueError(
                f"slicing.sampling.regressed_boost must be a number >= 1, got {boost!r}"
            )
        return cls(
            families=families,
            size_buckets=buckets,
            min_class_pixels=int(params.get("min_class_pixels", cls.min_class_pixels)),
            split_ratios=ratios,
            new_data_ratios=new_ratios,
            split_salt=str(splits.get("salt", cls.split_salt)),
            sampling_scheme=scheme,
            sampling_by=tuple(sampling.get("by", cls.sampling_by)),
            max_weight=float(sampling.get("max_weight", cls.max_weight)),
            regressed_boost=float(boost),
        )


def _ratios(
    splits: Mapping[str, Any], key: str, default: tuple[tuple[str, float], ...]
) -> tuple[tuple[str, float], ...]:
    ratios = tuple((str(k), float(v)) for k, v in (splits.get(key) or {}).items())
    ratios = ratios or default
    if any(k not in SPLITS for k, _ in ratios) or any(v < 0 for _, v in ratios):
        raise ValueError(
            f"slicing.splits.{key} must map {SPLITS} to >= 0, got {ratios}"
        )
    total = sum(v for _, v in ratios)
    if not np.isclose(total, 1.0):
        raise ValueError(f"slicing.splits.{key} must sum to 1, got {total:.4f}")
    return ratios


# -- slice predicates ---------------------------------------------------------
# Each takes one effective-label row and yields the slice names it belongs to.
SliceFn = Callable[[Mapping[str, Any], ClassMap, SlicingConfig], Iterator[str]]


def _all(row: Mapping[str, Any], cm: ClassMap, cfg: SlicingConfig) -> Iterator[str]:
    """Every labelled image."""
    yield "all"


def _class(row: Mapping[str, Any], cm: ClassMap, cfg: SlicingConfig) -> Iterator[str]:
    """`class:<name>`: the class covers at least `min_class_pixels` pixels."""
    for name, n in zip(cm.names, row["class_pixels"], strict=True):
        if n >= cfg.min_class_pixels:
            yield f"class:{name}"


def _size(row: Mapping[str, Any], cm: ClassMap, cfg: SlicingConfig) -> Iterator[str]:
    """`size:<bucket>`: some object's area / image area falls in the bucket."""
    fracs = np.asarray(row["object_fracs"], dtype=float)
    for name, lo, hi in cfg.size_buckets:
        if ((fracs >= lo) & (fracs < hi if hi < 1.0 else fracs <= hi)).any():
            yield f"size:{name}"


def _cond(row: Mapping[str, Any], cm: ClassMap, cfg: SlicingConfig) -> Iterator[str]:
    """`cond:<tag>`: a condition tag given with the label."""
    for tag in row["condition_tags"]:
        yield f"cond:{tag}"


def _iter(row: Mapping[str, Any], cm: ClassMap, cfg: SlicingConfig) -> Iterator[str]:
    """`iter:<k>`: the iteration the image's first label was added in."""
    yield f"iter:{int(row['first_iteration'])}"


def _edge(row: Mapping[str, Any], cm: ClassMap, cfg: SlicingConfig) -> Iterator[str]:
    """`edge:<tag>`: a bug's tag is among the label's condition tags, or the
    image is one of the bug's seeds. Only tags that have a bug get a slice."""
    tags = set(row["condition_tags"])
    for tag, seeds in cfg.edge_cases:
        if tag in tags or row["image_id"] in seeds:
            yield f"edge:{tag}"


PREDICATES: dict[str, SliceFn] = {
    "all": _all,
    "class": _class,
    "size": _size,
    "cond": _cond,
    "iter": _iter,
    "edge": _edge,
}


def build_slices(
    labels: pd.DataFrame, cm: ClassMap, cfg: SlicingConfig
) -> pd.DataFrame:
    """The long slice table (image_id, slice) for effective labels.

    Args:
        labels: One effective label per image, with `first_iteration`.
    """
    rows = []
    fns = [PREDICATES[f] for f in cfg.families if f in PREDICATES]
    for row in labels.to_dict("records"):
        for fn in fns:
            rows.extend((row["image_id"], name) for name in fn(row, cm, cfg))
    out = pd.DataFrame(rows, columns=["image_id", "slice"]).drop_duplicates()
    return out.sort_values(["slice", "image_id"], kind="stable").reset_index(drop=True)


# -- splits -----------------------------------------------------------------


def hash_unit(image_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the image id: its split never moves."""
    digest = hashlib.sha256(f"{salt}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(image_id: str, cfg: SlicingConfig, *, new_data: bool = False) -> str:
    """The split of an image without an official one, fixed by its id."""
    ratios = cfg.new_data_ratios if new_data else cfg.split_ratios
    u = hash_unit(image_id, cfg.split_salt)
    edge = 0.0
    for name, ratio in ratios:
        edge += ratio
        if u < edge:
            return name
    return ratios[-1][0]


def assign_splits(
    images: pd.DataFrame, labels: pd.DataFrame, cfg: SlicingConfig
) -> pd.DataFrame:
    """Split per labelled image: official if the source has one, else by hash.

    Pseudo-labelled images are train-only; one whose official split is val or
    test is left out (`excluded`), never trained on. Images first labelled after
    iteration 0 use `new_data_ratios` (an image's first iteration never changes,
    so neither does its split).
    """
    official = images.set_index("image_id")["split"]
    first = (
        labels["first_iteration"]
        if "first_iteration" in labels
        else pd.Series(0, index=labels.index)
    )
    rows = []
    for image_id, origin, first_it in zip(
        labels["image_id"], labels["origin"], first, strict=True
    ):
        split = official.get(image_id)
        split = split if isinstance(split, str) and split else None
        if origin == "pseudo":
            split, how = (
                ("train", "pseudo")
                if split in (None, "train")
                else ("excluded", "pseudo")
            )
        elif split is not None:
            how = "official"
        else:
            split, how = hash_split(image_id, cfg, new_data=first_it > 0), "hash"
        rows.append((image_id, split, how, origin))
    out = pd.DataFrame(rows, columns=["image_id", "split", "split_source", "origin"])
    return out.sort_values("image_id", kind="stable").reset_index(drop=True)


# -- balance and weights ------------------------------------------------------


def class_balance(
    labels: pd.DataFrame, splits: pd.DataFrame, cm: ClassMap
) -> pd.DataFrame:
    """Pixel and image frequency per class and split (plus `all`)."""
    merged = labels[["image_id", "class_pixels"]].merge(splits[["image_id", "split"]])
    rows = []
    groups = [("all", merged), *((s, g) for s, g in merged.groupby("split", sort=True))]
    for split, group in groups:
        pixels = (
            np.stack(group["class_pixels"].map(np.asarray).to_list())
            if len(group)
            else np.zeros((0, cm.num_classes), dtype=np.int64)
        )
        total = max(int(pixels.sum()), 1)
        for j, name in enumerate(cm.names):
            rows.append(
                {
                    "split": split,
                    "class": name,
                    "pixels": int(pixels[:, j].sum()),
                    "pixel_freq": float(pixels[:, j].sum()) / total,
                    "images": int((pixels[:, j] > 0).sum()),
                    "image_freq": float((pixels[:, j] > 0).mean())
                    if len(group)
                    else 0.0,
                    "n_images": len(group),
                }
            )
    return pd.DataFrame(rows)


def sampling_weights(
    slices: pd.DataFrame,
    splits: pd.DataFrame,
    cfg: SlicingConfig,
    regressed: Sequence[str] = (),
) -> pd.DataFrame:
    """Per-image training weights: (N / n_slice) ** alpha of the rarest slice.

    Only train images get weights; the weights average 1 and are clipped to
    `max_weight`, so one rare image cannot dominate an epoch.

    `regressed` names the slices the last gate found regressed (any family):
    their train images weigh `cfg.regressed_boost` times more, so the next
    model rehearses what the rejected one forgot. Columns: image_id, weight,
    rarest_slice, boost (1 or the factor) and boosted_by (the image's
    regressed slices, comma-separated, or "").
    """
    alpha = SAMPLING_SCHEMES[cfg.sampling_scheme]
    train = splits.loc[splits["split"] == "train", ["image_id"]]
    out = train.assign(weight=1.0, rarest_slice="all", boost=1.0, boosted_by="")
    if train.empty:
        return out.reset_index(drop=True)
    in_train = slices["image_id"].isin(train["image_id"])
    fam = slices["slice"].str.split(":", n=1).str[0]
    sl = slices[fam.isin(cfg.sampling_by) & in_train]
    if alpha > 0 and not sl.empty:
        counts = sl["slice"].value_counts()
        sl = sl.assign(w=(len(train) / sl["slice"].map(counts)) ** alpha)
        best = sl.sort_values(["image_id", "w", "slice"]).groupby("image_id").tail(1)
        best = best.set_index("image_id")
        out["weight"] = out["image_id"].map(best["w"]).fillna(1.0).to_numpy()
        out["rarest_slice"] = (
            out["image_id"].map(best["slice"]).fillna("all").to_numpy()
        )
    hit = slices[in_train & slices["slice"].isin(list(regressed))]
    if cfg.regressed_boost > 1.0 and not hit.empty:
        names = hit.sort_values("slice").groupby("image_id")["slice"].agg(",".join)
        boosted = out["image_id"].isin(names.index).to_numpy()
        out.loc[boosted, "boost"] = cfg.regressed_boost
        out["boosted_by"] = out["image_id"].map(names).fillna("").to_numpy()
        out["weight"] = out["weight"] * out["boost"]
    if (out["weight"] != 1.0).any():
        out["weight"] = out["weight"] / out["weight"].mean()
        out["weight"] = out["weight"].clip(upper=cfg.max_weight)
        out["weight"] = out["weight"] / out["weight"].mean()
    return out.sort_values("image_id", kind="stable").reset_index(drop=True)
