"""Label Studio brush RLE: the ``rle`` field of ``BrushLabels`` results.

This is Label Studio's own bit-packed format (thi.ng ``rle-pack``), not COCO RLE.
The stream is a list of bytes (ints 0..255) read as MSB-first bits:

* a 53-bit header: the number ``n`` of decoded values (32 bits), the word size
  minus one (5 bits; always 7, i.e. 8-bit words) and four count-field widths minus
  one (4 bits each; Label Studio writes widths 3, 4, 8 and 16);
* chunks until ``n`` values are produced: a flag bit (1 = run, 0 = literals), a
  2-bit index choosing one of the four widths, ``count - 1`` in that many bits,
  then one word repeated ``count`` times (run) or ``count`` words (literals);
* zero bits up to a byte boundary (label-studio-sdk adds a whole zero byte when
  the stream is already aligned).

The values are the image's RGBA bytes in row-major order, so ``n == 4 * H * W``;
the mask is the alpha channel, the one label-studio-sdk exports (``[..., 3]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeloop.checks import check_int

__all__ = ["RleError", "decode", "declared_pixels", "encode"]

_HEADER_BITS = 53
_WORD = 8
_WIDTHS = (3, 4, 8, 16)  # count-field widths Label Studio writes
_MAX_RUN = 1 << 16  # values one chunk can hold with a 16-bit count field
# The most bits any encoding may spend per value: a one-word literal chunk with a
# 16-bit count field. Bounds a valid stream's length by its declared value count.
_MAX_BITS_PER_VALUE = 1 + 2 + 16 + _WORD


class RleError(ValueError):
    """A brush RLE stream is malformed or does not describe the expected image."""


def _header(num: int) -> np.ndarray:
    """The 53 header bits for ``num`` values, 8-bit words and ``_WIDTHS``."""
    value = num
    value = (value << 5) | (_WORD - 1)
    for width in _WIDTHS:
        value = (value << 4) | (width - 1)
    raw = np.frombuffer(value.to_bytes(8, "big"), dtype=np.uint8)
    return np.unpackbits(raw)[64 - _HEADER_BITS :]


def encode(mask: np.ndarray) -> list[int]:
    """Encode one class's (H, W) mask as Label Studio brush RLE.

    Any non-zero pixel is foreground (bool, 0/1 and 0/255 masks all work). The
    result is bit-identical to label-studio-sdk's ``mask2rle`` of the mask as a
    0/255 ``uint8`` array: every pixel becomes four equal RGBA bytes, 255 or 0.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    if m.size == 0:
        raise ValueError(f"mask must not be empty, got shape {m.shape}")
    if m.dtype.kind not in "biuf":
        raise ValueError(f"mask must be boolean or numeric, got dtype {m.dtype}")
    num = 4 * m.size
    if num >= 1 << 32:
        raise ValueError(f"mask of {m.size} pixels is too big for a 32-bit header")

    flat = (m != 0).ravel()
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], starts))
    lengths = np.diff(np.append(starts, flat.size)) * 4  # values per run
    values = flat[starts]

    # Narrowest count field that fits: <=8 -> 3 bits, <=16 -> 4, <=256 -> 8, else
    # 16. Longer runs than 16 bits can count become full chunks plus a rest; like
    # the SDK, the rest keeps the 16-bit field even when it is short.
    sel = np.searchsorted([8, 16, 256], lengths, side="left")
    chunks = -(-lengths // _MAX_RUN)
    if chunks.max() > 1:
        run = np.repeat(np.arange(lengths.size), chunks)
        first = np.cumsum(chunks) - chunks
        k = np.arange(run.size) - first[run]
        rest = lengths[run] - _MAX_RUN * (chunks[run] - 1)
        lengths = np.where(k == chunks[run] - 1, rest, _MAX_RUN)
        values = values[run]
        sel = sel[run]

    width = np.asarray(_WIDTHS)[sel]
    nbits = 3 + width + _WORD
    code = (
        (1 << (nbits - 1))
        | (sel << (nbits - 3))
        | ((lengths - 1) << _WORD)
        | np.where(values, 255, 0)
    )
    # Left-align each chunk's code in 32 bits, unpack and keep its leading bits.
    aligned = (code << (32 - nbits)).astype(">u4")
    bits = np.unpackbits(aligned.view(np.uint8).reshape(-1, 4), axis=1)
    body = bits[np.arange(32) < nbits[:, None]]

    total = _HEADER_BITS + body.size
    pad = np.zeros(8 - total % 8, dtype=np.uint8)  # 1..8 bits, like the SDK
    return np.packbits(np.concatenate((_header(num), body, pad))).tolist()


def _as_bytes(rle: Sequence[int]) -> np.ndarray:
    """The stream as a 1-D uint8 array, checking every value is an int 0..255."""
    if isinstance(rle, bytes | bytearray):
        return np.frombuffer(rle, dtype=np.uint8)
    if isinstance(rle, np.ndarray):
        if rle.ndim != 1:
            raise RleError(f"RLE must be 1-D, got an array of shape {rle.shape}")
        if rle.dtype.kind not in "iu":
            raise RleError(f"RLE values must be ints 0..255, got dtype {rle.dtype}")
        if rle.size and (rle.min() < 0 or rle.max() > 255):
            culprit = rle.min() if rle.min() < 0 else rle.max()
            raise RleError(f"RLE values must be ints 0..255, got {culprit}")
        return rle.astype(np.uint8)
    if isinstance(rle, str):
        raise RleError("RLE must be a sequence of ints 0..255, got a string")
    values = rle if isinstance(rle, list | tuple) else list(rle)
    try:
        # bytes() of a list checks each item is an int 0..255, and is fast.
        return np.frombuffer(bytes(values), dtype=np.uint8)
    except (TypeError, ValueError):
        for value in values:
            if not isinstance(value, int | np.integer) or not 0 <= value <= 255:
                raise RleError(
                    f"RLE values must be ints 0..255, got {value!r}"
                ) from None
        raise RleError("RLE must be a sequence of ints 0..255") from None


def declared_pixels(rle: Sequence[int]) -> int:
    """The pixel count a stream's header declares (values / 4), read from 7 bytes.

    Lets an importer reject a stream claiming a huge image before decoding it.
    """
    data = _as_bytes(list(rle[:7]))
    if data.size < 7:
        raise RleError(
            f"RLE stream truncated: {data.size} bytes cannot hold the 53-bit header"
        )
    head = int.from_bytes(data[:7].tobytes(), "big") >> (56 - _HEADER_BITS)
    return (head >> 21) // 4


def decode(
    rle: Sequence[int], height: int, width: int, *, max_pixels: int = 50_000_000
) -> np.ndarray:
    """Decode Label Studio brush RLE into an (H, W) bool mask.

    A pixel is set when its alpha byte is non-zero. Any stream following the
    format decodes (literal chunks, other count-field widths), not only streams
    written by :func:`encode`. Raises :class:`RleError` on a malformed stream or
    one that does not describe a ``height`` x ``width`` image; a header declaring
    more than ``max_pixels`` pixels is rejected before anything is allocated.
    """
    h = check_int(height, "height", minimum=1, error=RleError)
    w = check_int(width, "width", minimum=1, error=RleError)
    max_pixels = check_int(max_pixels, "max_pixels", minimum=1, error=RleError)
    data = _as_bytes(rle)
    if data.size < 7:
        raise RleError(
            f"RLE stream truncated: {data.size} bytes cannot hold the 53-bit header"
        )

    head = int.from_bytes(data[:7].tobytes(), "big") >> (56 - _HEADER_BITS)
    widths = [((head >> shift) & 15) + 1 for shift in (12, 8, 4, 0)]
    word = ((head >> 16) & 31) + 1
    num = head >> 21
    if num > 4 * max_pixels:
        raise RleError(
            f"RLE header declares {num} values ({num / 4:.0f} RGBA pixels), "
            f"more than max_pixels={max_pixels} allows"
        )
    if num != 4 * h * w:
        raise RleError(
            f"RLE header declares {num} values but a {h}x{w} RGBA image has {4 * h * w}"
        )
    if word != _WORD:
        raise RleError(f"RLE word size is {word} bits; brush RLE uses {_WORD}")
    nbits = 8 * data.size
    if nbits > _HEADER_BITS + _MAX_BITS_PER_VALUE * num + 8:
        raise RleError(
            f"RLE stream has trailing data: {data.size} bytes is more than any "
            f"encoding of {num} values needs"
        )

    # For every bit position, the chunk that would start there: its flag, count
    # and where the next chunk starts. The real chunks are then a chain from the
    # end of the header, followed in a short Python loop (one step per chunk).
    padded = np.concatenate((data, np.zeros(3, np.uint8))).astype(np.uint32)
    words = (padded[:-3] << 24) | (padded[1:-2] << 16) | (padded[2:-1] << 8)
    words |= padded[3:]  # the 32 bits from each byte boundary
    window = (words[:, None] << np.arange(8, dtype=np.uint32)).ravel()  # each bit
    top = window >> 29  # flag and count-field index
    is_run = top >= 4
    field = np.asarray(widths, dtype=np.uint32)[top & 3]
    count = ((window << 3) >> (32 - field)) + 1
    span = 3 + field + _WORD * np.where(is_run, 1, count)
    after = np.arange(nbits, dtype=np.int64) + span

    # Follow the chain to the end of the stream; any chunks "parsed" from the
    # padding or from trailing data are dealt with below.
    chain, nxt = [], memoryview(after)
    append, p = chain.append, _HEADER_BITS
    while p < nbits:
        append(p)
        p = nxt[p]
    chunk = np.asarray(chain, dtype=np.int64)
    ends = np.cumsum(count[chunk], dtype=np.int64)  # values decoded after each chunk
    last = int(np.searchsorted(ends, num, side="left"))  # chunk reaching num
    if last == chunk.size:
        done = int(ends[-1]) if chunk.size else 0
        raise RleError(f"RLE stream truncated: it ends after {done} of {num} values")
    if ends[last] > num:
        raise RleError(
            f"RLE chunks hold {ends[last]} values, more than the declared {num}"
        )
    p = int(after[chunk[last]])
    if p > nbits:
        raise RleError(
            f"RLE stream truncated: its last chunk needs {p - nbits} more bits"
        )
    if nbits - p > 8:
        raise RleError(
            f"RLE stream has trailing data: {nbits - p} bits after the last chunk"
        )
    if np.unpackbits(data[p >> 3 :])[p & 7 :].any():
        raise RleError("RLE stream has non-zero padding bits after the last chunk")

    chunk, ends = chunk[: last + 1], ends[: last + 1]
    ccount = count[chunk].astype(np.int64)
    first_word = chunk + 3 + field[chunk].astype(np.int64)
    pairs = (padded[:-1] << 8) | padded[1:]

    def word_at(bitpos: np.ndarray) -> np.ndarray:
        shift = (8 - (bitpos & 7)).astype(np.uint32)
        return (pairs[bitpos >> 3] >> shift) & 0xFF

    if is_run[chunk].all():  # what label-studio-sdk writes: runs only
        values = np.repeat(word_at(first_word) != 0, ccount)
        return values[3::4].reshape(h, w)
    # In general: the bit position of every alpha value (index 3 mod 4).
    literal = ~is_run[chunk]
    alpha = np.arange(3, num, 4, dtype=np.int64)
    t = np.searchsorted(ends, alpha, side="right")
    offset = alpha - (ends[t] - ccount[t])
    return (word_at(first_word[t] + _WORD * offset * literal[t]) != 0).reshape(h, w)
