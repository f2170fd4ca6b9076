"""edgeloop.lsrle against label-studio-sdk's brush RLE (``converter/brush.py``)."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter import brush

from edgeloop.lsrle import RleError, decode, encode

KINDS = ("sparse", "dense", "striped", "blobs", "empty", "full", "checker")


def make_mask(height: int, width: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    if kind == "sparse":
        return rng.random((height, width)) < 0.05
    if kind == "dense":
        return rng.random((height, width)) < 0.9
    if kind == "striped":
        period = int(rng.integers(1, 9))
        axis = xx if rng.random() < 0.5 else yy
        return (axis // period) % 2 == 0
    if kind == "blobs":
        mask = np.zeros((height, width), dtype=bool)
        for _ in range(int(rng.integers(1, 5))):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.5, height), rng.uniform(0.5, width)
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        return mask
    if kind == "empty":
        return np.zeros((height, width), dtype=bool)
    if kind == "full":
        return np.ones((height, width), dtype=bool)
    return (yy + xx) % 2 == 0


masks = st.builds(
    make_mask,
    st.integers(1, 64),
    st.integers(1, 64),
    st.sampled_from(KINDS),
    st.integers(0, 2**32 - 1),
)


def sdk_rle(mask: np.ndarray) -> list[int]:
    return brush.mask2rle(mask.astype(np.uint8) * 255)


def sdk_alpha(rle: list[int], height: int, width: int) -> np.ndarray:
    # decode_from_annotation keeps channel 3 (alpha) of the flat RGBA output.
    return brush.decode_rle(rle).reshape(height, width, 4)[:, :, 3]


def stream(num, chunks, *, word=8, widths=(3, 4, 8, 16), padding="0"):
    """Hand-built RLE: chunks are ("run", sel, count, value) or ("lit", sel, words)."""
    bits = f"{num:032b}{word - 1:05b}" + "".join(f"{x - 1:04b}" for x in widths)
    for chunk in chunks:
        kind, sel, *rest = chunk
        if kind == "run":
            count, values = rest[0], [rest[1]]
        else:
            count, values = len(rest[0]), rest[0]
        bits += ("1" if kind == "run" else "0") + f"{sel:02b}"
        bits += f"{count - 1:0{widths[sel]}b}"
        bits += "".join(f"{v:0{word}b}" for v in values)
    bits += padding * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


@settings(max_examples=60, deadline=None)
@given(masks)
def test_encode_matches_sdk_mask2rle(mask):
    assert encode(mask) == sdk_rle(mask)


@settings(max_examples=60, deadline=None)
@given(masks)
def test_round_trip(mask):
    out = decode(encode(mask), *mask.shape)
    assert out.dtype == bool
    assert out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)


@settings(max_examples=60, deadline=None)
@given(masks)
def test_decode_matches_sdk_decode_rle(mask):
    rle = sdk_rle(mask)
    alpha = sdk_alpha(rle, *mask.shape)
    np.testing.assert_array_equal(alpha, mask * 255)
    np.testing.assert_array_equal(decode(rle, *mask.shape), alpha > 0)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 1.0),
)
def test_decode_general_rgba_streams(height, width, seed, repeat):
    # Arbitrary RGBA bytes: the SDK writes single values as literal chunks.
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (height, width, 4))
    rgba[rng.random((height, width)) < 0.4] = 0
    rgba[rng.random((height, width)) < repeat] = 255
    rle = brush.encode_rle(rgba.ravel())
    alpha = sdk_alpha(rle, height, width)
    np.testing.assert_array_equal(alpha, rgba[:, :, 3])
    np.testing.assert_array_equal(decode(rle, height, width), alpha > 0)


def test_decode_multi_word_literals_and_other_widths():
    # rle-pack (Label Studio's front end) groups literals; widths may differ.
    rgba = [1, 2, 3, 0, 9, 9, 9, 7, 0, 0, 0, 0, 5, 5, 5, 5, 5, 5, 5, 5]
    rle = stream(
        20,
        [("lit", 1, rgba[:8]), ("run", 3, 4, 0), ("run", 2, 8, 5)],
        widths=(1, 16, 5, 2),
    )
    assert brush.decode_rle(rle).tolist() == rgba
    np.testing.assert_array_equal(decode(rle, 1, 5), [[0, 1, 0, 1, 1]])


def test_accepts_bool_01_0255_masks_and_sequences():
    mask = make_mask(7, 9, "blobs", 3)
    rle = encode(mask)
    assert encode(mask.astype(np.uint8)) == rle
    assert encode(mask.astype(np.uint8) * 255) == rle
    assert encode(mask.astype(np.int64)) == rle
    for given_rle in (rle, tuple(rle), bytes(rle), np.asarray(rle)):
        np.testing.assert_array_equal(decode(given_rle, 7, 9), mask)


def realistic_mask() -> np.ndarray:
    yy, xx = np.mgrid[:360, :480]
    rng = np.random.default_rng(7)
    mask = ((yy - 180) / 90) ** 2 + ((xx - 200) / 150) ** 2 < 1
    mask |= (yy > 250) & (xx > 300) & (xx < 420)
    mask ^= rng.random(mask.shape) < 0.002
    return mask


def test_realistic_360x480_round_trip_and_sdk():
    mask = realistic_mask()
    start = time.perf_counter()
    rle = encode(mask)
    out = decode(rle, 360, 480)
    assert time.perf_counter() - start < 0.5  # each takes milliseconds
    np.testing.assert_array_equal(out, mask)
    assert rle == sdk_rle(mask)


@pytest.mark.parametrize("run", [16383, 16384, 16385, 16448, 16449, 40000])
def test_long_runs_split_like_sdk(run):
    # 65536 values (16384 pixels) fit one chunk; the SDK splits longer runs.
    mask = np.zeros((1, run + 3), dtype=bool)
    mask[0, -2] = True
    rle = encode(mask)
    assert rle == sdk_rle(mask)
    np.testing.assert_array_equal(decode(rle, *mask.shape), mask)
    np.testing.assert_array_equal(decode(rle, *mask.shape, max_pixels=run + 3), mask)


def test_huge_header_rejected_before_allocating():
    side = 30_000  # 3.6e9 values: near the 32-bit header's limit of ~4.3e9
    rle = stream(4 * side * side, [("run", 3, 65536, 255)])
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(RleError, match="max_pixels"):
            decode(rle, side, side)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5
    assert peak < 1_000_000
    with pytest.raises(RleError, match="max_pixels"):
        decode(stream(2**32 - 1, []), 2, 2)
    with pytest.raises(RleError, match="max_pixels"):
        decode(encode(np.ones((10, 10))), 10, 10, max_pixels=99)


def test_wrong_size():
    rle = encode(make_mask(12, 10, "dense", 1))
    with pytest.raises(RleError, match="declares 480 values but a 10x13"):
        decode(rle, 10, 13)
    with pytest.raises(RleError, match="declares 480 values"):
        decode(rle, 12, 11)


def test_truncated():
    rle = encode(make_mask(20, 30, "sparse", 2))
    for cut in (1, 2, len(rle) // 2, len(rle) - 7):
        with pytest.raises(RleError, match="truncated"):
            decode(rle[:-cut], 20, 30)
    with pytest.raises(RleError, match="truncated"):
        decode([], 20, 30)
    # The last chunk's count field is cut off.
    with pytest.raises(RleError, match="truncated"):
        decode(stream(8, [("run", 0, 4, 0)])[:9] + [128], 1, 2)


def test_trailing_data_and_padding():
    rle = encode(make_mask(5, 6, "dense", 4))
    for extra in ([0], [0, 0], [1], [0] * 1000):
        with pytest.raises(RleError, match="trailing data|padding"):
            decode(rle + extra, 5, 6)
    with pytest.raises(RleError, match="padding"):
        decode(stream(4, [("run", 0, 4, 255)], padding="1"), 1, 1)
    # Zero padding of 0..7 bits (rle-pack) and a whole zero byte (SDK) are fine.
    rle = stream(8, [("run", 0, 4, 255), ("run", 0, 4, 0)])  # 53 + 2 * 14 bits
    np.testing.assert_array_equal(decode(rle, 1, 2), [[True, False]])
    for padding in ([], [0]):
        rle = stream(8, [("run", 2, 8, 255)]) + padding  # 53 + 19 = 72 bits
        np.testing.assert_array_equal(decode(rle, 1, 2), [[True, True]])


def test_chunks_overrunning_the_declared_count():
    with pytest.raises(RleError, match="more than the declared 8"):
        decode(stream(8, [("run", 0, 4, 0), ("run", 1, 12, 0)]), 2, 1)


@pytest.mark.parametrize("bad", [256, -1, 1.5, "7", None, 2**70])
def test_out_of_range_or_non_int_values(bad):
    rle = encode(np.ones((3, 3), dtype=bool))
    rle[-1] = bad
    with pytest.raises(RleError, match="ints 0..255"):
        decode(rle, 3, 3)


def test_bad_arrays_and_strings():
    rle = encode(np.ones((3, 3), dtype=bool))
    for bad in (np.asarray(rle, dtype=float), np.asarray(rle) + 300, "abc"):
        with pytest.raises(RleError):
            decode(bad, 3, 3)
    with pytest.raises(RleError, match="1-D"):
        decode(np.asarray([rle]), 3, 3)


def test_word_size_other_than_8():
    with pytest.raises(RleError, match="word size is 4"):
        decode(stream(4, [("run", 0, 4, 15)], word=4), 1, 1)


@pytest.mark.parametrize("height,width", [(0, 3), (3, -1), (2.0, 3), (True, 3)])
def test_bad_dimensions(height, width):
    with pytest.raises(RleError, match=r"(height|width) must be an integer >= 1"):
        decode(encode(np.ones((3, 3))), height, width)


def test_encode_rejects_bad_masks():
    for bad in (np.ones((2, 2, 4)), np.ones(5), np.zeros((0, 4)), [["a"]]):
        with pytest.raises(ValueError, match="mask"):
            encode(bad)


def test_rle_error_is_value_error():
    assert issubclass(RleError, ValueError)
