import numpy as np
import pytest

from edgeloop.checks import check_int
from edgeloop.lsrle import RleError


@pytest.mark.parametrize("value", [0, 3, np.int64(7), np.uint8(2)])
def test_integers_pass_as_int(value):
    out = check_int(value, "n", minimum=0)
    assert out == int(value)
    assert type(out) is int


@pytest.mark.parametrize(
    ("value", "minimum", "message"),
    [
        (0, 1, "n must be an integer >= 1, got 0"),
        (-1, 0, "n must be an integer >= 0, got -1"),
        (2.0, 1, "n must be an integer >= 1, got 2.0"),
        ("3", 1, "n must be an integer >= 1, got '3'"),
        (True, 0, "n must be an integer >= 0, got True"),
        (np.bool_(True), 0, "n must be an integer >= 0, got "),
        (None, None, "n must be an integer, got None"),
    ],
)
def test_non_integers_and_values_below_the_bound_fail_naming_them(
    value, minimum, message
):
    with pytest.raises(ValueError) as err:
        check_int(value, "n", minimum=minimum)
    assert str(err.value).startswith(message)


def test_without_a_bound_any_integer_passes():
    assert check_int(-5, "seed") == -5


def test_the_error_type_is_the_callers():
    with pytest.raises(RleError, match="height must be an integer >= 1, got 0"):
        check_int(0, "height", minimum=1, error=RleError)
