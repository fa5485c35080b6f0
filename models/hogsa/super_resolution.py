"""HOGSA's super-resolution module (SRM, paper section 3.4): a coarse low-resolution render in, a sharp image out.

The paper names a StyleUNet-like encoder-decoder inside a GAN (after StyleAvatar) and the loss
L = 5 * L1 + 0.03 * VGG + GAN (the HOGSA paper); everything else here is our choice:
- generator (`StyleUNet`): a U-Net whose skip connections carry local detail, while a style vector pooled from
  the bottleneck carries global content into every decoder convolution (StyleGAN2 modulation with
  demodulation). After the U-Net's decoder reaches the input size, log2(scale) more style blocks upsample to the
  output size. The network predicts a residual over bicubic upsampling, so it only has to learn the detail.
- discriminator: pix2pix's PatchGAN (stride-2 4x4 convolutions, instance norm, one logit per patch).
- GAN loss: the non-saturating logistic loss of StyleGAN2 (softplus), unconditional on the low-res input.
- VGG loss: L1 between torchvision VGG-19 features of output and target at relu1_1..relu5_1, weighted
  1/32..1 (pix2pixHD's choice); the VGG weights come from a file (`perceptual_weights`), nothing is downloaded.
- R1 penalty on the discriminator (StyleGAN2's stabilizer; without it a PatchGAN overpowers the generator
  within a few hundred steps on small data: measured on the tiny overfit test).
- sizes: the paper gives none. The default config maps 256 px renders to 512 px (scale 2); `tiny()` is a
  CPU-test size (not a useful model) that turns the VGG term off (it has no weights to load).
Images are float tensors (N, 3, H, W) in [0, 1]. Weights and config go through `save_pretrained` /
`from_pretrained` (models/pretrained.py: a local folder or any fsspec URL, e.g. s3://.../models/srm/v2,
safetensors only).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hoi_factory.optional import require
from models.metrics import IMAGENET_MEAN, IMAGENET_STD, load_weights
from models.pretrained import PretrainedMixin

log = logging.getLogger(__name__)
# VGG-19 `features` index of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 -> weight of its feature L1
VGG_LAYERS = {1: 1 / 32, 6: 1 / 16, 11: 1 / 8, 20: 1 / 4, 29: 1.0}

# The columns a dataset offers the SRM as (input, target) pairs: aligned lists of PNGs (hogsa-models writes them).
PAIR_COLUMNS = ("train_renders", "train_images")


@dataclass(frozen=True)
class SRMConfig:
    scale: int = 2  # output side / input side; a power of two
    image_size: int = 512  # side of the high-resolution training images
    channels: int = 64  # first encoder level; doubles per level up to max_channels
    max_channels: int = 512
    depth: int = 4  # stride-2 encoder levels (the input side must divide by 2**depth)
    style_dim: int = 512
    discriminator_channels: int = 64
    discriminator_layers: int = 3  # stride-2 levels: 3 is pix2pix's 70x70 PatchGAN
    l1_weight: float = 5.0  # lambda_1 of the paper
    perceptual_weight: float = 0.03  # lambda_VGG of the paper; 0 trains without VGG weights
    adversarial_weight: float = 1.0  # the paper adds L_GAN unweighted
    r1_weight: float = 1.0  # gamma of the R1 penalty on the discriminator (StyleGAN2's stabilizer)
    perceptual_weights: str = ""  # torchvision VGG-19 state dict (.safetensors)
    blur_sigma: float = 0.0  # training pairs made by degrading: Gaussian blur (px) before downsampling

    def __post_init__(self):
        if self.scale < 1 or self.scale & (self.scale - 1):
            raise ValueError(f"SRM scale must be a power of two, not {self.scale}")
        if (self.image_size // self.scale) % 2**self.depth or self.image_size % self.scale:
            raise ValueError(f"SRM image_size {self.image_size} must divide by scale x 2**depth "
                             f"= {self.scale * 2**self.depth}")

    @classmethod
    def tiny(cls) -> SRMConfig:
        return cls(scale=2, image_size=32, channels=16, max_channels=32, depth=2, style_dim=32,
                   discriminator_channels=8, discriminator_layers=2, perceptual_weight=0.0)

    @property
    def input_size(self) -> int:
        return self.image_size // self.scale


def bicubic(images: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False)


class ModulatedConv(nn.Module):
    """StyleGAN2's modulated 3x3 convolution: the style scales the kernel's input channels, each output channel
    is renormalized (demodulated), then leaky ReLU — one image-level code steers all local filters."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.style = nn.Linear(style_dim, in_channels)
        nn.init.ones_(self.style.bias)  # start as a plain convolution

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        weight = self.weight[None] * self.style(style)[:, None, :, None, None]
        weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        # One grouped convolution applies each image's own kernel.
        out = F.conv2d(x.reshape(1, n * c, h, w), weight.reshape(-1, c, 3, 3), padding=1, groups=n)
        return F.leaky_relu(out.reshape(n, -1, h, w) + self.bias[:, None, None], 0.2)


