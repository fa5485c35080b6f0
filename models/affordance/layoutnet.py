"""LayoutNet (Affordance Diffusion, section 3.2): diffusion over the 5-parameter hand layout, conditioned on the
object image.

Each denoising step sees 7 image channels — the object RGB, the soft splat of the current noisy layout and
their blend — plus two coordinate channels; a small CNN turns them into a feature grid that the noisy layout
(with the timestep) attends to, and the network predicts the noise. Loss: MSE on the noise + 0.1 x L1 between
the splats of the predicted clean layout and the true one (Affordance Diffusion). Guided generation overwrites fixed
coordinates (location, size) with the known values at the current noise level after every step.

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

    @classmethod
    def tiny(cls) -> LayoutNetConfig:
        return cls(image_size=32, channels=(16, 32), width=64, heads=4, train_timesteps=100)


def _timestep_embedding(t: torch.Tensor, width: int) -> torch.Tensor:
    half = width // 2
    frequencies = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


class LayoutNet(PretrainedMixin, nn.Module):
    def __init__(self, config: LayoutNetConfig = LayoutNetConfig()):
        super().__init__()
        self.config = config
        layers, previous = [], 9  # RGB, splat, blend (3), x/y coordinates
        for channels in config.channels:
            layers += [nn.Conv2d(previous, channels, 3, stride=2, padding=1), nn.GroupNorm(8, channels), nn.SiLU()]
            previous = channels
        self.encoder = nn.Sequential(*layers, nn.Conv2d(previous, config.width, 1))
        self.time = nn.Sequential(nn.Linear(config.width, config.width), nn.SiLU(),
                                  nn.Linear(config.width, config.width))
        self.layout_in = nn.Linear(5, config.width)
        self.attention = nn.MultiheadAttention(config.width, config.heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, config.width), nn.SiLU(),
                                 nn.Linear(config.width, 5))
        self.noise = _schedule(config.train_timesteps)

    def conditioning(self, objects: torch.Tensor, layouts: torch.Tensor) -> torch.Tensor:
        """The 7 channels of the paper (+ coordinates): object RGB in [-1, 1], splat, blend."""
        size = objects.shape[-1]
        mask = splat(layouts, size, soft=True)
        blend = objects * (1 - mask) + mask  # the splat painted white over the object
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size, device=objects.device),
                                torch.linspace(-1, 1, size, device=objects.device), indexing="ij")
        coordinates = torch.stack([xs, ys])[None].expand(len(objects), -1, -1, -1)
        return torch.cat([objects, mask, blend, coordinates], 1)

    def forward(self, noisy_layouts: torch.Tensor, timesteps: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """Predicted noise (N, 5) for noisy layouts (N, 5) at `timesteps` (N,), objects (N, 3, S, S) in [-1, 1]."""
        features = self.encoder(self.conditioning(objects, noisy_layouts)).flatten(2).transpose(1, 2)
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
