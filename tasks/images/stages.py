"""Image stages: read and check files, drop odd shapes, resize, encode as PNG."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import threading
import warnings
from typing import Any, Callable

import fsspec
import numpy as np
from PIL import Image

from hoi_factory.codec import encode_png
from hoi_factory.context import StageContext
from hoi_factory.stage import Filter, MapStage, Reject, Row

# Modes PIL converts to RGB faithfully; 16-bit and float images (I;16, I, F) would be clipped: refused.
CONVERTIBLE_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr"}


def read_with_deadline(fs: fsspec.AbstractFileSystem, path: str, seconds: float) -> bytes:
    """The file's bytes, or TimeoutError after `seconds`: a stalled mount or endpoint costs one sample, not the
    run. The reading thread is a daemon, so a read that never returns cannot keep the worker from exiting."""
    outcome: dict[str, Any] = {}

    def read() -> None:
        try:
            with fs.open(path, "rb") as handle:
                outcome["data"] = handle.read()
        except BaseException as exc:  # handed to the caller, who decides
            outcome["error"] = exc

    reader = threading.Thread(target=read, name=f"read {path}", daemon=True)
    reader.start()
    reader.join(seconds)
    if reader.is_alive():
        raise TimeoutError(path)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["data"]


class InputProblem(Filter):
    """Drops the inputs the plan found unusable (`problem`: unknown extension, not a regular file...)."""

    needs = frozenset({"problem"})

    def reason_to_drop(self, row: Row) -> str | None:
        return row["problem"] or None


class ReadImage(MapStage):
    """Reads `row['path']` (any fsspec URL) into `row['pixels']` (H x W x 3 uint8), rejecting bad files.

    A stage that reuses it on other paths calls its `setup(context)` from its own."""

    needs = frozenset({"path"})
    makes = frozenset({"pixels", "source_sha256"})

    def __init__(self, max_pixels: int = 50_000_000, max_bytes: int = 512 * 1024**2, read_seconds: float = 120.0):
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.read_seconds = read_seconds

    def setup(self, context: StageContext) -> None:
        self.storage_options: Callable[[str], dict[str, Any]] = context.storage_options

    def _refusal(self, fs: fsspec.AbstractFileSystem, path: str) -> str | None:
        """Checked before opening: a FIFO or device would block the read forever, a huge file fill memory."""
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            info = os.stat(path)
            if stat.S_ISDIR(info.st_mode):
                return "not a file"
            if not stat.S_ISREG(info.st_mode):
                return "not a regular file"
            size = info.st_size
        else:
            size = fs.size(path)
        return "file too large" if size > self.max_bytes else None

    def process_row(self, row: Row) -> Row | Reject:
        try:
            fs, path = fsspec.core.url_to_fs(row["path"], **self.storage_options(row["path"]))
            if refusal := self._refusal(fs, path):
                return Reject.of(row, refusal, row["path"])
            data = read_with_deadline(fs, path, self.read_seconds)
        except TimeoutError:
            return Reject.of(row, "read timed out", f"{row['path']}: no answer in {self.read_seconds:g} s")
        except FileNotFoundError:  # a folder lists what exists; an annotation file may name what does not
            return Reject.of(row, "missing file", row["path"])
        except IsADirectoryError:  # an annotation file may name a folder
            return Reject.of(row, "not a file", row["path"])
        if not data:
            return Reject.of(row, "empty file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > self.max_pixels:  # checked from the header, before decoding
                    return Reject.of(row, "image too large", f"{width}x{height} > {self.max_pixels} pixels")
                image.load()
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:  # PIL's own header check
            return Reject.of(row, "image too large", str(exc))
        except Image.UnidentifiedImageError:  # its message holds a memory address: keep rejects reproducible
            return Reject.of(row, "unreadable image", "not in any image format PIL reads")
        # what PIL's decoders raise on bad data
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            return Reject.of(row, "unreadable image", f"{type(exc).__name__}: {exc}")
        if image.mode not in CONVERTIBLE_MODES:
            return Reject.of(row, "unsupported image mode", image.mode)
        return {**row, "pixels": np.asarray(image.convert("RGB")), "source_sha256": hashlib.sha256(data).hexdigest()}


class ImageShapeFilter(Filter):
    """Drops images too small to use or too elongated to be a photo."""

    needs = frozenset({"pixels"})
    thumbnail_key = "pixels"

    def __init__(self, min_side: int, max_aspect: float):
        self.min_side = min_side
        self.max_aspect = max_aspect

    def reason_to_drop(self, row: Row) -> str | None:
        height, width = row["pixels"].shape[:2]
        if min(height, width) < self.min_side:
            return "image too small"
        if max(height, width) / min(height, width) > self.max_aspect:
            return "aspect ratio too extreme"
        return None


class ResizeToFit(MapStage):
    """Scales images down so the longer side is at most `max_side` (never up), keeping the aspect ratio."""

    needs = frozenset({"pixels"})
    makes = frozenset({"pixels"})

    def __init__(self, max_side: int):
        self.max_side = max_side

    def process_row(self, row: Row) -> Row:
        pixels = row["pixels"]
        height, width = pixels.shape[:2]
        scale = self.max_side / max(height, width)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
        return {**row, "pixels": pixels}


class EncodePNG(MapStage):
    """`pixels` -> `image` (PNG bytes) with its width and height: the stored form of images."""

    needs = frozenset({"pixels"})
    makes = frozenset({"image", "width", "height"})

    def process_row(self, row: Row) -> Row:
        pixels = row.pop("pixels")
        return {**row, "image": encode_png(pixels), "width": pixels.shape[1], "height": pixels.shape[0]}
