"""Training HOGSA's super-resolution module (SRM) on dataset versions of images.

Pairs (low-res input, high-res target), both square: every image is centre-cropped to a square and resized to
`image_size` (the target); the input is
- a HOGS render paired with its ground-truth image, as the paper trains the SRM, resized to image_size / scale:
  a `hogsa-models` dataset's `train_renders` / `train_images` lists (several training views per sequence), or a
  row's `render` (option `render_column`) beside its `image`; else
- the target degraded: optional Gaussian blur (`blur_sigma`, px) then antialiased bicubic downsampling by the
  scale — a STAND-IN for a coarse render (a render's blur and artifacts are not a bicubic kernel's), so that any
  dataset with a PNG column (option `image_column`, default `image`) trains an SRM. Option `inputs=bicubic`
  degrades every target, renders or not.
The paper trains 150k iterations (TrainConfig.steps). Images are kept as uint8 (a 512 px dataset in float
would not fit in memory) and scaled to [0, 1] per batch.

Adversarial training inside the one-optimizer `train` loop: `SuperResolution.losses` returns generator loss +
discriminator loss, arranged so that each player's gradient reaches only its own weights; one step then
updates both (simultaneous rather than alternating updates: every step trains both, and a resumed run is the
same as an uninterrupted one with no step parity to keep).

Evaluation: PSNR and SSIM of the SRM output against the target, beside the same for bicubic upsampling.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hoi_factory.codec import open_image
from hoi_factory.training import saved_files
from models.hogsa.super_resolution import PAIR_COLUMNS, SRMConfig, SuperResolution, bicubic

# Options that are not SRMConfig fields. inputs: "render" (a dataset's renders where it has them) or "bicubic".
DATA_OPTIONS = {"image_column": "image", "render_column": "render", "inputs": "render"}
INPUTS = ("render", "bicubic")
EVALUATED = 32  # examples scored by `evaluate`
EVAL_BATCH = 8
BINARY = ("binary", "large_binary")  # arrow types an image column can have
BINARY_LISTS = tuple(f"list<{kind}>" for kind in BINARY)


def degrade(high: torch.Tensor, scale: int, blur_sigma: float = 0.0) -> torch.Tensor:
    """(N, 3, S, S) in [0, 1] -> (N, 3, S/scale, S/scale): blur, then antialiased bicubic downsampling."""
    if blur_sigma > 0:
        high = TF.gaussian_blur(high, kernel_size=2 * round(3 * blur_sigma) + 1, sigma=blur_sigma)
    size = (high.shape[-2] // scale, high.shape[-1] // scale)
    return F.interpolate(high, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def square_image(data: bytes, size: int) -> np.ndarray:
    """PNG (any decodable image) bytes -> centre square crop resized to `size`, uint8 (3, size, size)."""
    image = open_image(data, "RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return np.array(image).transpose(2, 0, 1)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().byte()


class SRMTask:
    name = "srm"

    def config(self, options: dict[str, Any]) -> SRMConfig:
        preset = SRMConfig.tiny() if options.get("preset") == "tiny" else SRMConfig()
        overrides = {k: v for k, v in options.items() if k != "preset" and k not in DATA_OPTIONS}
        return SRMConfig(**{**asdict(preset), **overrides})

    def build(self, options: dict[str, Any]) -> SuperResolution:
        model = SuperResolution(self.config(options))
        _ = model.perceptual  # load VGG-19 now: a missing `perceptual_weights` fails before the first step
        return model

    def load(self, datasets, options: dict[str, Any]) -> dict[str, torch.Tensor]:
        """`high` (N, 3, S, S) and `low` (N, 3, S/scale, S/scale) uint8, `degraded` (N,): input made from the
        target (no render)."""
        config = self.config(options)
        image_column, render_column, inputs = (options.get(k, default) for k, default in DATA_OPTIONS.items())
        if inputs not in INPUTS:
            raise ValueError(f"option inputs={inputs!r}: expected one of {INPUTS}")
        highs, lows, degraded = [], [], []
        for version in datasets:
            for image, render in image_pairs(version, image_column, render_column, inputs == "render"):
                highs.append(square_image(image, config.image_size))
                lows.append(square_image(render, config.input_size) if render else None)
                degraded.append(not render)
        if not highs:
            empty = torch.empty(0, 3, 1, 1, dtype=torch.uint8)
            return {"high": empty, "low": empty, "degraded": torch.empty(0, dtype=torch.bool)}
        high, mask = torch.from_numpy(np.stack(highs)), torch.tensor(degraded)
        made = iter(to_uint8(degrade(to_unit(high[mask]), config.scale, config.blur_sigma)))
        low = torch.stack([torch.from_numpy(image) if image is not None else next(made) for image in lows])
        return {"high": high, "low": low, "degraded": mask}

    def loss(self, module: SuperResolution, batch: dict[str, torch.Tensor], generator: torch.Generator
             ) -> torch.Tensor:
        return module.losses(to_unit(batch["low"]), to_unit(batch["high"]))["total"]

    def files(self, module) -> dict[str, bytes]:
        return saved_files(module)

    def evaluate(self, module: SuperResolution, data: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean PSNR (dB) and SSIM over the first EVALUATED examples, the SRM's and bicubic upsampling's."""
        low, high = data["low"][:EVALUATED], data["high"][:EVALUATED]
        outputs, baselines = [], []
        for start in range(0, len(low), EVAL_BATCH):
            batch = to_unit(low[start:start + EVAL_BATCH])
            outputs.append(to_uint8(module.upscale(batch)))
            baselines.append(to_uint8(bicubic(batch, module.config.scale)))
        return {**image_quality(torch.cat(outputs), high, ""), **image_quality(torch.cat(baselines), high, "_bicubic")}


def image_pairs(version, image_column: str, render_column: str, renders: bool) -> list[tuple[bytes, bytes | None]]:
    """(target PNG, render PNG or None) of every image in a dataset version: a hogsa-models version's training-view
    pairs, else each row's `image_column` with its `render_column` when present. renders=False leaves out renders."""
    columns = version.manifest.columns
    if all(columns.get(name) in BINARY_LISTS for name in PAIR_COLUMNS):
        render_list, image_list = PAIR_COLUMNS
        rows = version.to_arrow(list(PAIR_COLUMNS)).to_pylist()
        return [(image, render if renders else None) for row in rows
                for render, image in zip(row[render_list] or [], row[image_list] or []) if image]
    if columns.get(image_column) not in BINARY:
        binary = sorted(name for name, kind in columns.items() if kind in BINARY)
        raise ValueError(f"{version.ref}: no image column {image_column!r} (option image_column) and no "
                         f"{' / '.join(PAIR_COLUMNS)} pairs; its binary columns: {binary}")
    with_renders = renders and columns.get(render_column) in BINARY
    rows = version.to_arrow([image_column] + ([render_column] if with_renders else [])).to_pylist()
    return [(row[image_column], row.get(render_column)) for row in rows if row[image_column]]


def image_quality(images: torch.Tensor, targets: torch.Tensor, suffix: str) -> dict[str, float]:
    """Mean PSNR and SSIM of uint8 (N, 3, H, W) images against their targets."""
    pairs = [(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy()) for a, b in zip(images, targets)]
    return {f"psnr{suffix}": float(np.mean([peak_signal_noise_ratio(b, a, data_range=255) for a, b in pairs])),
            f"ssim{suffix}": float(np.mean([structural_similarity(b, a, channel_axis=-1, data_range=255)
                                            for a, b in pairs]))}
