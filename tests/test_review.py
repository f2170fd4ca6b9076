"""Review sampling: windows, every Nth, low confidence, feedback, the queue, health."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from edgeloop.lake import SCHEMAS
from edgeloop.review import (
    QUEUE_COLUMNS,
    ReviewConfig,
    build_review_queue,
    health_figure,
    model_health,
    sample_every_nth,
    sample_feedback,
    sample_low_confidence,
    sample_random_per_window,
    summary,
)

T0 = pd.Timestamp("2026-01-05 10:00", tz="UTC")


def _preds(ts: list[pd.Timestamp] | pd.DatetimeIndex, **scores: list) -> pd.DataFrame:
    n = len(ts)
    frame = pd.DataFrame(
        {
            "request_id": [f"r{i:05d}" for i in range(n)],
            "ts": list(ts),
            "image_id": [f"img{i:05d}" for i in range(n)],
            "mean_max_prob": np.linspace(0.5, 0.99, n) if n else [],
        }
    )
    for name, values in scores.items():
        frame[name] = values
    return frame


def _minutes(start: pd.Timestamp, n: int, step: str = "1min") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq=step)


def _picked(items: pd.DataFrame) -> list[str]:
    return items["request_id"].tolist()


# -- random per window -----------------------------------------------------------


def test_random_per_window_takes_k_per_window_or_all_of_a_small_one():
    ts = (
        list(_minutes(T0, 5, "7min"))  # 10:00-10:28: 5
        + [T0 + pd.Timedelta("1h30min")]  # 11:30: 1
        + list(_minutes(T0 + pd.Timedelta("2h"), 4, "10min"))  # 12:00-12:30: 4
    )
    items = sample_random_per_window(_preds(ts), "1h", 2, 0)
    hours = items["ts"].dt.floor("1h").dt.hour.value_counts().sort_index()
    assert hours.to_dict() == {10: 2, 11: 1, 12: 2}
    assert (items["reason"] == "random_window").all()
    assert "random 2/window 2026-01-05 10:00 (5 in window)" in set(items["detail"])


def test_random_window_length_changes_the_buckets():
    preds = _preds(_minutes(T0, 60))  # one hour, one per minute
    hourly = sample_random_per_window(preds, "1h", 2, 0)
    half_hourly = sample_random_per_window(preds, "30min", 2, 0)
    assert len(hourly) == 2
    assert len(half_hourly) == 4
    halves = (half_hourly["ts"] >= T0 + pd.Timedelta("30min")).value_counts()
    assert halves.to_dict() == {False: 2, True: 2}


def test_random_per_window_is_deterministic_and_stable_under_new_windows():
    preds = _preds(_minutes(T0, 180))  # three hours
    first = sample_random_per_window(preds, "1h", 3, seed=7)
    again = sample_random_per_window(preds.sample(frac=1.0, random_state=1), "1h", 3, 7)
    assert _picked(first) == _picked(again)  # input row order does not matter
    other_seed = sample_random_per_window(preds, "1h", 3, seed=8)
    assert _picked(first) != _picked(other_seed)

    later = _preds(_minutes(T0, 300))  # two more hours of traffic
    extended = sample_random_per_window(later, "1h", 3, seed=7)
    early = extended[extended["ts"] < T0 + pd.Timedelta("3h")]
    assert _picked(early) == _picked(first)
    assert len(extended) == 15


def test_random_per_window_k_zero_and_empty_input():
    preds = _preds(_minutes(T0, 10))
    assert sample_random_per_window(preds, "1h", 0, 0).empty
    empty = sample_random_per_window(preds.iloc[:0], "1h", 2, 0)
    assert empty.empty
    assert list(empty.columns) == ["request_id", "image_id", "ts", "reason", "detail"]


# -- every Nth -------------------------------------------------------------------


def test_every_nth_picks_exact_positions_in_time_order():
    preds = _preds(_minutes(T0, 10))
    shuffled = preds.sample(frac=1.0, random_state=3)
    items = sample_every_nth(shuffled, 3)
    assert _picked(items) == ["r00002", "r00005", "r00008"]
    assert items["detail"].tolist() == [
        "every 3rd (#3)",
        "every 3rd (#6)",
        "every 3rd (#9)",
    ]
    assert sample_every_nth(preds, 0).empty
    assert sample_every_nth(preds, 11).empty


def test_every_nth_breaks_timestamp_ties_by_request_id():
    preds = _preds([T0] * 4)
    preds["request_id"] = ["d", "b", "a", "c"]
    assert _picked(sample_every_nth(preds, 2)) == ["b", "d"]


# -- the burst: why both samplers exist ---------------------------------------------


def test_burst_hour_every_nth_follows_traffic_random_window_does_not():
    steady = _minutes(T0, 600)  # 1 per minute, 10:00-19:59
    burst_start = T0 + pd.Timedelta("4h")  # 14:00
    burst = _minutes(burst_start + pd.Timedelta("3s"), 600, "6s")  # 600 in 14:xx
    preds = _preds(list(steady) + list(burst))
    in_burst_hour = preds["ts"].dt.floor("1h") == burst_start
    traffic_share = in_burst_hour.mean()
    assert traffic_share == pytest.approx(660 / 1200)

    nth = sample_every_nth(preds, 50)
    assert len(nth) == 24
    nth_share = (nth["ts"].dt.floor("1h") == burst_start).mean()
    assert abs(nth_share / traffic_share - 1) <= 0.2

    rnd = sample_random_per_window(preds, "1h", 2, 0)
    per_hour = rnd["ts"].dt.floor("1h").value_counts()
    assert len(per_hour) == 10 and (per_hour == 2).all()  # the burst gets k too
    rnd_share = (rnd["ts"].dt.floor("1h") == burst_start).mean()
    assert rnd_share == pytest.approx(0.1)
    assert rnd_share < traffic_share / 4  # under-samples the burst vs traffic


# -- low confidence --------------------------------------------------------------


def test_low_confidence_low_max_prob_is_doubtful():
    preds = _preds(_minutes(T0, 5))
    preds["mean_max_prob"] = [0.9, 0.2, 0.5, 0.1, 0.7]
    top = sample_low_confidence(preds, "mean_max_prob", 2, None, None)
    assert _picked(top) == ["r00003", "r00001"]
    assert top["detail"].tolist() == [
        "mean_max_prob=0.100 (rank 1)",
        "mean_max_prob=0.200 (rank 2)",
    ]
    below = sample_low_confidence(preds, "mean_max_prob", 0, 0.6, None)
    assert _picked(below) == ["r00003", "r00001", "r00002"]
    assert below["detail"].iat[2] == "mean_max_prob=0.500 (rank 3, below 0.6)"
    # top_k and threshold: the union, ranked.
    both = sample_low_confidence(preds, "mean_max_prob", 4, 0.3, None)
    assert _picked(both) == ["r00003", "r00001", "r00002", "r00004"]


def test_low_confidence_high_entropy_is_doubtful():
    preds = _preds(_minutes(T0, 5), mean_entropy=[0.3, 1.2, np.nan, 0.9, 0.1])
    top = sample_low_confidence(preds, "mean_entropy", 2, None, None)
    assert _picked(top) == ["r00001", "r00003"]
    above = sample_low_confidence(preds, "mean_entropy", 0, 0.25, None)
    assert _picked(above) == ["r00001", "r00003", "r00000"]  # NaN skipped
    assert above["detail"].iat[0] == "mean_entropy=1.200 (rank 1, above 0.25)"


def test_low_confidence_rejects_unknown_score():
    with pytest.raises(ValueError, match="score must be one of"):
        sample_low_confidence(_preds(_minutes(T0, 2)), "accuracy", 1, None, None)


def test_cluster_cap_keeps_at_most_cap_and_fills_from_further_down():
    preds = _preds(_minutes(T0, 7))
    preds["mean_max_prob"] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    preds["cluster"] = [0, 0, 0, 0, 1, 2, 2]
    items = sample_low_confidence(preds, "mean_max_prob", 4, None, 2)
    assert _picked(items) == ["r00000", "r00001", "r00004", "r00005"]
    assert items["detail"].iat[2] == "mean_max_prob=0.500 (rank 5, cluster 1)"
    counts = preds.set_index("request_id").loc[_picked(items), "cluster"]
    assert counts.value_counts().max() <= 2
    # No cap: plain top-k.
    uncapped = sample_low_confidence(preds, "mean_max_prob", 4, None, None)
    assert _picked(uncapped) == ["r00000", "r00001", "r00002", "r00003"]


# -- feedback --------------------------------------------------------------------


def _feedback(rows: list[dict]) -> pd.DataFrame:
    base = {"comment": None, "tags": [], "client": None, "request_id": None}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_feedback_only_wrong_joined_by_request_and_by_image():
    preds = _preds(_minutes(T0, 4))
    preds.loc[3, "image_id"] = "img00002"  # image 2 sent again at 10:03
    fb_ts = T0 + pd.Timedelta("150s")  # 10:02:30, between the two sends
    feedback = _feedback(
        [
            {
                "request_id": "r00001",
                "image_id": None,
                "ts": fb_ts,
                "verdict": "wrong",
                "comment": "missed the jet",
                "tags": np.array(["night", "fog"]),
            },
            {"request_id": "r00000", "image_id": None, "ts": fb_ts, "verdict": "ok"},
            {"image_id": "img00002", "ts": fb_ts, "verdict": "wrong"},
            {
                "request_id": "gone",
                "image_id": "imgX",
                "ts": fb_ts,
                "verdict": "wrong",
                "tags": ["other"],
            },
        ]
    )
    items = sample_feedback(preds, feedback)
    assert _picked(items) == ["r00001", "r00002", "gone"]
    assert items["image_id"].tolist() == ["img00001", "img00002", "imgX"]
    assert items["ts"].tolist() == [
        T0 + pd.Timedelta("1min"),
        T0 + 2 * pd.Timedelta("1min"),
        fb_ts,
    ]
    assert (
        items["detail"].iat[0]
        == 'customer feedback: wrong "missed the jet" [night, fog]'
    )
    assert "[other]" in items["detail"].iat[2]
    assert (items["reason"] == "feedback").all()


def test_feedback_image_only_with_no_prediction_keeps_the_image():
    feedback = _feedback([{"image_id": "imgZ", "ts": T0, "verdict": "wrong"}])
    items = sample_feedback(_preds([]), feedback)
    assert items["image_id"].tolist() == ["imgZ"]
    assert items["request_id"].isna().all()
    assert sample_feedback(_preds([]), None).empty


# -- the queue -------------------------------------------------------------------


def test_queue_merges_duplicates_and_orders_by_priority():
    preds = _preds(_minutes(T0, 4))
    preds["mean_max_prob"] = [0.9, 0.1, 0.8, 0.7]
    config = ReviewConfig.from_params(
        {"per_window": 0, "every_nth": 2, "confidence_top_k": 1}
    )
    queue = build_review_queue(preds, None, config)
    assert list(queue.columns) == QUEUE_COLUMNS
    assert _picked(queue) == ["r00001", "r00003"]
    first = queue.iloc[0]
    assert first["reasons"] == ["low_confidence", "every_nth"]
    assert first["priority"] == 1
    assert first["details"] == ["mean_max_prob=0.100 (rank 1)", "every 2nd (#2)"]
    assert queue.iloc[1]["priority"] == 2

    # Feedback on the every-Nth item puts it first.
    feedback = _feedback(
        [{"request_id": "r00003", "image_id": "img00003", "ts": T0, "verdict": "wrong"}]
    )
    queue = build_review_queue(preds, feedback, config)
    assert _picked(queue) == ["r00003", "r00001"]
    assert queue["reasons"].iat[0] == ["feedback", "every_nth"]
    assert queue["priority"].tolist() == [0, 1]
    assert summary(queue) == {
        "items": 2,
        "per_reason": {
            "feedback": 1,
            "low_confidence": 1,
            "every_nth": 2,
            "random_window": 0,
        },
        "multi_reason": 2,
    }


def test_queue_priorities_are_configurable_and_ties_go_by_time():
    preds = _preds(_minutes(T0, 4))
    preds["mean_max_prob"] = [0.9, 0.8, 0.7, 0.1]
    config = ReviewConfig.from_params(
        {
            "per_window": 0,
            "every_nth": 2,
            "confidence_top_k": 1,
            "priorities": {"every_nth": 0},
        }
    )
    queue = build_review_queue(preds, None, config)
    assert _picked(queue) == ["r00001", "r00003"]  # both priority 0: by ts
    assert queue["reasons"].iat[1] == ["every_nth", "low_confidence"]


def test_empty_inputs_give_an_empty_queue():
    lake_preds = SCHEMAS["predictions"].empty_table().to_pandas()
    lake_feedback = SCHEMAS["feedback"].empty_table().to_pandas()
    for preds, feedback in [
        (lake_preds, lake_feedback),
        (pd.DataFrame(), None),
    ]:
        queue = build_review_queue(preds, feedback, ReviewConfig())
        assert queue.empty
        assert list(queue.columns) == QUEUE_COLUMNS
        assert summary(queue)["items"] == 0


# -- model health ----------------------------------------------------------------


def test_model_health_per_hour_with_error_rate():
    hour3 = pd.Timestamp("2026-01-05 03:10", tz="UTC")
    hour15 = pd.Timestamp("2026-01-06 15:40", tz="UTC")
    preds = _preds([hour3, hour3, hour3, hour15, hour15])
    preds["mean_max_prob"] = [0.9, 0.8, 0.7, 0.5, 0.3]
    verdicts = pd.DataFrame(
        {
            "request_id": ["r00000", "r00001", "r00002", "r00002", "nope"],
            "verdict": ["bug", "correct", "bug", "correct", "bug"],
        }
    )
    health = model_health(preds, verdicts)
    assert health["hour"].tolist() == list(range(24))
    assert health["n"].sum() == 5
    h3, h15 = health.set_index("hour").loc[3], health.set_index("hour").loc[15]
    assert h3["n"] == 3 and h3["mean_confidence"] == pytest.approx(0.8)
    assert h3["reviewed"] == 3 and h3["bugs"] == 1  # r00002's last verdict counts
    assert h3["error_rate"] == pytest.approx(1 / 3)
    assert h15["mean_confidence"] == pytest.approx(0.4)
    assert h15["reviewed"] == 0 and math.isnan(h15["error_rate"])
    assert math.isnan(health.set_index("hour").loc[0, "mean_confidence"])
    assert "error_rate" not in model_health(preds).columns

    fig = health_figure(health)
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() == "Model health by hour of day"
    assert [ax.get_xlabel() for ax in fig.axes][-1] == "hour of day"


def test_model_health_rejects_unknown_verdicts():
    preds = _preds(_minutes(T0, 2))
    verdicts = pd.DataFrame({"request_id": ["r00000"], "verdict": ["wrong"]})
    with pytest.raises(ValueError, match=r"verdicts\.verdict must be one of"):
        model_health(preds, verdicts)


# -- config ----------------------------------------------------------------------


def test_config_defaults_and_overrides():
    assert ReviewConfig.from_params({}) == ReviewConfig()
    config = ReviewConfig.from_params(
        {
            "window": "30min",
            "confidence_score": "mean_entropy",
            "confidence_threshold": 1,
            "cluster_cap": None,
            "priorities": {"random_window": 5},
        }
    )
    assert config.window == "30min"
    assert config.confidence_threshold == 1.0
    assert config.cluster_cap is None
    assert config.priority("random_window") == 5
    assert config.priority("feedback") == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window": "soon"}, r"review\.window"),
        ({"window": "1MS"}, r"review\.window"),  # not fixed-length
        ({"per_window": -1}, r"review\.per_window must be an integer >= 0, got -1"),
        ({"every_nth": 2.5}, r"review\.every_nth must be an integer >= 0, got 2\.5"),
        ({"confidence_score": "accuracy"}, r"review\.confidence_score"),
        ({"confidence_top_k": True}, r"review\.confidence_top_k"),
        ({"confidence_threshold": "low"}, r"review\.confidence_threshold"),
        ({"cluster_cap": 0}, r"review\.cluster_cap must be an integer >= 1, got 0"),
        ({"seed": "x"}, r"review\.seed must be an integer, got 'x'"),
        ({"priorities": {"gut_feeling": 0}}, r"review\.priorities.*gut_feeling"),
        ({"priorities": {"feedback": "high"}}, r"review\.priorities\.feedback"),
        ({"windw": "1h"}, r"unknown parameter.*windw"),
    ],
)
def test_config_errors_name_the_parameter(params, message):
    with pytest.raises(ValueError, match=message):
        ReviewConfig.from_params(params)
