"""Training ContentNet on HO3Pairs versions: (augmented object image, hard splat of the jittered layout,
object class) -> the HOI image (cropped and flipped with them, tasks/training/augment.py). Fine-tunes the
inpainting pipeline named by `options.base` (`tiny` in the tests)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hoi_factory.training import saved_files
from models.affordance.contentnet import ContentNet
from models.affordance.layout import splat
from tasks.training.augment import augment_objects, jitter_layouts, random_crop_and_flip
from tasks.training.layoutnet import load_pairs

DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-inpainting"
EVALUATED = 8


class ContentNetTask:
    name = "contentnet"

    def build(self, options: dict[str, Any]) -> ContentNet:
        return ContentNet.from_pretrained(options.get("base", DEFAULT_BASE))

    def load(self, datasets, options: dict[str, Any]) -> dict[str, torch.Tensor | list]:
        return load_pairs(datasets, int(options.get("image_size", 256)), with_hoi=True)

    def loss(self, module: ContentNet, batch: dict, generator: torch.Generator) -> torch.Tensor:
        batch = random_crop_and_flip(batch, generator)
        objects = augment_objects(batch["objects"], batch["sdedited"], batch["has_sdedit"], generator)
        layouts = jitter_layouts(batch["layouts"], generator)
        return module.loss(batch["hoi"], objects, layouts, batch["prompts"], generator)

    def files(self, module) -> dict[str, bytes]:
        return saved_files(module)

    def evaluate(self, module: ContentNet, data: dict) -> dict[str, float]:
        """L1 (0-255) of generated HOI images to the true ones, inside the hand's splat and outside it (where
        the object must be kept)."""
        objects, layouts = data["objects"][:EVALUATED], data["layouts"][:EVALUATED]
        images = module.generate(objects, layouts, data["prompts"][:EVALUATED], steps=20,
                                 generator=torch.Generator().manual_seed(0))
        truth = ((data["hoi"][:EVALUATED].permute(0, 2, 3, 1) + 1) * 127.5).numpy()
        inside = (splat(layouts, objects.shape[-1])[:, 0] >= 0.5).numpy()
        error = np.abs(np.stack(images).astype(float) - truth).mean(-1)
        return {"l1_inside_splat": float(error[inside].mean()) if inside.any() else float("nan"),
                "l1_outside_splat": float(error[~inside].mean())}
