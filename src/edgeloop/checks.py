"""Argument checks shared by the modules that take counts from parameters."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    error: type[Exception] = ValueError,
) -> int:
    """`value` as an int, if it is an integer (not a bool) >= `minimum`.

    Python and NumPy integers pass; bools, floats (even 3.0) and strings do
    not, so a typo in a parameter file fails loudly instead of being rounded.

    Raises:
        error: (ValueError unless given) naming `name`, the bound and the
            value, e.g. "k must be an integer >= 1, got 0".
    """
    bound = "" if minimum is None else f" >= {minimum}"
    if (
        isinstance(value, bool | np.bool_)
        or not isinstance(value, int | np.integer)
        or (minimum is not None and value < minimum)
    ):
        raise error(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)
