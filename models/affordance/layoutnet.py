"""LayoutNet (Affordance Diffusion, section 3.2): diffusion over the 5-parameter hand layout, conditioned on the
object image.

Each denoising step sees the object image and the soft splat of the current noisy layout; an image encoder turns
them into a feature grid that the noisy layout (with the timestep) attends to, and the network predicts the noise.
Two encoders (`LayoutNetConfig.encoder`):
- `diffusion`, as the official code (which starts from GLIDE's inpainting UNet): the encoder half (input
  convolution, time embedding, down blocks, middle block) of a pretrained diffusers inpainting UNet — the one
  ContentNet fine-tunes (`encoder_base`; `tiny` in the tests) — fine-tuned. Its 9 input channels get what they
  were trained on: the VAE latents of the object image, the splat as the inpainting mask and the latents of the
  object with the splat blanked out; the timestep goes through its own time embedding (rescaled to its 1000
  steps); the text is the empty prompt (the official LayoutNet has no text). DEVIATIONS: a latent-space UNet
  (Stable Diffusion's) instead of GLIDE's pixel-space one, and the feature tokens get a learned embedding of
  their grid position (the official tokens have none). Building one loads `encoder_base` (also in
  `from_pretrained`, before the saved weights replace it).
- `small` (the default): a from-scratch CNN over 7 channels — the object RGB, the splat and their blend, as
  the paper — plus two coordinate channels.

Loss: MSE on the noise + 0.1 x L1 between the soft splats of the predicted clean layout and the true one
(Affordance Diffusion). Guided generation overwrites fixed coordinates (location, size) with the known values at
the current noise level after every step.

Configs are data (`LayoutNetConfig`); weights and config go through `save_pretrained` / `from_pretrained`
(models/pretrained.py: a local folder or any fsspec URL, e.g. s3://.../models/layoutnet/v3, safetensors only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.affordance.layout import splat
from models.diffusion import load_diffusion
from models.pretrained import PretrainedMixin

GUIDABLE = {"x": 0, "y": 1, "size": 2}  # coordinates guided generation can fix


@dataclass(frozen=True)
class LayoutNetConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128)  # one stride-2 stage each
    width: int = 128  # the layout token and attention width
    heads: int = 4
    train_timesteps: int = 1000
    mask_loss_weight: float = 0.1  # lambda of the official code
    encoder: str = "small"  # or "diffusion": the encoder half of `encoder_base`'s pretrained inpainting UNet
    encoder_base: str = "stable-diffusion-v1-5/stable-diffusion-inpainting"  # ContentNet's default base

    @classmethod
    def tiny(cls) -> LayoutNetConfig:
        return cls(image_size=32, channels=(16, 32), width=64, heads=4, train_timesteps=100)


def _timestep_embedding(t: torch.Tensor, width: int) -> torch.Tensor:
    half = width // 2
    frequencies = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


class SmallEncoder(nn.Sequential):
    """From scratch: strided convolutions over the object RGB, the splat, their blend and x/y coordinates."""

    def __init__(self, config: LayoutNetConfig):
        layers, previous = [], 9  # RGB, splat, blend (3), x/y coordinates
        for channels in config.channels:
            layers += [nn.Conv2d(previous, channels, 3, stride=2, padding=1), nn.GroupNorm(8, channels), nn.SiLU()]
            previous = channels
        super().__init__(*layers, nn.Conv2d(previous, config.width, 1))

    def forward(self, objects: torch.Tensor, splats: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Feature tokens (N, L, width) of objects (N, 3, S, S) in [-1, 1] under splats (N, 1, S, S)."""
        size = objects.shape[-1]
        blend = objects * (1 - splats) + splats  # the splat painted white over the object
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size, device=objects.device),
                                torch.linspace(-1, 1, size, device=objects.device), indexing="ij")
        coordinates = torch.stack([xs, ys])[None].expand(len(objects), -1, -1, -1)
        features = torch.cat([objects, splats, blend, coordinates], 1)
        for layer in self:
            features = layer(features)
        return features.flatten(2).transpose(1, 2)


