"""The training-time augmentation of Affordance Diffusion (Table 2): without it the models overfit to inpainting
artifacts and fail on real object images. Each with p = 0.5: the SDEdited object image instead of the
inpainted one, a Gaussian blur (sigma 0.1-2 px) and Gaussian noise (std 0.05 on [0, 1] images)."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

P = 0.5
BLUR_SIGMA = (0.1, 2.0)
NOISE_STD = 0.05  # on images in [0, 1]


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
