"""Card rendering, provenance fingerprints and the reproduce comparison."""

import numpy as np
import pandas as pd

from edgeloop.card import clean, strip_volatile
from edgeloop.hooks import fingerprint
from edgeloop.reproduce import compare_cards, flatten


def test_strip_volatile_and_clean():
    card = {"a": 1, "volatile": {"t": "now"}}
    assert strip_volatile(card) == {"a": 1}
    assert clean({"x": float("nan"), "y": (1, np.float32(2.5))}) == {
        "x": None,
        "y": [1, 2.5],
    }


def test_compare_cards_ignores_volatile_and_reports_leaf_paths():
    a = {
        "model": {"weights_hash": "h1"},
        "results": {"slices": [{"slice": "all", "new": 0.5}]},
        "volatile": {"created_at": "1"},
        "reproducibility": {"env": "ci", "datasets": {"x": {"fingerprint": "f"}}},
    }
    b = {
        "model": {"weights_hash": "h1"},
        "results": {"slices": [{"slice": "all", "new": 0.4}]},
        "volatile": {"created_at": "2"},
        "reproducibility": {"env": "reproduce", "datasets": {}},
    }
    diffs = compare_cards(a, b)
    assert [(d.path, d.expected, d.got) for d in diffs] == [
        ("results.slices[0].new", 0.5, 0.4)
    ]
    assert dict(flatten({"a": [{"b": 1}], "c": [1, 2]})) == {"a[0].b": 1, "c": [1, 2]}


def test_fingerprint_ignores_write_times_but_not_content():
    df = pd.DataFrame({"image_id": ["a"], "tags": [np.array(["x"])], "created_at": [1]})
    same = df.assign(created_at=[2])
    other = df.assign(image_id=["b"])
    assert fingerprint(df) == fingerprint(same)
    assert fingerprint(df) != fingerprint(other)
    assert fingerprint({"k": 1}) == fingerprint({"k": 1})
    assert fingerprint(object()) is None
