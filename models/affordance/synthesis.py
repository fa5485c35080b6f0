"""Affordance Diffusion's two stages chained: an object image in, layouts and HOI images out.

LayoutNet says where the hand goes (optionally with fixed location or size), ContentNet paints it there.
"""

from __future__ import annotations

import numpy as np
import torch

from models.affordance.contentnet import ContentNet
from models.affordance.layoutnet import LayoutNet


def synthesize(object_image: np.ndarray, layoutnet: LayoutNet, contentnet: ContentNet, prompt: str, count: int = 4,
               fixed: dict[str, float] | None = None, steps: int = 50, seed: int = 0
               ) -> tuple[np.ndarray, list[np.ndarray]]:
    """`count` (layout (5,), HOI image) samples for one square uint8 object image; the HOI images have its size,
    which must suit both models (LayoutNet resizes its own copy to its `image_size`)."""
    if object_image.ndim != 3 or object_image.shape[0] != object_image.shape[1] or object_image.shape[2] != 3:
        raise ValueError(f"object_image must be square RGB (S, S, 3), got shape {object_image.shape}")
    generator = torch.Generator().manual_seed(seed)
    image = torch.from_numpy(np.array(object_image)).permute(2, 0, 1).float()[None] / 127.5 - 1
    objects = image.expand(count, -1, -1, -1)
    small = torch.nn.functional.interpolate(objects, size=layoutnet.config.image_size, mode="bilinear",
                                            antialias=True, align_corners=False)
    guided = {name: torch.full((count,), float(value)) for name, value in (fixed or {}).items()}
    layouts = layoutnet.generate(small, steps=steps, fixed=guided, generator=generator)
    images = contentnet.generate(objects, layouts, [prompt] * count, steps=steps, generator=generator)
    return layouts.numpy(), images
