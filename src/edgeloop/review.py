"""What people should review next, and why each item was picked.

Four samplers look at the `predictions` (and `feedback`) frames, each with its
own reason:

- `feedback`: customers said a prediction was wrong.
- `low_confidence`: the model doubted itself (most doubtful first, capped per
  embedding cluster for diversity).
- `every_nth`: every Nth prediction in time order. It follows traffic: an hour
  with 10x the requests gets 10x the picks, so it estimates quality *per request*.
- `random_window`: k random predictions per time window. Every window gets the
  same k however busy it was, so quiet hours (nights, weekends) are never
  starved; it estimates quality *per window*.

`build_review_queue` runs them all and merges duplicates, so each prediction
appears once with every reason that picked it. `model_health` and
`health_figure` show confidence and reviewed error rate per hour of day.

Everything here is pure pandas/numpy over frames shaped like the lake tables.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import Tick

from edgeloop.checks import check_int
from edgeloop.novelty import join_novelty
from edgeloop.prodlog import SCORE_ORDER

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

REASONS = ("feedback", "low_confidence", "every_nth", "random_window")
DEFAULT_PRIORITIES = {
    "feedback": 0,
    "low_confidence": 1,
    "every_nth": 2,
    "random_window": 3,
}
ITEM_COLUMNS = ["request_id", "image_id", "ts", "reason", "detail"]
QUEUE_COLUMNS = ["request_id", "image_id", "ts", "priority", "reasons", "details"]
CLUSTER_COLUMN = "cluster"  # optional, e.g. from clustering embeddings
# What the confidence checks can rank by -> True when high means doubtful: the
# predictor's scores, and `novelty` (`edgeloop.novelty`, joined in by the
# review node from the similarity context).
CONFIDENCE_SCORES = {**SCORE_ORDER, "novelty": True}
REVIEW_VERDICTS = ("correct", "bug")


@dataclass(frozen=True)
class ReviewConfig:
    """The `review` parameters, checked once at the node boundary.

    `per_window`, `every_nth` and `confidence_top_k` set to 0 disable their
    sampler (the threshold still applies with a top_k of 0). `skip_reviewed`
    leaves out predictions that already have a verdict: with an unchanged model
    and seed the samplers would pick them again, and people would pay twice.
    """

    window: str = "1h"
    per_window: int = 2
    every_nth: int = 50
    confidence_score: str = "mean_max_prob"
    confidence_top_k: int = 20
    confidence_threshold: float | None = None
    cluster_cap: int | None = 3
    seed: int = 0
    skip_reviewed: bool = True
    priorities: tuple[tuple[str, int], ...] = tuple(DEFAULT_PRIORITIES.items())

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ReviewConfig:
        """Builds a config from `parameters_review.yml`-style params.

        Raises:
            ValueError: an unknown key or a bad value; the message names it.
        """
        if not isinstance(params, Mapping):
            raise ValueError(f"review params must be a mapping, got {type(params)}")
        valid = [f for f in cls.__dataclass_fields__]
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(
                f"review has unknown parameter(s) {unknown}; valid: {valid}"
            )
        d = cls()
        window = params.get("window", d.window)
        _check_window(window, name="review.window")
        score = params.get("confidence_score", d.confidence_score)
        if score not in CONFIDENCE_SCORES:
            raise ValueError(
                f"review.confidence_score must be one of {sorted(CONFIDENCE_SCORES)}, "
                f"got {score!r}"
            )
        threshold = params.get("confidence_threshold", d.confidence_threshold)
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, int | float):
                raise ValueError(
                    "review.confidence_threshold must be a number or null, "
                    f"got {threshold!r}"
                )
            if not math.isfinite(threshold):
                raise ValueError(
                    f"review.confidence_threshold must be finite, got {threshold!r}"
                )
            threshold = float(threshold)
        cap = params.get("cluster_cap", d.cluster_cap)
        if cap is not None:
            cap = check_int(cap, name="review.cluster_cap", minimum=1)
        skip = params.get("skip_reviewed", d.skip_reviewed)
        if not isinstance(skip, bool):
            raise ValueError(
                f"review.skip_reviewed must be true or false, got {skip!r}"
            )
        return cls(
            window=window,
            per_window=check_int(
                params.get("per_window", d.per_window),
                name="review.per_window",
                minimum=0,
            ),
            every_nth=check_int(
                params.get("every_nth", d.every_nth), name="review.every_nth", minimum=0
            ),
            confidence_score=score,
            confidence_top_k=check_int(
                params.get("confidence_top_k", d.confidence_top_k),
                name="review.confidence_top_k",
                minimum=0,
            ),
            confidence_threshold=threshold,
            cluster_cap=cap,
            seed=check_int(params.get("seed", d.seed), name="review.seed"),
            skip_reviewed=skip,
            priorities=_check_priorities(params.get("priorities") or {}),
        )

    def priority(self, reason: str) -> int:
        """The priority of a reason (lower is reviewed first)."""
        return dict(self.priorities)[reason]


def _check_window(window: Any, *, name: str) -> pd.Timedelta:
    """A fixed-length, positive pandas offset ('1h', '30min', '1D')."""
    try:
        offset = to_offset(window)
    except (TypeError, ValueError):
        offset = None
    if not isinstance(window, str) or not isinstance(offset, Tick) or offset.n <= 0:
        raise ValueError(
            f"{name} must be a fixed-length pandas offset such as '1h' or '30min', "
            f"got {window!r}"
        )
    return pd.Timedelta(offset)


def _check_priorities(given: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    if not isinstance(given, Mapping):
        raise ValueError(f"review.priorities must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(REASONS))
    if unknown:
        raise ValueError(
            f"review.priorities has unknown reason(s) {unknown}; valid: {list(REASONS)}"
        )
    merged = dict(DEFAULT_PRIORITIES)
    for reason, value in given.items():
        merged[reason] = check_int(value, name=f"review.priorities.{reason}")
    return tuple(merged.items())


# -- input handling --------------------------------------------------------------


def _prepare(
    frame: pd.DataFrame | None, required: list[str], *, name: str
) -> pd.DataFrame:
    """A copy with `ts` as UTC datetimes; an empty or None frame gets the columns.

    Raises:
        ValueError: a non-empty frame lacks required columns.
    """
    if frame is None or (len(frame) == 0 and not set(required) <= set(frame.columns)):
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in required})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks column(s) {missing}; it has {list(frame.columns)}"
        )
    out = frame.copy()
    if "ts" in out.columns:
        # Naive timestamps are taken as UTC, like the lake writes them.
        out["ts"] = pd.to_datetime(out["ts"], utc=True)
    return out.reset_index(drop=True)


def _items(frame: pd.DataFrame, reason: str, details: list[str]) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    return pd.DataFrame(
        {
            "request_id": frame["request_id"].astype(object),
            "image_id": frame["image_id"].astype(object),
            "ts": pd.to_datetime(frame["ts"], utc=True),
            "reason": pd.Series([reason] * len(frame), dtype=object),
            "detail": pd.Series(details, dtype=object),
        },
        columns=ITEM_COLUMNS,
    )


def _empty_items() -> pd.DataFrame:
    empty = pd.Series([], dtype=object)
    return _items(
        pd.DataFrame({"request_id": empty, "image_id": empty, "ts": empty}), "", []
    )


def _time_order(preds: pd.DataFrame) -> pd.DataFrame:
    return preds.sort_values(["ts", "request_id"], kind="stable").reset_index(drop=True)


# -- samplers --------------------------------------------------------------------


def sample_random_per_window(
    preds: pd.DataFrame, window: str = "1h", k: int = 2, seed: int = 0
) -> pd.DataFrame:
    """k uniformly random predictions per time window (all of a smaller window).

    Windows are `ts` floored to `window` (aligned to the epoch, UTC). Each
    window draws from its own generator, seeded from `seed` and the window's
    start, over its predictions in (ts, request_id) order: the picks depend
    only on that window's rows, so a new window never changes earlier picks.

    Returns:
        One row per pick: request_id, image_id, ts, reason, detail.
    """
    _check_window(window, name="window")
    k = check_int(k, name="k", minimum=0)
    preds = _prepare(preds, ["request_id", "image_id", "ts"], name="preds")
    if k == 0 or preds.empty:
        return _empty_items()
    preds = _time_order(preds)
    starts = preds["ts"].dt.floor(window)
    picks: list[np.ndarray] = []
    details: list[str] = []
    for start, rows in sorted(preds.groupby(starts).indices.items()):
        rng = np.random.default_rng(_window_seed(seed, start))
        chosen = np.sort(rng.choice(len(rows), size=min(k, len(rows)), replace=False))
        picks.append(rows[chosen])
        label = f"random {k}/window {start:%Y-%m-%d %H:%M} ({len(rows)} in window)"
        details += [label] * len(chosen)
    return _items(preds.iloc[np.concatenate(picks)], "random_window", details)


def _window_seed(seed: int, start: pd.Timestamp) -> int:
    """A stable 64-bit seed from the run seed and a window start."""
    key = f"{seed}|{pd.Timestamp(start).value}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def sample_every_nth(preds: pd.DataFrame, n: int = 50) -> pd.DataFrame:
    """Every nth prediction in (ts, request_id) order: the nth, 2nth, ...

    Counting starts at the frame's first prediction, so the picks follow the
    traffic: a busy hour gets picks in proportion to its requests. n = 0
    disables it.
    """
    n = check_int(n, name="n", minimum=0)
    preds = _prepare(preds, ["request_id", "image_id", "ts"], name="preds")
    if n == 0 or len(preds) < n:
        return _empty_items()
    positions = np.arange(n, len(preds) + 1, n)  # 1-based
    picked = _time_order(preds).iloc[positions - 1]
    return _items(
        picked, "every_nth", [f"every {_ordinal(n)} (#{p})" for p in positions]
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10)
    return f"{n}{suffix or 'th'}"


def sample_low_confidence(
    preds: pd.DataFrame,
    score: str = "mean_max_prob",
    top_k: int = 20,
    threshold: float | None = None,
    cluster_cap: int | None = 3,
) -> pd.DataFrame:
    """The most doubtful predictions: the top_k, plus all beyond a threshold.

    Doubtful means a low `mean_max_prob`/`mean_margin` or a high
    `mean_entropy`/`low_conf_frac`/`novelty` (`CONFIDENCE_SCORES`); "beyond" is strictly
    below or above `threshold`. Ties go to the earlier prediction; rows without
    a score are skipped. When `preds` has a `cluster` column, at most
    `cluster_cap` picks come from one cluster: an over-cap item is skipped and
    the ranking goes on (rows with no cluster are not capped).

    Returns:
        Picks most doubtful first; detail gives the score and its rank among
        all scored predictions.
    """
    if score not in CONFIDENCE_SCORES:
        raise ValueError(
            f"score must be one of {sorted(CONFIDENCE_SCORES)}, got {score!r}"
        )
    top_k = check_int(top_k, name="top_k", minimum=0)
    if cluster_cap is not None:
        cluster_cap = check_int(cluster_cap, name="cluster_cap", minimum=1)
    preds = _prepare(preds, ["request_id", "image_id", "ts", score], name="preds")
    preds = preds[preds[score].notna()]
    if preds.empty or (top_k == 0 and threshold is None):
        return _empty_items()
    high_is_doubtful = CONFIDENCE_SCORES[score]
    ranked = preds.sort_values(
        [score, "ts", "request_id"],
        ascending=[not high_is_doubtful, True, True],
        kind="stable",
    ).reset_index(drop=True)
    values = ranked[score].to_numpy(dtype=float)
    if threshold is None:
        beyond = np.zeros(len(ranked), dtype=bool)
    elif high_is_doubtful:
        beyond = values > threshold
    else:
        beyond = values < threshold
    clusters = ranked[CLUSTER_COLUMN] if CLUSTER_COLUMN in ranked.columns else None
    taken: list[int] = []
    per_cluster: dict[Any, int] = {}
    for i in range(len(ranked)):
        if len(taken) >= top_k and not beyond[i]:
            break  # the ranking is monotone: nothing further is beyond either
        c = None if clusters is None or pd.isna(clusters.iat[i]) else clusters.iat[i]
        if c is not None and cluster_cap is not None:
            if per_cluster.get(c, 0) >= cluster_cap:
                continue
            per_cluster[c] = per_cluster.get(c, 0) + 1
        taken.append(i)
    side = "above" if high_is_doubtful else "below"
    details = []
    for i in taken:
        extra = f", cluster {clusters.iat[i]}" if clusters is not None else ""
        extra += f", {side} {threshold:g}" if beyond[i] else ""
        details.append(f"{score}={values[i]:.3f} (rank {i + 1}{extra})")
    return _items(ranked.iloc[taken], "low_confidence", details)


def sample_feedback(preds: pd.DataFrame, feedback: pd.DataFrame | None) -> pd.DataFrame:
    """One item per 'wrong' feedback row, joined to the prediction it is about.

    A row with a request_id joins on it; a row with only an image_id joins to
    that image's latest prediction at or before the feedback (else its latest).
    Feedback on a prediction not in `preds` still gives an item, with the
    feedback's own ids and ts. An item's ts is the prediction's when known.
    """
    feedback = _prepare(
        feedback, ["request_id", "image_id", "ts", "verdict"], name="feedback"
    )
    preds = _prepare(preds, ["request_id", "image_id", "ts"], name="preds")
    wrong = feedback[feedback["verdict"] == "wrong"]
    no_id = wrong["request_id"].isna() & wrong["image_id"].isna()
    if no_id.any():
        log.warning("skipping %d 'wrong' feedback row(s) with no id", no_id.sum())
    wrong = wrong[~no_id].reset_index(drop=True)
    if wrong.empty:
        return _empty_items()
    pred_ids = preds[["request_id", "image_id", "ts"]].dropna(subset=["request_id"])
    pred_ids = pred_ids.drop_duplicates("request_id", keep="last")
    by_request = pred_ids.set_index("request_id")
    request_id = wrong["request_id"].astype(object).where(wrong["request_id"].notna())
    image_id = wrong["image_id"].astype(object).where(wrong["image_id"].notna())
    ts = wrong["ts"].copy()
    known = request_id.isin(by_request.index)
    hit = by_request.loc[request_id[known]].set_index(request_id.index[known])
    image_id[known] = hit["image_id"].astype(object)
    ts[known] = hit["ts"]
    # Image-only feedback is rare: a plain loop over those rows.
    for i in np.flatnonzero(request_id.isna() & image_id.notna()):
        seen = pred_ids[pred_ids["image_id"] == image_id.iat[i]]
        if seen.empty:
            continue
        before = seen[seen["ts"] <= wrong["ts"].iat[i]]
        latest = (before if not before.empty else seen).sort_values("ts").iloc[-1]
        request_id.iat[i] = latest["request_id"]
        ts.iat[i] = latest["ts"]
    joined = pd.DataFrame({"request_id": request_id, "image_id": image_id, "ts": ts})
    return _items(
        joined, "feedback", [_feedback_detail(r) for _, r in wrong.iterrows()]
    )


def _feedback_detail(row: pd.Series) -> str:
    text = f"customer feedback: {row['verdict']}"
    comment = row.get("comment")
    if isinstance(comment, str) and comment.strip():
        text += f' "{comment.strip()}"'
    tags = row.get("tags")
    if tags is not None and not (np.ndim(tags) == 0 and pd.isna(tags)):
        tags = [str(t) for t in (tags if np.ndim(tags) else [tags])]
        if tags:
            text += f" [{', '.join(tags)}]"
    client = row.get("client")
    if isinstance(client, str) and client:
        text += f" (client {client})"
    return text


def with_context(
    preds: pd.DataFrame, novelty: pd.DataFrame, clusters: pd.DataFrame
) -> pd.DataFrame:
    """`preds` plus each image's `novelty` and top-level k-means `cluster`.

    `novelty` and `clusters` are the similarity context's `novelty_scores` and
    `clusters`. Images it has not scored get NaN (never picked by novelty,
    never capped).
    """
    out = join_novelty(preds, novelty).drop(columns=[CLUSTER_COLUMN], errors="ignore")
    if len(clusters) and {"level", CLUSTER_COLUMN} <= set(clusters.columns):
        top = clusters[clusters["level"] == 0].drop_duplicates("image_id")
        cluster = out["image_id"].map(top.set_index("image_id")[CLUSTER_COLUMN])
        out = out.assign(**{CLUSTER_COLUMN: cluster})
    return out


# -- the queue -------------------------------------------------------------------


def build_review_queue(
    preds: pd.DataFrame,
    feedback: pd.DataFrame | None,
    config: ReviewConfig | None = None,
) -> pd.DataFrame:
    """Runs every sampler and merges their picks into one review queue.

    Each prediction (by request_id; by image_id for feedback on an unknown
    request) appears once. `reasons` are sorted by priority, `priority` is the
    best (lowest) of them, and `details` follow `reasons`' order. The queue is
    sorted by (priority, ts, request_id); empty inputs give an empty queue.

    Returns:
        Columns request_id, image_id, ts, priority, reasons, details.
    """
    config = config or ReviewConfig()
    items = [
        sample_feedback(preds, feedback),
        sample_random_per_window(preds, config.window, config.per_window, config.seed),
        sample_every_nth(preds, config.every_nth),
    ]
    if config.confidence_top_k or config.confidence_threshold is not None:
        items.append(
            sample_low_confidence(
                preds,
                config.confidence_score,
                config.confidence_top_k,
                config.confidence_threshold,
                config.cluster_cap,
            )
        )
    picks = pd.concat([i for i in items if not i.empty] or [_empty_items()])
    if picks.empty:
        return _empty_queue()
    priorities = dict(config.priorities)
    picks = picks.assign(
        priority=picks["reason"].map(priorities).astype(int),
        key=picks["request_id"].where(
            picks["request_id"].notna(), "image:" + picks["image_id"].astype(str)
        ),
    ).sort_values(["priority", "reason"], kind="stable")
    queue = picks.groupby("key", sort=False).agg(
        request_id=("request_id", "first"),
        image_id=("image_id", "first"),
        ts=("ts", "min"),
        priority=("priority", "min"),
        reasons=("reason", lambda s: list(dict.fromkeys(s))),
        details=("detail", list),
    )
    queue = queue.sort_values(["priority", "ts", "request_id"], kind="stable")
    return queue.reset_index(drop=True)[QUEUE_COLUMNS]


def _empty_queue() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": pd.Series(dtype=object),
            "image_id": pd.Series(dtype=object),
            "ts": pd.Series(dtype="datetime64[us, UTC]"),
            "priority": pd.Series(dtype=int),
            "reasons": pd.Series(dtype=object),
            "details": pd.Series(dtype=object),
        }
    )


def summary(queue: pd.DataFrame) -> dict[str, Any]:
    """Counts for a run report: items, items per reason, items with 2+ reasons."""
    per_reason = dict.fromkeys(REASONS, 0)
    for reasons in queue["reasons"]:
        for reason in reasons:
            per_reason[reason] = per_reason.get(reason, 0) + 1
    return {
        "items": len(queue),
        "per_reason": per_reason,
        "multi_reason": int(sum(len(r) > 1 for r in queue["reasons"])),
    }


# -- model health ----------------------------------------------------------------


def model_health(
    preds: pd.DataFrame, verdicts: pd.DataFrame | None = None, *, tz: str = "UTC"
) -> pd.DataFrame:
    """Confidence, traffic and reviewed error rate per hour of day (in `tz`).

    Args:
        preds: Predictions with ts and mean_max_prob.
        verdicts: Review outcomes (request_id, verdict in 'correct'|'bug'); a
            request reviewed twice counts once, with its last verdict. Verdicts
            on requests not in `preds` are ignored.
        tz: The time zone for the hour of day.

    Returns:
        24 rows, hour 0..23: n, mean_confidence (NaN for an hour without
        traffic) and, with verdicts, reviewed, bugs and error_rate (bugs /
        reviewed, NaN when none reviewed).
    """
    preds = _prepare(preds, ["request_id", "ts", "mean_max_prob"], name="preds")
    hours = pd.Index(range(24), name="hour")
    hour = preds["ts"].dt.tz_convert(tz).dt.hour
    grouped = preds.assign(hour=hour).groupby("hour")
    health = pd.DataFrame(
        {
            "n": grouped.size().reindex(hours, fill_value=0).astype(int),
            "mean_confidence": grouped["mean_max_prob"].mean().reindex(hours),
        }
    )
    if verdicts is not None:
        verdicts = _prepare(verdicts, ["request_id", "verdict"], name="verdicts")
        bad = sorted(set(verdicts["verdict"].dropna()) - set(REVIEW_VERDICTS))
        if bad or verdicts["verdict"].isna().any():
            raise ValueError(
                f"verdicts.verdict must be one of {REVIEW_VERDICTS}, "
                f"got {bad or [None]}"
            )
        if "ts" in verdicts.columns:
            verdicts = verdicts.sort_values("ts", kind="stable")
        last = verdicts.drop_duplicates("request_id", keep="last")
        reviewed = last.merge(
            preds.assign(hour=hour)[["request_id", "hour"]].drop_duplicates(
                "request_id"
            ),
            on="request_id",
        )
        by_hour = reviewed.assign(is_bug=reviewed["verdict"].eq("bug").astype(int))
        counts = by_hour.groupby("hour")["is_bug"]
        health["reviewed"] = counts.size().reindex(hours, fill_value=0).astype(int)
        health["bugs"] = counts.sum().reindex(hours, fill_value=0).astype(int)
        health["error_rate"] = health["bugs"] / health["reviewed"].where(
            health["reviewed"] > 0
        )
    return health.reset_index()


def health_figure(
    health: pd.DataFrame, *, title: str = "Model health by hour of day"
) -> Figure:
    """Traffic (bars) above mean confidence and error rate (lines), per hour.

    Builds a `matplotlib.figure.Figure` directly: no pyplot state, any backend.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    fig.suptitle(title)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(health["hour"], health["n"], color="tab:gray")
    top.set_ylabel("predictions")
    top.set_title("traffic")
    bottom.plot(
        health["hour"], health["mean_confidence"], marker="o", label="mean confidence"
    )
    if "error_rate" in health.columns:
        bottom.plot(
            health["hour"],
            health["error_rate"],
            marker="s",
            color="tab:red",
            label="error rate (reviewed)",
        )
    bottom.set_ylim(0, 1.05)
    bottom.set_xticks(range(0, 24, 2))
    bottom.set_xlabel("hour of day")
    bottom.set_ylabel("rate")
    bottom.set_title("confidence and reviewed error rate")
    bottom.legend(loc="best")
    return fig
