"""One switch for every progress bar: `EDGELOOP_PROGRESS=0` turns them off.

Long work shows a tqdm bar (ingest, scoring, embedding, training epochs, the
Optuna sweep, the simulator's stages). Benchmarks and CI logs can silence all
of them at once, pipelines included, with the environment variable; it is read
when a bar is made, so setting it in a running process works.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm as _tqdm

ENV = "EDGELOOP_PROGRESS"


def enabled() -> bool:
    """False when EDGELOOP_PROGRESS is 0, false, no or off."""
    value = os.environ.get(ENV, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def tqdm(*args: Any, **kwargs: Any) -> _tqdm:
    """`tqdm.auto.tqdm`, disabled when the switch is off."""
    if not enabled():
        kwargs["disable"] = True
    return _tqdm(*args, **kwargs)
