"""The one switch for every progress bar."""

from __future__ import annotations

import io

import pytest

from edgeloop.progress import ENV, enabled, tqdm


@pytest.mark.parametrize("value", ["0", "false", "No", " off "])
def test_the_switch_turns_every_bar_off(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    out = io.StringIO()
    # Even a bar its caller asked to show: the switch wins.
    assert list(tqdm(range(3), file=out, disable=False)) == [0, 1, 2]
    assert not enabled() and out.getvalue() == ""


@pytest.mark.parametrize("value", [None, "1", "yes"])
def test_bars_show_unless_switched_off(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    out = io.StringIO()
    assert list(tqdm(range(3), desc="work", file=out)) == [0, 1, 2]
    assert enabled() and "work" in out.getvalue() and "3/3" in out.getvalue()
    # A caller's own disable still holds.
    quiet = io.StringIO()
    list(tqdm(range(3), file=quiet, disable=True))
    assert quiet.getvalue() == ""
