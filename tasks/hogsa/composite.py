"""Compositing HOGS renders onto background photos and cropping 224 x 224 around the hands (HOGSA section 3.1,
after GANerated Hands): the render's alpha blends it over a background, the crop is a square around both hands'
visible pixels, and every annotation in image pixels goes through the same crop.

Backgrounds: a folder of photos (COCO train2017 in real runs) or `procedural` STAND-IN backgrounds (smooth colour
gradients with a few soft shapes), chosen per sample by its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from hoi_factory.pipeline import PlanError

PROCEDURAL = "procedural"
BACKGROUND_SUFFIXES = (".jpg", ".jpeg", ".png")
CROP_PADDING = 0.3  # crop side = (1 + padding) x the longer side of the hands' box


def procedural_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8: a STAND-IN photo — a two-colour gradient at a random angle plus soft discs."""
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    a, b = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    image = a + ramp[..., None] * (b - a)
    for _ in range(rng.integers(2, 6)):
        centre, radius = rng.uniform(0, 1, 2), rng.uniform(0.05, 0.3)
        weight = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * radius**2))
        image = image * (1 - 0.6 * weight[..., None]) + 0.6 * weight[..., None] * rng.uniform(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def list_backgrounds(folder: str) -> list[str]:
    """Photo paths under a local folder, sorted; PlanError when there are none."""
    from pathlib import Path

    root = Path(folder)
    if not root.is_dir():
        raise PlanError(f"backgrounds folder {folder!r} does not exist")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in BACKGROUND_SUFFIXES)
    if not paths:
        raise PlanError(f"backgrounds folder {folder!r} holds no {', '.join(BACKGROUND_SUFFIXES)} files")
    return paths


class BadBackground(Exception):
    """A background photo that cannot be read."""


def load_background(path: str, width: int, height: int) -> np.ndarray:
    """A photo resized and centre-cropped to cover (width, height); BadBackground when it cannot be read."""
    try:
        image = Image.open(path).convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for missing, truncated or corrupt files
        raise BadBackground(f"{path}: {type(exc).__name__}: {exc}") from None
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))


def alpha_blend(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """foreground (H, W, 3) float 0..1 already multiplied by alpha (a render over black), alpha (H, W) 0..1."""
    out = foreground * 255.0 + (1 - alpha[..., None]) * background.astype(np.float64)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Crop:
    """A square window of the full image (x0, y0, side; may reach outside it) scaled to `size` pixels."""

    x0: float
    y0: float
    side: float
    size: int

    @property
    def scale(self) -> float:
        return self.size / self.side

    def points(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 2) full-image pixel coordinates -> crop pixel coordinates."""
        return (np.asarray(pixels, dtype=np.float64) - (self.x0, self.y0)) * self.scale

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """The camera matrix of the crop (so 3D annotations project straight into it)."""
        K = np.asarray(K, dtype=np.float64).copy()
        K[0, 2] -= self.x0
        K[1, 2] -= self.y0
        K[:2] *= self.scale
        return K

    def apply(self, image: np.ndarray, resample=Image.Resampling.BILINEAR) -> np.ndarray:
        """Crop + resize an (H, W[, C]) uint8/bool array; outside the image is black / False."""
        is_bool = image.dtype == bool
        source = Image.fromarray(image.astype(np.uint8) * 255 if is_bool else image)
        box = (self.x0, self.y0, self.x0 + self.side, self.y0 + self.side)
        out = np.asarray(source.transform((self.size, self.size), Image.Transform.EXTENT, box,
                                          Image.Resampling.NEAREST if is_bool else resample))
        return out > 127 if is_bool else out


def crop_around(mask: np.ndarray, size: int, padding: float = CROP_PADDING) -> Crop | None:
    """The square crop around a mask's pixels (None when it is empty), slid inside the image where it fits so
    that it shows no border."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    side = (1 + padding) * max(x1 - x0, y1 - y0)

    def start(low: float, high: float, extent: int) -> float:
        centred = (low + high - side) / 2
        return float(np.clip(centred, 0, extent - side)) if side <= extent else (extent - side) / 2

    return Crop(start(x0, x1, mask.shape[1]), start(y0, y1, mask.shape[0]), float(side), size)
