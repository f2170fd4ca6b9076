"""The forgetting gate: may a newly trained model replace the promoted one?

Both models are scored on the same test images, kept as per-image confusion
matrices `(N, K, K)`. A slice's score is the metric of the sum of its images'
matrices. Uncertainty comes from a paired bootstrap over images: each resample
draws N images with replacement, and the SAME draw scores both models, so the
spread of the difference reflects which images were drawn, not two independent
noises.

Rules:

1. No promoted model yet (`old is None`): promoted ("first model: nothing to
   compare against"); each slice's new score is still reported.
2. Every slice of the slice table that has evaluated images, plus the overall
   slice (`config.overall_slice`, "all"), gets the new score, the old score and
   the paired bootstrap delta `new - old` with its percentile CI.
3. A slice with fewer than `min_images` images is `insufficient`: reported,
   never gated (too few images to tell a drop from noise).
4. A sufficient slice regresses against the promoted model when
   `delta < -tolerance` AND the CI's upper end is below 0.
5. Best-so-far rule, so slow drift cannot slip through in steps each under the
   tolerance: for a sufficient slice whose best promoted score is known,
   `delta_best = new - best`; it regresses when `delta_best < -tolerance` AND
   the upper end of the bootstrap CI of the new model's own score on the slice
   (`best_ci_high`, same seed) is below `best`.
6. The overall slice must not drop at all: `delta < 0` with the CI's upper end
   below 0 blocks promotion, whatever the tolerance and whatever its size (the
   whole test set is the best evidence there is). A noisy tie, a CI that
   includes 0, is not a drop.

Promoted = no sufficient slice regressed and the overall slice did not drop.
`GateVerdict.reasons` holds one human-readable line per failed rule, or one
summary line when promoted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.checks import check_int
from edgeloop.metrics import (
    OVERALL_SLICE,
    _check_per_image,
    _float_or_nan,
    _json_float,
    _nan_to_singleton,
    slice_indices,
)
from edgeloop.metrics import metric_fn as make_metric_fn

MetricFn = Callable[[np.ndarray], float | np.ndarray]


def _check_config(values: Mapping[str, Any], section: str) -> None:
    def bad(key: str, rule: str) -> ValueError:
        return ValueError(f"{section}.{key} must be {rule}, got {values[key]!r}")

    def is_real(x: Any) -> bool:
        return isinstance(x, int | float | np.number) and not isinstance(x, bool)

    if not is_real(values["tolerance"]) or not 0 <= values["tolerance"] < math.inf:
        raise bad("tolerance", "a finite number >= 0")
    for key, minimum in (("min_images", 1), ("n_resamples", 1), ("seed", 0)):
        check_int(values[key], f"{section}.{key}", minimum=minimum)
    if not is_real(values["ci"]) or not 0 < values["ci"] < 1:
        raise bad("ci", "a number in (0, 1)")
    if not isinstance(values["overall_slice"], str) or not values["overall_slice"]:
        raise bad("overall_slice", "a non-empty string")


@dataclass(frozen=True)
class GateConfig:
    """The gate's parameters.

    Attributes:
        tolerance: How much a slice may lose (metric units) before it counts.
        min_images: Slices with fewer images are insufficient: never gate.
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed (same seed, same verdict).
        ci: Confidence level of the percentile intervals.
        overall_slice: Name of the slice over every image.
    """

    tolerance: float = 0.02
    min_images: int = 20
    n_resamples: int = 1000
    seed: int = 0
    ci: float = 0.95
    overall_slice: str = OVERALL_SLICE

    def __post_init__(self) -> None:
        _check_config(asdict(self), "gate")

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], *, section: str = "gate"
    ) -> GateConfig:
        """Builds the config from a parameters mapping.

        Keys that are not fields (e.g. gallery settings sharing the section)
        are ignored; missing ones take the defaults.

        Args:
            params: The parameters section.
            section: Its name, used in error messages (e.g. "gate.tolerance").

        Raises:
            ValueError: A value out of range, naming `<section>.<key>`.
        """
        values = {f.name: params.get(f.name, f.default) for f in fields(cls)}
        _check_config(values, section)
        return cls(
            tolerance=float(values["tolerance"]),
            min_images=int(values["min_images"]),
            n_resamples=int(values["n_resamples"]),
            seed=int(values["seed"]),
            ci=float(values["ci"]),
            overall_slice=values["overall_slice"],
        )


def _resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """`(R, N)` float64 multiplicities of N images in R bootstrap resamples."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    # One bincount over (resample, image) codes instead of R small ones.
    codes = (np.arange(n_resamples)[:, None] * n + draws).ravel()
    counts = np.bincount(codes, minlength=n_resamples * n)
    # float64 so the matmul uses BLAS; counts and sums stay exact below 2**53.
    return counts.reshape(n_resamples, n).astype(np.float64)


