"""Image and mask encoding with fixed settings, so content hashes are stable."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# Fixed encoder settings: the same pixels always give the same bytes, hence the
# same content address (image_id). Level 1 is ~4x faster than 6 for ~10% more bytes.
PNG_SETTINGS = {"compress_level": 1, "optimize": False}


class ImageDecodeError(ValueError):
    """An image or mask file could not be decoded."""


def encode_png(array: np.ndarray) -> bytes:
    """Encodes an (H, W, 3) RGB or (H, W) uint8 array as PNG with fixed settings."""
    if array.dtype != np.uint8:
        raise ValueError(f"array must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        image = Image.fromarray(array, mode="RGB")
    elif array.ndim == 2:
        image = Image.fromarray(array, mode="L")
    else:
        raise ValueError(f"array must be (H, W, 3) or (H, W), got shape {array.shape}")
    buf = io.BytesIO()
    image.save(buf, format="PNG", **PNG_SETTINGS)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # force a full decode: truncated files fail here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"corrupt or unreadable {what}: {err}") from err
    return image


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header only, without decoding pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"corrupt or unreadable image: {err}") from err


def decode_image(data: bytes) -> np.ndarray:
    """Decodes image bytes to an (H, W, 3) uint8 RGB array."""
    image = _open(data, "image")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def decode_mask(data: bytes) -> np.ndarray:
    """Decodes a label map to (H, W) raw values.

    Palette PNGs (VOC) give their palette indices, not colours; 16-bit greyscale
    keeps its values. RGB masks are rejected: a mask must hold class values.
    """
    image = _open(data, "mask")
    if image.mode in ("P", "L", "I", "I;16", "I;16B", "1"):
        return np.asarray(image)
    raise ImageDecodeError(
        f"mask has mode {image.mode}; expected a single-channel or palette label map"
    )
