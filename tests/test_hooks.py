"""Dataset fingerprints in the card: same content, same fingerprint."""

from __future__ import annotations

import json

import pandas as pd

from edgeloop.hooks import fingerprint


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
