"""The training-time augmentation of Affordance Diffusion, as its official configs set it (configs/train.yaml,
dataset/ho3pairs.py).

Object images (Table 2: without it the models overfit to inpainting artifacts and fail on real object images),
each with p = 0.5: the SDEdited object image instead of the inpainted one, a Gaussian blur (sigma 0.1-2 px) and
Gaussian noise (std 0.05 on [0, 1] images).

Geometry, both models: a random square crop of 80-100 % of the image area, resized back, then a horizontal flip
with p = 0.5, applied alike to the object, SDEdited, HOI images and the hand mask. The layout is recomputed as the
official code does from the transformed hand box and mask: the palm centre and radius follow the crop and flip
(the box's), the direction is again the mean offset of the transformed hand-mask pixels from the palm centre (a
crop can cut part of the forearm away).

Layout jitter, ContentNet only (content_ldm.yaml jitter_ratio 0.1; LayoutNet's is 0): the palm centre's pixel
coordinates (from the image's top-left corner) and the palm radius each scaled by a uniform factor in 1 +- 10 %,
the direction angle by 1 +- 0.1 * pi / 180 — the official code reads the ratio as degrees there, so the direction
is practically not jittered; kept as it is. ContentNet thus learns to paint a hand where a layout only roughly says.

After the transform the official code skips a sample with fewer than 50 hand pixels (at LayoutNet's 64 px) or
a splat IoU below the data config's threshold — 0.0 in the released HOI4D config, so never for the IoU, and never
for the jitter. DEVIATIONS: the pixel floor is that share of the image (50 / 64^2) at any size, and a sample
under it keeps its untransformed version (batches keep their size); the crop is continuous, not whole pixels;
after a flip the palm radius stays max(w, h) / 2 of the box (the official flip makes the box width negative, so
its radius silently becomes h / 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from models.affordance.layout import MIN_HAND_PIXELS

P = 0.5
BLUR_SIGMA = (0.1, 2.0)
NOISE_STD = 0.05  # on images in [0, 1]
CROP_AREA = (0.8, 1.0)  # official resize_ratio: the crop's share of the image area
FLIP_P = 0.5
CONTENTNET_JITTER = 0.1  # official jitter_ratio of ContentNet (xy, size, and theta read as degrees)
MIN_HAND_SHARE = MIN_HAND_PIXELS / 64**2  # the official floor, 50 pixels at LayoutNet's 64 px, as a share
IMAGE_KEYS = ("objects", "sdedited", "hoi")  # the batch's images that move with the hand


def augment_objects(objects: torch.Tensor, sdedited: torch.Tensor, has_sdedit: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """Object images (N, 3, S, S) in [-1, 1] -> augmented, in [-1, 1]."""
    n = len(objects)
    use_sdedit = (torch.rand(n, generator=generator) < P) & has_sdedit
    images = torch.where(use_sdedit[:, None, None, None], sdedited, objects)
    out = []
    for image in images:
        if torch.rand(1, generator=generator) < P:
            sigma = float(torch.empty(1).uniform_(*BLUR_SIGMA, generator=generator))
            image = TF.gaussian_blur(image[None], kernel_size=2 * round(3 * sigma) + 1, sigma=sigma)[0]
        if torch.rand(1, generator=generator) < P:
            image = image + 2 * NOISE_STD * torch.randn(image.shape, generator=generator)  # 0.05 of [0, 1]
        out.append(image.clamp(-1, 1))
    return torch.stack(out)


def crop_and_flip(batch: dict, centres: torch.Tensor, half_sides: torch.Tensor, flips: torch.Tensor) -> dict:
    """The batch with its images, `hands` (N, S, S) bool and `layouts` (N, 5) cropped to the squares of
    `centres` (N, 2) and `half_sides` (N,) (NDC, 1 = the whole image) and mirrored where `flips` (N,) bool;
    the layouts recomputed from the transformed hand masks. Samples left with too few hand pixels are returned
    unchanged."""
    sign = 1 - 2 * flips.float()
    zeros = torch.zeros_like(half_sides)
    # Output NDC -> input NDC (what grid_sample needs): x_in = centre_x + sign * half_side * x_out.
    theta = torch.stack([torch.stack([sign * half_sides, zeros, centres[:, 0]], 1),
                         torch.stack([zeros, half_sides, centres[:, 1]], 1)], 1)
    hands = batch["hands"]
    grid = F.affine_grid(theta, [len(hands), 1, *hands.shape[-2:]], align_corners=False)
    moved = {key: F.grid_sample(batch[key], grid, mode="bilinear", padding_mode="border", align_corners=False)
             for key in IMAGE_KEYS if key in batch}
    moved["hands"] = F.grid_sample(hands[:, None].float(), grid, align_corners=False)[:, 0] >= 0.5
    layouts = batch["layouts"]
    palm = torch.stack([sign * (layouts[:, 0] - centres[:, 0]), layouts[:, 1] - centres[:, 1]], 1) / half_sides[:, None]
    moved["layouts"] = torch.cat([palm, (layouts[:, 2] / half_sides.sqrt())[:, None],  # radius a^2/2 scales
                                  mask_direction(moved["hands"], palm)], 1)
    keep = moved["hands"].flatten(1).sum(1) >= MIN_HAND_SHARE * hands[0].numel()
    return {**batch, **{key: _where(keep, value, batch[key]) for key, value in moved.items()}}


def random_crop_and_flip(batch: dict, generator: torch.Generator) -> dict:
    """`crop_and_flip` with the official random parameters: a square of CROP_AREA of the image, flip p = 0.5."""
    n = len(batch["layouts"])
    half_sides = torch.empty(n).uniform_(*CROP_AREA, generator=generator).sqrt()
    centres = (torch.rand((n, 2), generator=generator) * 2 - 1) * (1 - half_sides[:, None])  # inside the image
    return crop_and_flip(batch, centres, half_sides, torch.rand(n, generator=generator) < FLIP_P)


def mask_direction(hands: torch.Tensor, palms: torch.Tensor) -> torch.Tensor:
    """The unit mean offset (N, 2) of each hand mask's pixel centres (N, S, S) from its palm centre (N, 2),
    in NDC: the layout's direction, the paper's rule. Empty masks get (0, 1)."""
    size = hands.shape[-1]
    coordinates = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    weights = hands.float()
    count = weights.flatten(1).sum(1).clamp_min(1)
    mean = torch.stack([(weights * coordinates).flatten(1).sum(1),
                        (weights * coordinates[:, None]).flatten(1).sum(1)], 1) / count[:, None]
    offset = mean - palms
    length = offset.norm(dim=1, keepdim=True)
    return torch.where(length > 1e-6, offset / length.clamp_min(1e-6), torch.tensor([0.0, 1.0]))


def jitter_layouts(layouts: torch.Tensor, generator: torch.Generator, ratio: float = CONTENTNET_JITTER
                   ) -> torch.Tensor:
    """The official layout jitter: palm centre pixel coordinates, palm radius and direction angle each times
    a uniform 1 +- ratio (the angle's ratio read as degrees, as the official code does)."""
    factors = 1 + (torch.rand((len(layouts), 4), generator=generator) * 2 - 1) * ratio
    x, y, a, b1, b2 = layouts.unbind(1)
    x = (x + 1) * factors[:, 0] - 1  # (x + 1) / 2 is the pixel coordinate over the image size
    y = (y + 1) * factors[:, 1] - 1
    a = a * factors[:, 2].sqrt()  # the radius a^2 / 2 scales by the factor
    angle = torch.atan2(b2, b1) * (1 + (factors[:, 3] - 1) * math.pi / 180)
    return torch.stack([x, y, a, angle.cos(), angle.sin()], 1)


def _where(keep: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(keep.reshape(-1, *[1] * (new.ndim - 1)), new, old)