class DiffusionEncoder(nn.Module):
    """The encoder half of a pretrained diffusers inpainting UNet (see the module docstring)."""

    def __init__(self, base: str, width: int, train_timesteps: int):
        super().__init__()
        pipeline = load_diffusion(base, "inpainting")
        unet, vae = pipeline.unet, pipeline.vae
        self.conv_in, self.time_proj, self.time_embedding = unet.conv_in, unet.time_proj, unet.time_embedding
        self.down_blocks, self.mid_block = unet.down_blocks, unet.mid_block
        self.vae_encoder, self.quant_conv = vae.encoder.requires_grad_(False), vae.quant_conv
        if self.quant_conv is not None:
            self.quant_conv.requires_grad_(False)
        self.latent_scale = vae.config.scaling_factor
        self.timestep_scale = pipeline.scheduler.config.num_train_timesteps / train_timesteps
        with torch.no_grad():
            tokens = pipeline.tokenizer([""], padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                                        return_tensors="pt").input_ids
            self.register_buffer("empty_prompt", pipeline.text_encoder(tokens)[0])
        channels = unet.config.block_out_channels[-1]
        self.project = nn.Linear(channels, width)
        self.position = nn.Linear(2, width)

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the VAE stays as pretrained
            moments = self.vae_encoder(images)
            if self.quant_conv is not None:
                moments = self.quant_conv(moments)
        return moments.chunk(2, 1)[0] * self.latent_scale  # the posterior mean

    def forward(self, objects: torch.Tensor, splats: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        latents = self._latents(torch.cat([objects, objects * (1 - splats)]))  # SD's masked image: blanked
        object_latents, masked_latents = latents.chunk(2)
        mask = F.interpolate(splats, size=latents.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
        hidden = self.conv_in(torch.cat([object_latents, mask, masked_latents], 1))
        embedding = self.time_embedding(self.time_proj(timesteps * self.timestep_scale).to(hidden.dtype))
        text = self.empty_prompt.expand(len(objects), -1, -1)
        for block in self.down_blocks:  # as diffusers' UNet2DConditionModel.forward runs them
            if getattr(block, "has_cross_attention", False):
                hidden, _ = block(hidden_states=hidden, temb=embedding, encoder_hidden_states=text)
            else:
                hidden, _ = block(hidden_states=hidden, temb=embedding)
        hidden = self.mid_block(hidden, embedding, encoder_hidden_states=text)
        height, width = hidden.shape[-2:]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height, device=hidden.device),
                                torch.linspace(-1, 1, width, device=hidden.device), indexing="ij")
        positions = self.position(torch.stack([xs, ys], -1).reshape(-1, 2))
        return self.project(hidden.flatten(2).transpose(1, 2)) + positions


class LayoutNet(PretrainedMixin, nn.Module):
    def __init__(self, config: LayoutNetConfig = LayoutNetConfig()):
        super().__init__()
        self.config = config
        if config.encoder == "small":
            self.encoder = SmallEncoder(config)
        elif config.encoder == "diffusion":
            self.encoder = DiffusionEncoder(config.encoder_base, config.width, config.train_timesteps)
        else:
            raise ValueError(f"unknown LayoutNet encoder {config.encoder!r}: 'small' or 'diffusion'")
        self.time = nn.Sequential(nn.Linear(config.width, config.width), nn.SiLU(),
                                  nn.Linear(config.width, config.width))
        self.layout_in = nn.Linear(5, config.width)
        self.attention = nn.MultiheadAttention(config.width, config.heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, config.width), nn.SiLU(),
                                 nn.Linear(config.width, 5))
        self.noise = _schedule(config.train_timesteps)

    def forward(self, noisy_layouts: torch.Tensor, timesteps: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """Predicted noise (N, 5) for noisy layouts (N, 5) at `timesteps` (N,), objects (N, 3, S, S) in [-1, 1]."""
        features = self.encoder(objects, splat(noisy_layouts, objects.shape[-1], soft=True), timesteps)
        query = self.layout_in(noisy_layouts) + self.time(_timestep_embedding(timesteps, self.config.width))
        attended, _ = self.attention(query[:, None], features, features)
        return self.out(query + attended[:, 0])

    def loss(self, objects: torch.Tensor, layouts: torch.Tensor, generator: torch.Generator | None = None
             ) -> torch.Tensor:
        """MSE on the noise + mask_loss_weight x L1 between the splats of the predicted and true clean layouts."""
        n = len(layouts)
        t = torch.randint(0, self.config.train_timesteps, (n,), generator=generator).to(layouts.device)
        noise = torch.randn(layouts.shape, generator=generator).to(layouts.device)
        alpha_bar = self.noise.alphas_cumprod.to(layouts.device)[t][:, None]
        noisy = alpha_bar.sqrt() * layouts + (1 - alpha_bar).sqrt() * noise
        predicted = self(noisy, t, objects)
        clean = (noisy - (1 - alpha_bar).sqrt() * predicted) / alpha_bar.sqrt()
        size = objects.shape[-1]
        mask_loss = F.l1_loss(splat(clean, size, soft=True), splat(layouts, size, soft=True))
        return F.mse_loss(predicted, noise) + self.config.mask_loss_weight * mask_loss

    @torch.no_grad()
    def generate(self, objects: torch.Tensor, steps: int = 50, fixed: dict[str, torch.Tensor] | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Layouts (N, 5) for objects (N, 3, S, S) in [-1, 1]. `fixed` ({'x'|'y'|'size': (N,) values; size is
        sqrt_size}) guides generation: those coordinates are reset to their value at each step's noise level."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.noise.config)
        scheduler.set_timesteps(steps)
        fixed = {GUIDABLE[name]: value.to(objects.device) for name, value in (fixed or {}).items()}
        layouts = torch.randn((len(objects), 5), generator=generator).to(objects.device)
        for i, t in enumerate(scheduler.timesteps):
            batch_t = torch.full((len(objects),), int(t), device=objects.device)
            layouts = scheduler.step(self(layouts, batch_t, objects), t, layouts).prev_sample
            if fixed:
                following = scheduler.timesteps[i + 1] if i + 1 < len(scheduler.timesteps) else None
                for dim, value in fixed.items():
                    if following is None:
                        layouts[:, dim] = value
                    else:
                        noise = torch.randn(len(objects), generator=generator).to(objects.device)
                        layouts[:, dim] = scheduler.add_noise(value, noise, following.reshape(1))
        return layouts


def _schedule(timesteps: int):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="squaredcos_cap_v2", clip_sample=False)
