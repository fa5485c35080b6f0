"""Image quality for Gaussian fits: SSIM (Wang et al. 2004) and PSNR, in torch so SSIM can be a loss.

SSIM uses the standard 11-tap Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population statistics and
only the window positions fully inside the image: the same numbers as
skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WINDOW, SIGMA = 11, 1.5


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid positions only. x: (C, H, W)."""
    taps = torch.exp(-((torch.arange(WINDOW, dtype=x.dtype, device=x.device) - WINDOW // 2) ** 2) / (2 * SIGMA**2))
    taps = taps / taps.sum()
    channels = x.shape[0]
    x = F.conv2d(x[None], taps.reshape(1, 1, 1, -1).expand(channels, 1, 1, WINDOW), groups=channels)
    return F.conv2d(x, taps.reshape(1, 1, -1, 1).expand(channels, 1, WINDOW, 1), groups=channels)[0]


def ssim(image: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of two (H, W, C) images (H, W >= 11), differentiable."""
    x, y = image.permute(2, 0, 1), reference.permute(2, 0, 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _blur(x), _blur(y)
    var_x, var_y = _blur(x * x) - mu_x**2, _blur(y * y) - mu_y**2
    covariance = _blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean()


def psnr(image: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> float:
    mse = float(torch.mean((image - reference) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)
