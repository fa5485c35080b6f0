"""The column codec: round trips, the exact bytes the pipelines have always written (the demo's digests pin
them), and no pickle on the way in or out."""

import io

import numpy as np
import pytest
from PIL import Image

from hoi_factory.codec import decode_image, decode_mask, decode_npy, encode_npy, encode_png, open_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 9, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, (12, 9), dtype=np.uint8)
MASK = RNG.random((12, 9)) > 0.5


def pil_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("array", [RGB, GREY], ids=["rgb", "grey"])
def test_uint8_images_round_trip_as_a_plain_pil_save_writes_them(array):
    data = encode_png(array)
    assert data == pil_png(Image.fromarray(array))
    decoded = decode_image(data)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, array)


def test_a_pil_image_is_saved_as_it_is():
    image = Image.fromarray(RGB).convert("RGBA")
    assert encode_png(image) == pil_png(image)
    assert decode_image(encode_png(image)).shape == (12, 9, 4)


def test_a_bool_mask_is_stored_as_grey_0_255_and_reads_back():
    data = encode_png(MASK)
    assert data == pil_png(Image.fromarray(MASK.astype(np.uint8) * 255))
    assert set(np.unique(decode_image(data))) == {0, 255}
    mask = decode_mask(data)
    assert mask.dtype == bool and np.array_equal(mask, MASK)


def test_modes_convert_on_decoding():
    assert np.array_equal(decode_image(encode_png(GREY), "RGB"), np.repeat(GREY[..., None], 3, -1))
    assert decode_image(encode_png(RGB), "L").shape == GREY.shape
    # a mask saved in colour reads as its grey value above the threshold
    assert np.array_equal(decode_mask(encode_png(np.repeat(MASK[..., None], 3, -1).astype(np.uint8) * 255)), MASK)


def test_bad_bytes_fail_when_opened_not_later():
    with pytest.raises(OSError):
        open_image(b"not a png")
    with pytest.raises(OSError):
        open_image(encode_png(RGB)[:60])


@pytest.mark.parametrize("array", [RNG.random((4, 5, 6)).astype(np.float16), RNG.random(7),
                                   RNG.integers(-9, 9, (3, 2), dtype=np.int64)], ids=["float16", "float64", "int64"])
def test_npy_round_trips_as_np_save_writes_it(array):
    data = encode_npy(array)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    assert data == buffer.getvalue()
    decoded = decode_npy(data)
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


def test_npy_never_pickles():
    with pytest.raises(ValueError):
        encode_npy(np.array([{"a": 1}], dtype=object))
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        decode_npy(buffer.getvalue())
