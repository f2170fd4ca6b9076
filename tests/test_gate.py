"""The paired bootstrap and the forgetting gate, on synthetic confusion matrices."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from edgeloop.gate import (
    GateConfig,
    GateVerdict,
    SliceComparison,
    bootstrap_scores,
    gate,
    paired_bootstrap,
    regressed_slices,
)
from edgeloop.metrics import evaluate_slices, metric_fn, per_image_confusion

NAMES = ("background", "fighter_jet", "airliner", "light_aircraft")
K = len(NAMES)
MIOU = metric_fn("miou", NAMES)


def _ids(n: int) -> list[str]:
    return [f"img{i:03d}" for i in range(n)]


def _table(groups: dict[str, range]) -> pd.DataFrame:
    rows = [(f"img{i:03d}", name) for name, idx in groups.items() for i in idx]
    return pd.DataFrame(rows, columns=["image_id", "slice"])


def _truth(rng: np.random.Generator, n: int, size: int = 16) -> np.ndarray:
    return rng.integers(0, K, size=(n, size, size))


def _predict(
    rng: np.random.Generator, truth: np.ndarray, accuracy: np.ndarray
) -> np.ndarray:
    """Per-image confusion matrices of a model right with `accuracy[i]` on image i.

    A wrong pixel gets a uniformly random class (possibly the right one).
    """
    keep = rng.random(truth.shape) < np.asarray(accuracy)[:, None, None]
    pred = np.where(keep, truth, rng.integers(0, K, size=truth.shape))
    return per_image_confusion(truth, pred, K)


def _cyclic(rng: np.random.Generator, iou: np.ndarray, pixels: int = 256):
    """Per-image matrices whose summed per-class IoU is about `iou[i]`.

    Each class loses Binomial(pixels, f) pixels to the next class, so
    FN = FP = e and IoU = (n - e) / (n + e), i.e. f = (1 - iou) / (1 + iou).
    """
    iou = np.asarray(iou, dtype=np.float64)
    f = (1 - iou) / (1 + iou)
    e = rng.binomial(pixels, np.repeat(f[:, None], K, axis=1))
    out = np.zeros((len(iou), K, K), dtype=np.int64)
    for c in range(K):
        out[:, c, c] = pixels - e[:, c]
        out[:, c, (c + 1) % K] = e[:, c]
    return out


# --- the bootstrap -----------------------------------------------------------


def test_bootstrap_matches_the_documented_draw() -> None:
    rng = np.random.default_rng(0)
    per = _predict(rng, _truth(rng, 12), np.full(12, 0.7))
    got = bootstrap_scores(per, metric_fn=MIOU, n_resamples=50, seed=42)
    draws = np.random.default_rng(42).integers(0, 12, size=(50, 12))
    expected = [MIOU(per[row].sum(axis=0)) for row in draws]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_paired_bootstrap_is_deterministic_and_paired() -> None:
    rng = np.random.default_rng(1)
    truth = _truth(rng, 30)
    new = _predict(rng, truth, np.full(30, 0.8))
    old = _predict(rng, truth, np.full(30, 0.75))
    a = paired_bootstrap(new, old, metric_fn=MIOU, seed=3)
    assert a == paired_bootstrap(new, old, metric_fn=MIOU, seed=3)
    assert a != paired_bootstrap(new, old, metric_fn=MIOU, seed=4)
    assert a[0] == pytest.approx(MIOU(new.sum(0)) - MIOU(old.sum(0)))
    assert a[1] < a[0] < a[2]
    # Paired: both models are scored on the same resampled images.
    deltas = bootstrap_scores(
        new, metric_fn=MIOU, n_resamples=1000, seed=3
    ) - bootstrap_scores(old, metric_fn=MIOU, n_resamples=1000, seed=3)
    assert (a[1], a[2]) == pytest.approx(tuple(np.percentile(deltas, [2.5, 97.5])))
    # Identical models: every resample has delta exactly 0.
    assert paired_bootstrap(new, new.copy(), metric_fn=MIOU) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"new \(3, 4, 4\) and old \(2, 4, 4\)"):
        paired_bootstrap(
            np.ones((3, 4, 4)), np.ones((2, 4, 4)), metric_fn=MIOU, n_resamples=5
        )
    with pytest.raises(ValueError, match=r"new must be \(N, K, K\), got shape"):
        paired_bootstrap(np.ones((3, 4)), np.ones((3, 4)), metric_fn=MIOU)


def test_bootstrap_is_fast() -> None:
    rng = np.random.default_rng(2)
    truth = _truth(rng, 300)
    new = _predict(rng, truth, np.full(300, 0.8))
    old = _predict(rng, truth, np.full(300, 0.8))
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        paired_bootstrap(new, old, metric_fn=MIOU, n_resamples=1000)
        best = min(best, time.perf_counter() - start)
    # About 10 ms here; the bound leaves room for slow CI machines.
    assert best < 0.25


# --- config ------------------------------------------------------------------


def test_config_from_params_ignores_other_keys_and_validates() -> None:
    cfg = GateConfig.from_params({"tolerance": 0.05, "seed": 7, "gallery_slices": 4})
    assert cfg == GateConfig(tolerance=0.05, seed=7)
    with pytest.raises(ValueError, match=r"gate\.tolerance must be .*-0\.1"):
        GateConfig.from_params({"tolerance": -0.1})
    with pytest.raises(ValueError, match=r"evaluation\.ci must be a number in"):
        GateConfig.from_params({"ci": 1.5}, section="evaluation")
    with pytest.raises(ValueError, match=r"gate\.min_images"):
        GateConfig(min_images=0)


# --- the gate ----------------------------------------------------------------


def test_first_model_is_promoted_and_reported() -> None:
    rng = np.random.default_rng(3)
    new = _predict(rng, _truth(rng, 25), np.full(25, 0.8))
    table = _table({"cond:night": range(10), "cond:day": range(10, 25)})
    v = gate(
        new,
        None,
        _ids(25),
        table,
        metric="miou",
        class_names=NAMES,
        best_so_far={},
        config=GateConfig(min_images=12),
    )
    assert v.promoted
    assert v.reasons == ("first model: nothing to compare against",)
    assert [c.slice for c in v.comparisons] == ["all", "cond:day", "cond:night"]
    scores = evaluate_slices(
        new, _ids(25), table, metric="miou", class_names=NAMES, min_images=12
    )
    for c in v.comparisons:
        assert c.new == scores[c.slice].score
        assert c.old is None and c.delta is None and c.ci_high is None
        assert not c.regressed
    assert v.comparison("cond:night").insufficient


def test_model_worse_on_one_slice_is_rejected_naming_it() -> None:
    rng = np.random.default_rng(4)
    truth = _truth(rng, 40)
    night = np.arange(40) < 30
    old = _predict(rng, truth, np.full(40, 0.9))
    new = _predict(rng, truth, np.where(night, 0.6, 0.9))
    table = _table({"cond:night": range(30), "cond:day": range(30, 40)})
    v = gate(
        new,
        old,
        _ids(40),
        table,
        metric="miou",
        class_names=NAMES,
        best_so_far={},
        config=GateConfig(min_images=10),
    )
    assert not v.promoted
    night_c = v.comparison("cond:night")
    assert night_c.regressed and not night_c.insufficient
    assert night_c.delta < -0.2 and night_c.ci_high < 0
    assert not v.comparison("cond:day").regressed
    assert any(r.startswith("slice cond:night dropped") for r in v.reasons)
    assert any("tolerance 0.02" in r and "95% CI [" in r for r in v.reasons)
    assert any(r.startswith("overall") for r in v.reasons)
    # What the registry and the bug tracker read back from the stored verdict.
    flagged = regressed_slices(v.to_dict())
    assert flagged == sorted(c.slice for c in v.comparisons if c.regressed)
    assert "cond:night" in flagged and "cond:day" not in flagged
    assert regressed_slices({"promoted": True}) == []


def test_noisy_tie_is_promoted() -> None:
    rng = np.random.default_rng(5)
    old = _predict(rng, _truth(rng, 60), np.full(60, 0.8))
    new = old.copy()
    # Move a few pixels of one class between right and wrong, both ways.
    for i in range(60):
        c, other = rng.choice(K, size=2, replace=False)
        shift = int(rng.integers(-6, 7))
        shift = (
            min(shift, new[i, c, c]) if shift > 0 else -min(-shift, new[i, c, other])
        )
        new[i, c, c] -= shift
        new[i, c, other] += shift
    assert not np.array_equal(new, old)
    table = _table({"cond:night": range(30), "cond:day": range(30, 60)})
    v = gate(
        new,
        old,
        _ids(60),
        table,
        metric="miou",
        class_names=NAMES,
        best_so_far={},
        config=GateConfig(),
    )
    assert v.promoted, v.reasons
    overall = v.comparison("all")
    assert overall.delta != 0 and abs(overall.delta) < 0.01
    assert overall.ci_low < 0 < overall.ci_high
    assert v.reasons[0].startswith("no sufficient slice regressed; overall ")
    assert not any(c.regressed for c in v.comparisons)


def test_drop_carried_by_one_image_is_not_a_regression() -> None:
    # One large image, on which the new model is much worse, carries the
    # drop; resamples without it show a gain, so the CI includes 0.
    rng = np.random.default_rng(10)
    truth, big = _truth(rng, 23), _truth(rng, 1, size=80)
    old = np.concatenate(
        [_predict(rng, big, [0.85]), _predict(rng, truth, np.full(23, 0.85))]
    )
    new = np.concatenate(
        [_predict(rng, big, [0.6]), _predict(rng, truth, np.full(23, 0.95))]
    )
    v = gate(
        new,
        old,
        _ids(24),
        _table({}),
        metric="miou",
        class_names=NAMES,
        best_so_far={},
        config=GateConfig(),
    )
    overall = v.comparison("all")
    assert overall.delta < -0.02 and overall.ci_low < 0 < overall.ci_high
    assert not overall.regressed
    assert v.promoted, v.reasons


def test_slow_drift_is_caught_by_the_best_so_far_rule() -> None:
    # 200 images: the night slice loses ~0.015 per iteration while the day
    # slice gains, so the overall score and each step look fine.
    rng = np.random.default_rng(9)
    night = np.arange(200) < 100
    table = _table({"cond:night": range(100), "cond:day": range(100, 200)})
    ids = _ids(200)
    iterations = [
        _cyclic(rng, np.where(night, n_iou, d_iou))
        for n_iou, d_iou in [(0.80, 0.80), (0.785, 0.82), (0.77, 0.84)]
    ]

    def run(new, old, best):
        return gate(
            new,
            old,
            ids,
            table,
            metric="miou",
            class_names=NAMES,
            best_so_far=best,
            config=GateConfig(),
        )

    promoted, best = None, {}
    verdicts = []
    for new in iterations:
        v = run(new, promoted, best)
        verdicts.append(v)
        if v.promoted:
            promoted = new
            for c in v.comparisons:
                best[c.slice] = max(best.get(c.slice, -math.inf), c.new)
    v1, v2, v3 = verdicts
    assert v1.promoted and v2.promoted
    step2 = v2.comparison("cond:night")
    assert -0.02 < step2.delta < -0.01  # under the tolerance: passes
    # Iteration 3 is compared with iteration 2 (the promoted model) ...
    assert promoted is iterations[1]
    step3 = v3.comparison("cond:night")
    assert -0.02 < step3.delta < -0.01  # ... and again only ~0.015 worse,
    assert step3.best == best["cond:night"] == v1.comparison("cond:night").new
    assert step3.delta_best < -0.02  # but over the tolerance below the best,
    assert step3.best_ci_high < step3.best  # with a CI that excludes the best.
    assert not v3.promoted and step3.regressed
    assert len(v3.reasons) == 1
    assert v3.reasons[0].startswith("slice cond:night is 0.0")
    assert "below its best so far" in v3.reasons[0]
    assert v3.comparison("all").delta > 0 and not v3.comparison("cond:day").regressed
    # The plain comparison with the promoted model alone would have passed.
    assert run(iterations[2], promoted, {}).promoted


def test_insufficient_slice_never_gates() -> None:
    rng = np.random.default_rng(6)
    truth = _truth(rng, 60)
    fog = np.arange(60) < 5
    old = _predict(rng, truth, np.full(60, 0.8))
    new = _predict(rng, truth, np.where(fog, 0.2, 0.9))
    table = _table({"cond:fog": range(5), "cond:day": range(5, 60)})

    def run(min_images: int) -> GateVerdict:
        return gate(
            new,
            old,
            _ids(60),
            table,
            metric="miou",
            class_names=NAMES,
            best_so_far={"cond:fog": 0.9},
            config=GateConfig(min_images=min_images),
        )

    v = run(20)
    fog_c = v.comparison("cond:fog")
    assert fog_c.insufficient and not fog_c.regressed
    assert fog_c.delta < -0.3 and fog_c.ci_high < 0  # a large, clear drop
    assert fog_c.delta_best < -0.3  # and far below its best
    assert "only 5 images" in fog_c.reason
    assert v.promoted, v.reasons
    # The same drop gates once the slice counts as sufficient.
    strict = run(5)
    assert not strict.promoted
    assert any(r.startswith("slice cond:fog dropped") for r in strict.reasons)


def test_overall_drop_under_tolerance_blocks_promotion() -> None:
    rng = np.random.default_rng(7)
    truth = _truth(rng, 200)
    old = _predict(rng, truth, np.full(200, 0.85))
    new = _predict(rng, truth, np.full(200, 0.84))
    v = gate(
        new,
        old,
        _ids(200),
        _table({}),
        metric="miou",
        class_names=NAMES,
        best_so_far={},
        config=GateConfig(),
    )
    overall = v.comparison("all")
    assert -0.02 < overall.delta < 0 and overall.ci_high < 0
    assert not overall.regressed  # within the per-slice tolerance ...
    assert not v.promoted  # ... but the overall score must not drop.
    assert v.reasons == (v.reasons[0],) and v.reasons[0].startswith("overall")


def test_gate_rejects_mismatched_input() -> None:
    per = np.ones((3, K, K), dtype=np.int64)
    kwargs = {
        "metric": "miou",
        "class_names": NAMES,
        "best_so_far": {},
        "config": GateConfig(),
    }
    with pytest.raises(ValueError, match=r"new \(3, 4, 4\) and old \(2, 4, 4\)"):
        gate(per, per[:2], _ids(3), _table({}), **kwargs)
    with pytest.raises(ValueError, match="2 ids for new of shape"):
        gate(per, per, _ids(2), _table({}), **kwargs)
    with pytest.raises(ValueError, match="unknown metric"):
        gate(per, per, _ids(3), _table({}), **{**kwargs, "metric": "f1"})


def test_verdict_round_trip() -> None:
    rng = np.random.default_rng(8)
    truth = _truth(rng, 30)
    old = _predict(rng, truth, np.full(30, 0.9))
    new = _predict(rng, truth, np.where(np.arange(30) < 25, 0.5, 0.9))
    v = gate(
        new,
        old,
        _ids(30),
        _table({"cond:night": range(25), "cond:day": range(25, 30)}),
        metric="miou",
        class_names=NAMES,
        best_so_far={"all": 0.95},
        config=GateConfig(),
    )
    assert not v.promoted
    text = json.dumps(v.to_dict(), allow_nan=False)
    assert GateVerdict.from_dict(json.loads(text)) == v
    # nan (an undefined score) survives as None and back.
    c = SliceComparison(
        slice="class:x",
        n_images=3,
        new=math.nan,
        old=None,
        best=None,
        delta=None,
        ci_low=None,
        ci_high=None,
        delta_best=None,
        best_ci_high=None,
        insufficient=True,
        regressed=False,
        reason=None,
    )
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert d["new"] is None
    assert SliceComparison.from_dict(d) == c
