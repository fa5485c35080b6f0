"""View-dependent colour from real spherical harmonics, degrees 0-3, in the basis order and with the constants
that 3DGS and gsplat use (Sloan, "Efficient Spherical Harmonic Evaluation", JCGT 2013), so that SH
coefficients fitted here render the same under gsplat.

colour = max(0, sum_k basis_k(direction) * coefficient_k + 0.5), direction = Gaussian centre - camera centre.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SH_C0 = 0.2820947917738781


def sh_degree(num_coefficients: int) -> int:
    degree = math.isqrt(num_coefficients) - 1
    if (degree + 1) ** 2 != num_coefficients or not 0 <= degree <= 3:
        raise ValueError(f"{num_coefficients} SH coefficients per colour: expected 1, 4, 9 or 16 (degree 0-3)")
    return degree


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """The degree-0 coefficient that renders as `rgb` (in [0, 1]) from every direction."""
    return (rgb - 0.5) / SH_C0


def sh_basis(degree: int, directions: torch.Tensor) -> torch.Tensor:
    """(..., 3) directions (any length) -> (..., (degree + 1)^2) basis values."""
    x, y, z = F.normalize(directions, dim=-1).unbind(-1)
    basis = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        basis += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
    if degree >= 2:
        z2, c1, s1 = z * z, x * x - y * y, 2 * x * y
        basis += [0.5462742152960395 * s1, -1.092548430592079 * z * y, 0.9461746957575601 * z2 - 0.3153915652525201,
                  -1.092548430592079 * z * x, 0.5462742152960395 * c1]
    if degree >= 3:
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        middle = -2.285228997322329 * z2 + 0.4570457994644658
        basis += [-0.5900435899266435 * s2, 1.445305721320277 * z * s1, middle * y,
                  z * (1.865881662950577 * z2 - 1.119528997770346), middle * x, 1.445305721320277 * z * c1,
                  -0.5900435899266435 * c2]
    return torch.stack(basis, -1)


def sh_to_rgb(coefficients: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(N, K, 3) coefficients, (N, 3) view directions -> (N, 3) colours."""
    basis = sh_basis(sh_degree(coefficients.shape[-2]), directions)
    return (torch.einsum("nk,nkc->nc", basis, coefficients) + 0.5).clamp_min(0.0)
