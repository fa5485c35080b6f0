"""A folder of procedural scenes (a disc and a box on a gradient, STAND-IN data) plus known-bad files.

The bad files are what real folders contain: a zero-byte file, a truncated PNG, a sliver too thin to use
and a file that only claims to be an image. Each has the reject reason the ingest pipeline must give it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hoi_factory.codec import encode_png

# file name -> the reason the ingest pipeline must reject it with
BAD_FILES = {
    "bad/empty.png": "empty file",
    "bad/truncated.png": "unreadable image",
    "bad/sliver.png": "aspect ratio too extreme",
    "bad/not-an-image.jpg": "unreadable image",
}


def scene(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """One stand-in scene: vertical gradient background, a coloured disc and a box, placed by `seed`."""
    rng = np.random.default_rng(seed)
    width, height = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    cx, cy, r = rng.integers(20, width - 20), rng.integers(20, height - 20), rng.integers(8, 20)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
    draw.rectangle((x0, y0, x0 + rng.integers(10, 40), y0 + rng.integers(10, 40)),
                   fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def write_image_folder(folder: str | Path, count: int, seed: int = 0, with_bad_files: bool = True) -> dict[str, str]:
    """Write `count` scenes (+ the bad files) under `folder`; return {relative path: expected reject reason}."""
    folder = Path(folder)
    (folder / "scenes").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        scene(seed * 1_000_003 + i).save(folder / "scenes" / f"scene-{i:05d}.png")
    if not with_bad_files:
        return {}
    (folder / "bad").mkdir(exist_ok=True)
    (folder / "bad/empty.png").write_bytes(b"")
    whole = encode_png(scene(seed))
    (folder / "bad/truncated.png").write_bytes(whole[: len(whole) // 2])
    Image.new("RGB", (300, 20), "gray").save(folder / "bad/sliver.png")
    (folder / "bad/not-an-image.jpg").write_text("this is not a JPEG")
    return dict(BAD_FILES)
