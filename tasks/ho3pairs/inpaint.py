"""Hands out, object in: inpainting of the grown hand mask, then SDEdit at 5 % noise.

Inpainters: `diffusers` (a latent inpainting pipeline by hub id, folder or `tiny`; prompt = the object class),
`repaint` (RePaint resampling with an unconditional pixel-space DDPM, as FusionNet does) and `biharmonic`
(scikit-image's smooth fill: no model, runs anywhere, a baseline and the embedded demo's choice).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from hoi_factory.context import StageContext
from hoi_factory.stage import Resources, Row, Stage
from models.diffusion import Sampling, inpaint, load_diffusion, repaint, sdedit

MASK_GROWTH = 7  # Affordance Diffusion (HO3Pairs): the hand mask is grown with a 7x7 kernel before inpainting
NO_MODEL = "none"


def grow(mask: np.ndarray, kernel: int = MASK_GROWTH) -> np.ndarray:
    """Close small gaps, then dilate: the region the inpainter repaints (covers the hand's soft edges)."""
    structure = np.ones((kernel, kernel), dtype=bool)
    return ndimage.binary_dilation(ndimage.binary_closing(mask, structure), structure)


def _prompt(row: Row) -> str:
    return row.get("object_class") or "an object"


class InpaintHands(Stage):
    """`object_array`: the crop with the hand repainted; `inpaint_mask_array`: the region repainted."""

    batch_size = 4
    needs = frozenset({"image_array", "hand_mask_array", "seed"})
    makes = frozenset({"object_array", "inpaint_mask_array"})

    def __init__(self, inpainter: str, model: str, sampling: Sampling, gpus: float, repaint_jump_length: int = 10,
                 repaint_resamples: int = 10):
        self.inpainter, self.model, self.sampling = inpainter, model, sampling
        self.jump_length, self.resamples = repaint_jump_length, repaint_resamples
        self.resources = Resources(num_cpus=1.0, num_gpus=gpus if inpainter != "biharmonic" else 0.0)

    def setup(self, context: StageContext) -> None:
        task = {"diffusers": "inpainting", "repaint": "repaint"}.get(self.inpainter)
        self.pipeline = load_diffusion(self.model, task, context.device, context.settings.cache_dir) if task else None

    def process(self, batch: list[Row]) -> list[Row]:
        masks = [grow(row["hand_mask_array"]) for row in batch]
        images = [row["image_array"] for row in batch]
        seeds = [row["seed"] for row in batch]
        if self.inpainter == "biharmonic":
            from skimage.restoration import inpaint_biharmonic

            painted = [np.clip(np.round(inpaint_biharmonic(image / 255.0, mask, channel_axis=-1) * 255), 0, 255)
                       .astype(np.uint8) for image, mask in zip(images, masks)]
        elif self.inpainter == "repaint":
            painted = repaint(self.pipeline, images, masks, seeds, self.sampling.steps, self.jump_length,
                              self.resamples)
        else:
            painted = inpaint(self.pipeline, images, masks, [_prompt(r) for r in batch], seeds, self.sampling)
        return [{**row, "object_array": image, "inpaint_mask_array": mask}
                for row, image, mask in zip(batch, painted, masks)]


class SDEdit(Stage):
    """`sdedit_array`: the object-only image noised to `strength` of the diffusion process and denoised."""

    batch_size = 4
    makes = frozenset({"sdedit_array"})  # None without a model

    def __init__(self, model: str, strength: float, sampling: Sampling, gpus: float):
        self.model, self.strength, self.sampling = model, strength, sampling
        self.resources = Resources(num_cpus=1.0, num_gpus=gpus if model != NO_MODEL else 0.0)
        self.needs = frozenset({"object_array", "seed"}) if model != NO_MODEL else frozenset()

    def setup(self, context: StageContext) -> None:
        if self.model != NO_MODEL:
            self.pipeline = load_diffusion(self.model, "image-to-image", context.device, context.settings.cache_dir)
        else:
            self.pipeline = None

    def process(self, batch: list[Row]) -> list[Row]:
        if self.pipeline is None:
            return [{**row, "sdedit_array": None} for row in batch]
        edited = sdedit(self.pipeline, [row["object_array"] for row in batch], [_prompt(r) for r in batch],
                        [r["seed"] + 1 for r in batch], self.strength, self.sampling)
        return [{**row, "sdedit_array": image} for row, image in zip(batch, edited)]

