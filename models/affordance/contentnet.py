"""ContentNet (Affordance Diffusion, section 3.3): latent diffusion that paints a hand into an object image
where a layout's splat says, fine-tuned from a pretrained inpainting model.

A Stable-Diffusion inpainting UNet sees 9 channels: the noisy latents, the mask and the latents of a
conditioning image. ContentNet keeps that network and gives it the object image (whole: the hand covers part
of it, the model needs what is underneath) and the hard splat of the layout, and learns to produce the HOI
image. The prompt is the object class. Loading goes through diffusers (`from_pretrained` of a hub id, a folder
or `tiny`), saving through `save_pretrained` (a diffusers folder), so a fine-tuned ContentNet loads like any
inpainting pipeline; `from_pretrained` also takes `s3://` (the folder is fetched first). Not models/pretrained.py's
mixin: ContentNet is built from a pipeline, not from a config, and its folder must stay diffusers' own.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.affordance.layout import splat
from models.diffusion import load_diffusion


class ContentNet(nn.Module):
    def __init__(self, pipeline):
        super().__init__()
        self.pipeline = pipeline
        self.unet, self.vae, self.text_encoder = pipeline.unet, pipeline.vae, pipeline.text_encoder
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.noise = _training_schedule(pipeline.scheduler.config)

    @classmethod
    def from_pretrained(cls, source: str, device: str = "cpu", **storage_options) -> ContentNet:
        """A hub id, a local folder, `tiny`, or an fsspec URL of a saved ContentNet (e.g. a model version)."""
        if "://" in source and not source.startswith("file://"):
            fs, root = fsspec.core.url_to_fs(source, **storage_options)
            folder = Path(tempfile.mkdtemp(prefix="contentnet-"))
            fs.get(root.rstrip("/") + "/", str(folder), recursive=True)
            source = str(folder)
        return cls(load_diffusion(source, "inpainting", device))

    def save_pretrained(self, folder: str) -> None:
        self.pipeline.save_pretrained(folder, safe_serialization=True)

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, S, S) in [-1, 1] -> scaled VAE latents (the mean: no sampling noise)."""
        return self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor

    def _text(self, prompts: list[str]) -> torch.Tensor:
        tokenizer = self.pipeline.tokenizer
        tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt").input_ids.to(self.text_encoder.device)
        return self.text_encoder(tokens)[0]

    def _conditioning(self, objects: torch.Tensor, layouts: torch.Tensor, latent_size: int) -> torch.Tensor:
        mask = splat(layouts, objects.shape[-1])  # hard splat, as ContentNet uses
        return torch.cat([F.interpolate(mask, size=latent_size, mode="nearest"), self._latents(objects)], 1)

    def loss(self, hoi: torch.Tensor, objects: torch.Tensor, layouts: torch.Tensor, prompts: list[str],
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise-prediction MSE for HOI images given object images, layouts and prompts (all in [-1, 1])."""
        with torch.no_grad():
            target = self._latents(hoi)
            condition = self._conditioning(objects, layouts, target.shape[-1])
            text = self._text(prompts)
        noise = torch.randn(target.shape, generator=generator).to(target.device)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (len(hoi),), generator=generator).to(hoi.device)
        noisy = self.noise.add_noise(target, noise, t)
        predicted = self.unet(torch.cat([noisy, condition], 1), t, encoder_hidden_states=text).sample
        return F.mse_loss(predicted, noise)

    @torch.no_grad()
    def generate(self, objects: torch.Tensor, layouts: torch.Tensor, prompts: list[str], steps: int = 50,
                 guidance_scale: float = 1.0, generator: torch.Generator | None = None) -> list[np.ndarray]:
        """HOI images (uint8, H x W x 3) for object images (N, 3, S, S) in [-1, 1] and layouts (N, 5)."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.noise.config)
        scheduler.set_timesteps(steps)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        shape = (len(objects), self.unet.config.out_channels, objects.shape[-2] // factor, objects.shape[-1] // factor)
        condition = self._conditioning(objects, layouts, shape[-1])
        text = self._text(prompts)
        empty = self._text([""] * len(prompts)) if guidance_scale != 1.0 else None
        latents = torch.randn(shape, generator=generator).to(objects.device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inputs = torch.cat([scheduler.scale_model_input(latents, t), condition], 1)
            predicted = self.unet(inputs, t, encoder_hidden_states=text).sample
            if empty is not None:
                unconditioned = self.unet(inputs, t, encoder_hidden_states=empty).sample
                predicted = unconditioned + guidance_scale * (predicted - unconditioned)
            latents = scheduler.step(predicted, t, latents).prev_sample
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return [np.round((image.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
                for image in images]


def _training_schedule(config):
    """The DDPM noise schedule the pipeline's scheduler was trained with (same betas)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config)
