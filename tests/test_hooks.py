"""Run hooks: dataset fingerprints in the card (same content, same
fingerprint), and where a run's time went."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd

from edgeloop.hooks import RUN_TIMINGS_PATH, RunTimingHook, fingerprint


def _models(trained_at: str, score: float = 0.5) -> pd.DataFrame:
    meta = {"architecture": "unet", "seed": 0, "volatile": {"trained_at": trained_at}}
    return pd.DataFrame(
        {
            "model_version": ["it0-a", "it1-b"],
            "score": [0.4, score],
            "metadata_json": [json.dumps(meta), json.dumps({**meta, "seed": 1})],
            "card_uri": [f"blobs/cards/{trained_at}-a", f"blobs/cards/{trained_at}-b"],
            "created_at": pd.to_datetime([trained_at, trained_at], utc=True),
        }
    )


def test_table_fingerprints_ignore_row_order_and_when_rows_were_written():
    a, b = _models("2030-01-01"), _models("2031-05-05")
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) == fingerprint(b.iloc[::-1])
    assert fingerprint(a) != fingerprint(_models("2030-01-01", score=0.6))
    bugs = pd.DataFrame(
        {"event_id": ["e1"], "bug_id": ["bug-night-1"], "status": ["open"],
         "ts": pd.to_datetime(["2030-01-01"], utc=True)}
    )  # fmt: skip
    later = bugs.assign(ts=pd.to_datetime(["2031-01-01"], utc=True))
    assert fingerprint(bugs) == fingerprint(later)
    assert fingerprint(bugs) != fingerprint(bugs.assign(status="fixed"))
    # Elsewhere `ts` is data (e.g. when a prediction was made).
    preds = pd.DataFrame({"request_id": ["r"], "ts": bugs["ts"]})
    assert fingerprint(preds) != fingerprint(preds.assign(ts=later["ts"]))


def test_run_timings_are_written_in_order_with_failures_marked(tmp_path, caplog):
    hook = RunTimingHook(top=1)
    params = {"project_path": str(tmp_path), "pipeline_names": ["training"],
              "env": "ci", "runtime_params": {"iteration": 1}}  # fmt: skip
    fast, slow = SimpleNamespace(name="fast"), SimpleNamespace(name="slow")
    hook.before_pipeline_run(params)
    hook.before_node_run(fast)
    hook.after_node_run(fast)
    hook.before_node_run(slow)
    time.sleep(0.05)
    hook.after_node_run(slow)
    with caplog.at_level(logging.INFO, logger="edgeloop.hooks"):
        hook.after_pipeline_run(params)
    record = json.loads((tmp_path / RUN_TIMINGS_PATH).read_text())
    assert [n["node"] for n in record["nodes"]] == ["fast", "slow"]
    assert [n["status"] for n in record["nodes"]] == ["ok", "ok"]
    fast_s, slow_s = (n["seconds"] for n in record["nodes"])
    assert 0 <= fast_s < 0.05 <= slow_s <= record["total_seconds"]
    assert (record["status"], record["env"]) == ("ok", "ci")
    assert record["pipeline_names"] == ["training"]
    assert record["runtime_params"] == {"iteration": 1}
    # The log names only the slowest node (top=1).
    assert "slowest nodes: slow " in caplog.text and "fast" not in caplog.text

    # A failing run replaces the file; its failing node is marked.
    hook.before_pipeline_run(params)
    hook.before_node_run(slow)
    hook.on_node_error(slow)
    hook.on_pipeline_error(params)
    record = json.loads((tmp_path / RUN_TIMINGS_PATH).read_text())
    assert record["status"] == "failed"
    assert record["nodes"] == [
        {"node": "slow", "seconds": record["nodes"][0]["seconds"], "status": "failed"}
    ]
    # A node that never started is not recorded; a second finish writes nothing.
    hook.after_node_run(fast)
    (tmp_path / RUN_TIMINGS_PATH).unlink()
    hook.after_pipeline_run(params)
    assert not (tmp_path / RUN_TIMINGS_PATH).exists()


def test_project_settings_import_without_torch():
    # Kedro imports settings (and so the hooks) at every CLI start, `--help` too.
    code = "import sys, edgeloop.settings; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
