"""How arrays are stored as bytes in dataset columns: images as PNG, masks as 0/255 grey PNG, arrays as .npy.

One place, so that every pipeline writes the same bytes for the same pixels (the demo's digests pin them) and
every reader decodes masks with the same threshold. Files from users (whose size and mode need checking before
decoding) go through `tasks.images.stages.ReadImage`, not through here.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MASK_THRESHOLD = 127  # a grey value above it is inside the mask


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """PNG bytes of an image (PIL's mode from the array: (H, W) uint8 grey, (H, W, 3|4) RGB(A)); a bool mask is
    stored as 8-bit grey 0/255, which every viewer shows and `decode_mask` reads back."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8) * 255 if image.dtype == bool else image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def open_image(data: bytes, mode: str | None = None) -> Image.Image:
    """The decoded image (converted to `mode` when given), for callers that go on in PIL: resize, crop, draw.
    Undecodable bytes raise PIL's errors (OSError, ValueError) here, not later."""
    image = Image.open(io.BytesIO(data))
    if mode is not None:
        return image.convert(mode)
    image.load()
    return image


def decode_image(data: bytes, mode: str | None = None) -> np.ndarray:
    """(H, W[, C]) array of encoded image bytes, as stored or converted to `mode` ("RGB", "L"); read-only."""
    return np.asarray(open_image(data, mode))


def decode_mask(data: bytes) -> np.ndarray:
    """(H, W) bool of a mask image: grey (any image, converted) above MASK_THRESHOLD."""
    return decode_image(data, "L") > MASK_THRESHOLD


def encode_npy(array: np.ndarray) -> bytes:
    """.npy bytes of a plain array; object arrays are refused (they would need pickle to read)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """The array of .npy bytes; never unpickles (a pickled object array raises ValueError)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def thumbnail_png(image: np.ndarray | bytes, side: int) -> bytes:
    """A PNG of the image (an array, or encoded bytes) scaled down to fit a `side` square, in RGB."""
    picture = open_image(image) if isinstance(image, bytes) else Image.fromarray(np.asarray(image))
    picture = picture.convert("RGB")
    picture.thumbnail((side, side))
    return encode_png(picture)