def _resampled_sums(counts: np.ndarray, per_image: np.ndarray) -> np.ndarray:
    """`(R, K, K)` summed matrices: `counts (R, N) @ per_image (N, K*K)`."""
    n, k, _ = per_image.shape
    flat = per_image.reshape(n, k * k).astype(np.float64)
    return (counts @ flat).reshape(-1, k, k)


def _check_bootstrap_args(per_image: Any, n_resamples: int, name: str) -> np.ndarray:
    m = _check_per_image(per_image, name)
    if m.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one image, got shape {m.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    return m


def _percentiles(values: np.ndarray, ci: float) -> tuple[float, float]:
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    # Resamples where the metric is undefined (a class drawn away) carry no
    # information about the interval; all undefined -> undefined interval.
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def bootstrap_scores(
    per_image: np.ndarray,
    *,
    metric_fn: MetricFn,
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """The metric on bootstrap resamples of images.

    Args:
        per_image: `(N, K, K)` per-image confusion matrices.
        metric_fn: Vectorised metric, see `edgeloop.metrics.metric_fn`.
        n_resamples: R.
        seed: Seed of `np.random.default_rng`; the same seed draws the same
            images as `paired_bootstrap`.

    Returns:
        `(R,)` float64 scores.
    """
    m = _check_bootstrap_args(per_image, n_resamples, "per_image")
    counts = _resample_counts(m.shape[0], n_resamples, seed)
    return np.asarray(metric_fn(_resampled_sums(counts, m)), dtype=np.float64)


def paired_bootstrap(
    new: np.ndarray,
    old: np.ndarray,
    *,
    metric_fn: MetricFn,
    n_resamples: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[float, float, float]:
    """The metric difference new - old and its paired percentile CI.

    Args:
        new: `(N, K, K)` per-image matrices of the new model.
        old: `(N, K, K)` per-image matrices of the old model, same images in
            the same order.
        metric_fn: Vectorised metric.
        n_resamples: R.
        seed: Seed; deterministic for a seed.
        ci: Confidence level.

    Returns:
        `(delta, ci_low, ci_high)`; delta is the metric of the summed new
        matrices minus that of the summed old ones.

    Raises:
        ValueError: Shapes differ or are not `(N, K, K)`.
    """
    a = _check_bootstrap_args(new, n_resamples, "new")
    b = _check_bootstrap_args(old, n_resamples, "old")
    if a.shape != b.shape:
        raise ValueError(
            f"new and old must have the same shape (N, K, K), got new {a.shape} "
            f"and old {b.shape}"
        )
    delta = float(metric_fn(a.sum(axis=0))) - float(metric_fn(b.sum(axis=0)))
    # The same counts for both models: that is what makes it paired.
    counts = _resample_counts(a.shape[0], n_resamples, seed)
    deltas = np.asarray(metric_fn(_resampled_sums(counts, a))) - np.asarray(
        metric_fn(_resampled_sums(counts, b))
    )
    lo, hi = _percentiles(deltas, ci)
    return delta, lo, hi


def _none_if_nan(x: float | None) -> float | None:
    # Optional fields hold None for "not available", nan included, so that a
    # to_dict/from_dict round trip (nan -> None -> None) is exact.
    return None if x is None or math.isnan(x) else float(x)


@dataclass(frozen=True)
class SliceComparison:
    """One slice, new model against the promoted one and the best so far.

    Attributes:
        slice: Slice name.
        n_images: Images in the slice.
        new: New model's score (nan if undefined on the slice).
        old: Promoted model's score; None without a promoted model.
        best: Best promoted score so far on the slice; None if unknown.
        delta: `new - old`; None without a promoted model.
        ci_low: Lower end of the paired bootstrap CI of `delta`.
        ci_high: Upper end of it.
        delta_best: `new - best`; None if `best` is unknown.
        best_ci_high: Upper end of the bootstrap CI of the new score; None if
            `best` is unknown.
        insufficient: Fewer than `min_images` images: reported, never gated.
        regressed: This slice blocks promotion.
        reason: Why it regressed, or why it is not gated; None otherwise.
    """

    slice: str
    n_images: int
    new: float
    old: float | None
    best: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    delta_best: float | None
    best_ci_high: float | None
    insufficient: bool
    regressed: bool
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (nan becomes None)."""
        d = asdict(self)
        d["new"] = _json_float(self.new)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SliceComparison:
        """Inverse of `to_dict`."""
        optional = ("old", "best", "delta", "ci_low", "ci_high")
        optional += ("delta_best", "best_ci_high")
        return cls(
            slice=str(d["slice"]),
            n_images=int(d["n_images"]),
            new=_float_or_nan(d["new"]),
            **{k: _none_if_nan(d[k]) for k in optional},
            insufficient=bool(d["insufficient"]),
            regressed=bool(d["regressed"]),
            reason=d["reason"],
        )


@dataclass(frozen=True)
class GateVerdict:
    """The gate's decision.

    Attributes:
        promoted: Whether the new model replaces the promoted one.
        reasons: One line per failed rule, or a summary line when promoted.
        comparisons: One per slice, overall slice first.
    """

    promoted: bool
    reasons: tuple[str, ...]
    comparisons: tuple[SliceComparison, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "promoted": self.promoted,
            "reasons": list(self.reasons),
            "comparisons": [c.to_dict() for c in self.comparisons],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateVerdict:
        """Inverse of `to_dict`."""
        return cls(
            promoted=bool(d["promoted"]),
            reasons=tuple(str(r) for r in d["reasons"]),
            comparisons=tuple(SliceComparison.from_dict(c) for c in d["comparisons"]),
        )

    def comparison(self, slice_name: str) -> SliceComparison:
        """The comparison of one slice (KeyError if absent)."""
        for c in self.comparisons:
            if c.slice == slice_name:
                return c
        raise KeyError(
            f"no slice {slice_name!r}; have {[c.slice for c in self.comparisons]}"
        )


def regressed_slices(verdict: Mapping[str, Any]) -> list[str]:
    """The sorted slices a verdict found regressed; [] without comparisons.

    `verdict` is `GateVerdict.to_dict()`, as the gate node and the cards store it.
    """
    comparisons = verdict.get("comparisons") or []
    return sorted({str(c["slice"]) for c in comparisons if c.get("regressed")})


def _ci_text(ci: float, lo: float | None, hi: float | None) -> str:
    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.3f}"

    return f"{ci * 100:g}% CI [{num(lo)}, {num(hi)}]"


def gate(
    new: np.ndarray,
    old: np.ndarray | None,
    image_ids: Sequence[str],
    slices: pd.DataFrame,
    *,
    metric: str,
    class_names: Sequence[str],
    best_so_far: Mapping[str, float],
    config: GateConfig,
) -> GateVerdict:
    """Decides whether the new model may replace the promoted one.

    The rules are in the module docstring.

    Args:
        new: `(N, K, K)` per-image confusion matrices of the new model.
        old: `(N, K, K)` of the promoted model on the same images, or None
            when nothing is promoted yet.
        image_ids: The N image ids, in matrix order.
        slices: Long table `(image_id, slice)`.
        metric: See `edgeloop.metrics.metric_fn`.
        class_names: The K class names.
        best_so_far: Slice -> best score of any promoted model so far.
        config: Tolerance, minimum images, bootstrap settings.

    Returns:
        The verdict with one comparison per slice.

    Raises:
        ValueError: Bad shapes, ids, metric or classes.
    """
    a = _check_per_image(new, "new")
    b = None if old is None else _check_per_image(old, "old")
    if b is not None and a.shape != b.shape:
        raise ValueError(
            f"new and old must have the same shape (N, K, K), got new {a.shape} "
            f"and old {b.shape}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"new must hold at least one image, got shape {a.shape}")
    if len(image_ids) != a.shape[0]:
        raise ValueError(
            f"image_ids must have one id per matrix: {len(image_ids)} ids for "
            f"new of shape {a.shape}"
        )
    if a.shape[1] != len(class_names):
        k = len(class_names)
        raise ValueError(
            f"new must be (N, {k}, {k}) for class_names {list(class_names)}, "
            f"got shape {a.shape}"
        )
    fn = make_metric_fn(metric, class_names)
    members = slice_indices(image_ids, slices, overall_slice=config.overall_slice)
    boot = {"n_resamples": config.n_resamples, "seed": config.seed}
    ci_pct = f"{config.ci * 100:g}%"
    tol = config.tolerance

    comparisons: list[SliceComparison] = []
    failures: list[str] = []
    for name, idx in members.items():
        n = len(idx)
        insufficient = n < config.min_images
        new_score = _nan_to_singleton(fn(a[idx].sum(axis=0)))
        old_score = delta = lo = hi = None
        best = delta_best = best_hi = None
        notes: list[str] = []
        regressed = False
        if b is not None:
            old_score = _none_if_nan(fn(b[idx].sum(axis=0)))
            d, lo, hi = paired_bootstrap(
                a[idx], b[idx], metric_fn=fn, ci=config.ci, **boot
            )
            delta, lo, hi = _none_if_nan(d), _none_if_nan(lo), _none_if_nan(hi)
            best = _none_if_nan(best_so_far.get(name))
            if best is not None:
                delta_best = _none_if_nan(new_score - best)
                scores = bootstrap_scores(a[idx], metric_fn=fn, **boot)
                best_hi = _none_if_nan(_percentiles(scores, config.ci)[1])
            if insufficient:
                notes.append(
                    f"only {n} images (< min_images {config.min_images}): "
                    "reported, not gated"
                )
            else:
                if delta is not None and hi is not None and delta < -tol and hi < 0:
                    regressed = True
                    notes.append(
                        f"slice {name} dropped {-delta:.3f} "
                        f"({_ci_text(config.ci, lo, hi)}) vs the promoted model, "
                        f"over the tolerance {tol:g}"
                    )
                if (
                    delta_best is not None
                    and best_hi is not None
                    and delta_best < -tol
                    and best_hi < best
                ):
                    regressed = True
                    notes.append(
                        f"slice {name} is {-delta_best:.3f} below its best so far "
                        f"{best:.3f} (new {new_score:.3f}, {ci_pct} CI upper end "
                        f"{best_hi:.3f} < best), over the tolerance {tol:g}"
                    )
        comparison = SliceComparison(
            slice=name,
            n_images=n,
            new=new_score,
            old=old_score,
            best=best,
            delta=delta,
            ci_low=lo,
            ci_high=hi,
            delta_best=delta_best,
            best_ci_high=best_hi,
            insufficient=insufficient,
            regressed=regressed,
            reason="; ".join(notes) or None,
        )
        comparisons.append(comparison)
        if regressed:
            failures.extend(notes)

    if b is None:
        return GateVerdict(
            promoted=True,
            reasons=("first model: nothing to compare against",),
            comparisons=tuple(comparisons),
        )
    # slice_indices always yields the overall slice for N >= 1 images.
    overall = next(c for c in comparisons if c.slice == config.overall_slice)
    if (
        overall.delta is not None
        and overall.ci_high is not None
        and overall.delta < 0
        and overall.ci_high < 0
    ):
        failures.append(
            f"overall (slice {overall.slice}) dropped {-overall.delta:.3f} "
            f"({_ci_text(config.ci, overall.ci_low, overall.ci_high)}) vs the "
            "promoted model: the overall score must not drop"
        )
    if failures:
        return GateVerdict(False, tuple(failures), tuple(comparisons))
    delta_txt = "n/a" if overall.delta is None else f"{overall.delta:+.3f}"
    ci_txt = _ci_text(config.ci, overall.ci_low, overall.ci_high)
    summary = f"no sufficient slice regressed; overall {delta_txt} ({ci_txt})"
    return GateVerdict(True, (summary,), tuple(comparisons))


__all__ = [
    "GateConfig",
    "GateVerdict",
    "SliceComparison",
    "bootstrap_scores",
    "gate",
    "paired_bootstrap",
]