class StyleBlock(nn.Module):
    """Upsample x2, join the encoder's features of that size (if any), two modulated convolutions."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, style_dim: int):
        super().__init__()
        self.first = ModulatedConv(in_channels + skip_channels, out_channels, style_dim)
        self.second = ModulatedConv(out_channels, out_channels, style_dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], 1)
        return self.second(self.first(x, style), style)


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(0.2))


class StyleUNet(nn.Module):
    def __init__(self, config: SRMConfig):
        super().__init__()
        self.scale = config.scale
        widths = [min(config.channels * 2**level, config.max_channels) for level in range(config.depth + 1)]
        self.stem = _conv(3, widths[0])
        self.down = nn.ModuleList(nn.Sequential(_conv(widths[i], widths[i + 1], stride=2),
                                                _conv(widths[i + 1], widths[i + 1])) for i in range(config.depth))
        self.style = nn.Sequential(nn.Linear(widths[-1], config.style_dim), nn.LeakyReLU(0.2),
                                   nn.Linear(config.style_dim, config.style_dim))
        self.up = nn.ModuleList(StyleBlock(widths[i + 1], widths[i], widths[i], config.style_dim)
                                for i in reversed(range(config.depth)))
        # Beyond the input size there are no encoder features; channels halve per level (StyleGAN-like).
        sizes = [max(widths[0] // 2**k, 8) for k in range(int(math.log2(config.scale)) + 1)]
        self.upscale = nn.ModuleList(StyleBlock(a, 0, b, config.style_dim) for a, b in zip(sizes, sizes[1:]))
        self.to_rgb = nn.Conv2d(sizes[-1], 3, 1)
        with torch.no_grad():  # an untrained SRM is close to bicubic upsampling: training starts from there
            self.to_rgb.weight.mul_(0.1)
            self.to_rgb.bias.zero_()

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        """Low-res images (N, 3, h, w) in [0, 1], h and w divisible by 2**depth -> (N, 3, h*scale, w*scale),
        not clamped (the losses see the raw output)."""
        if low.shape[-1] % 2 ** len(self.down) or low.shape[-2] % 2 ** len(self.down):
            raise ValueError(f"SRM input {tuple(low.shape[-2:])}: sides must divide by {2 ** len(self.down)}")
        skips, x = [], self.stem(low * 2 - 1)
        for block in self.down:
            skips.append(x)
            x = block(x)
        style = self.style(x.mean((2, 3)))
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, style, skip)
        for block in self.upscale:
            x = block(x, style)
        return bicubic(low, self.scale) + self.to_rgb(x)


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: one real/fake logit per overlapping patch of the image."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        widths = [min(channels * 2**i, channels * 8) for i in range(layers + 1)]
        blocks: list[nn.Module] = [nn.Conv2d(3, widths[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1  # the last level keeps the resolution (pix2pix)
            blocks += [nn.Conv2d(widths[i - 1], widths[i], 4, stride, 1), nn.InstanceNorm2d(widths[i], affine=True),
                       nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*blocks, nn.Conv2d(widths[-1], 1, 4, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)


class VGGPerceptual:
    """Frozen VGG-19 feature L1. A plain object, not a submodule: its weights are not the SRM's and must not be
    saved with it or handed to the optimizer."""

    def __init__(self, weights: str):
        vgg = require("torchvision.models.vgg", "vision", "the SRM's VGG perceptual loss")
        state = load_weights(weights, "SRM perceptual loss: VGG-19 (option `perceptual_weights`)")
        self.features = vgg.make_layers(vgg.cfgs["E"])[: max(VGG_LAYERS) + 1]  # torchvision's vgg19 `features`
        kept = {}  # the layers up to relu5_1; a full vgg19 state dict (classifier too) is fine
        for key, value in state.items():
            prefix, index, *_ = key.split(".") + [""]
            if prefix == "features" and index.isdigit() and int(index) <= max(VGG_LAYERS):
                kept[key.removeprefix("features.")] = value
        try:
            self.features.load_state_dict(kept)
        except RuntimeError as exc:
            raise ValueError(f"perceptual_weights {weights!r} is not a torchvision VGG-19 state dict: {exc}") from None
        self.features.requires_grad_(False).eval()
        self.mean, self.std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]

    def _activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        x, out = (images - self.mean.to(images)) / self.std.to(images), []
        for index, layer in enumerate(self.features.to(images.device)):
            x = layer(x)
            if index in VGG_LAYERS:
                out.append(x)
        return out

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = self._activations(target)
        return sum(weight * F.l1_loss(a, b) for weight, a, b in
                   zip(VGG_LAYERS.values(), self._activations(output), targets))


class SuperResolution(PretrainedMixin, nn.Module):
    """The SRM: generator + discriminator (both saved), and the SRM loss."""

    def __init__(self, config: SRMConfig = SRMConfig()):
        super().__init__()
        self.config = config
        self.generator = StyleUNet(config)
        self.discriminator = PatchDiscriminator(config.discriminator_channels, config.discriminator_layers)

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        return self.generator(low)

    @torch.no_grad()
    def upscale(self, low: torch.Tensor) -> torch.Tensor:
        """Inference: (N, 3, h, w) in [0, 1] -> (N, 3, h*scale, w*scale) in [0, 1]."""
        return self.generator(low).clamp(0, 1)

    def upscale_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, h, w, 3) -> uint8 (N, h*scale, w*scale, 3), e.g. a batch of HOGS renders."""
        device = next(self.parameters()).device
        low = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255).to(device)
        return (self.upscale(low) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    @functools.cached_property
    def perceptual(self) -> VGGPerceptual | None:
        """The VGG term's network, loaded on first use (inference never needs it)."""
        if self.config.perceptual_weight == 0:
            log.info("SRM: the VGG perceptual term is off (perceptual_weight = 0)")
            return None
        return VGGPerceptual(self.config.perceptual_weights)

    def losses(self, low: torch.Tensor, high: torch.Tensor) -> dict[str, torch.Tensor]:
        """The SRM loss of a batch (images in [0, 1]) and its parts. `total` = generator + discriminator loss:
        minimizing it with one optimizer step trains both players at once, because
        - the generator's adversarial term goes through a detached copy of the discriminator's weights
          (functional_call): its gradient reaches the generator only, never helps the discriminator;
        - the discriminator's loss sees the output detached: its gradient reaches the discriminator only."""
        config = self.config
        output = self.generator(low)
        zero = output.new_zeros(())
        perceptual = self.perceptual(output, high) if self.perceptual is not None else zero
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        adversarial = F.softplus(-torch.func.functional_call(self.discriminator, frozen, (output,))).mean()
        real = high.detach().requires_grad_(self.config.r1_weight > 0)
        real_logits = self.discriminator(real)
        discriminator = F.softplus(self.discriminator(output.detach())).mean() + F.softplus(-real_logits).mean()
        if self.config.r1_weight > 0:
            slope, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            discriminator = discriminator + self.config.r1_weight / 2 * slope.pow(2).sum((1, 2, 3)).mean()
        l1 = F.l1_loss(output, high)
        generator = (config.l1_weight * l1 + config.perceptual_weight * perceptual
                     + config.adversarial_weight * adversarial)
        return {"l1": l1, "perceptual": perceptual, "adversarial": adversarial, "generator": generator,
                "discriminator": discriminator, "total": generator + discriminator}
