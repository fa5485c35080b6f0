"""3D Gaussians -> 2D screen-space Gaussians (EWA splatting, Zwicker et al. 2002, as 3DGS and gsplat do it).

Covariance Sigma = R S S^T R^T from a unit quaternion (w, x, y, z) and per-axis standard deviations; the camera
is pinhole (OpenCV: x_cam = R x + t, pixels = K x_cam, pixel centres at +0.5). The 2D covariance is
J W Sigma W^T J^T with J the Jacobian of the perspective projection at the Gaussian's centre, plus gsplat's
0.3 px^2 low-pass dilation ("classic" mode: opacity is not compensated for the dilation).
"""

from __future__ import annotations

from dataclasses import dataclass

import roma
import torch
import torch.nn.functional as F

LOW_PASS = 0.3  # px^2 added to the 2D covariance (gsplat's eps2d): every splat covers at least about a pixel
NEAR_PLANE = 0.01  # gsplat's default: Gaussians closer than this (camera z, metres) are dropped
ALPHA_THRESHOLD = 1 / 255  # smaller per-pixel alphas are skipped while compositing
MAX_ALPHA = 0.999  # gsplat's clamp (the Inria rasterizer uses 0.99)


def quaternion_to_matrix(quats: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z: gsplat's order), any norm -> (..., 3, 3) rotation matrices (roma)."""
    w_first = F.normalize(quats, dim=-1)
    return roma.unitquat_to_rotmat(torch.cat([w_first[..., 1:], w_first[..., :1]], -1))


def matrix_to_quaternion(rotations: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z), w >= 0 (roma); differentiable."""
    xyzw = roma.rotmat_to_unitquat(rotations)
    w_first = torch.cat([xyzw[..., 3:], xyzw[..., :3]], -1)
    return w_first * torch.where(w_first[..., :1] < 0, -1.0, 1.0)


@dataclass
class Splats:
    """Screen-space Gaussians, one row per 3D Gaussian."""
    means2d: torch.Tensor  # (N, 2) pixels
    conics: torch.Tensor  # (N, 3): a, b, c of the inverse 2D covariance; power = 0.5 (a dx^2 + c dy^2) + b dx dy
    depths: torch.Tensor  # (N,) camera z
    half_sizes: torch.Tensor  # (N, 2) no-grad: half width / height of the box outside which alpha < 1/255
    visible: torch.Tensor  # (N,) bool: in front of the near plane, reaching into the image, opacity >= 1/255


def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
            viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int) -> Splats:
    """3D Gaussians (world) -> their 2D splats in the camera `viewmat` (world -> camera), `K`, width x height."""
    rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
    cam = means @ rotation.T + translation
    z = cam[:, 2]
    in_front = z > NEAR_PLANE
    z = torch.where(in_front, z, torch.ones_like(z))  # keeps gradients finite for the dropped ones
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # Like gsplat, the Jacobian is evaluated at the centre clamped to 1.3x the field of view, so that splats far
    # outside the image do not blow up.
    limit_x, limit_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    tx = z * torch.clamp(cam[:, 0] / z, -(cx / fx + limit_x), (width - cx) / fx + limit_x)
    ty = z * torch.clamp(cam[:, 1] / z, -(cy / fy + limit_y), (height - cy) / fy + limit_y)
    # cov2d = J W R S (J W R S)^T: the rows of (N, 2, 3) M = J (W R S), written out (the batched 3x3 and 2x3
    # matrix products are an order of magnitude slower on a CPU).
    wrs = (quaternion_to_matrix(quats) * scales[:, None, :]).transpose(0, 1).reshape(3, -1)
    wrs = (rotation @ wrs).reshape(3, -1, 3)  # (W R S)[n, i, k] at [i, n, k]
    m0 = (fx / z)[:, None] * wrs[0] - (fx * tx / z**2)[:, None] * wrs[2]
    m1 = (fy / z)[:, None] * wrs[1] - (fy * ty / z**2)[:, None] * wrs[2]
    a, b, c = (m0 * m0).sum(1) + LOW_PASS, (m0 * m1).sum(1), (m1 * m1).sum(1) + LOW_PASS
    det = (a * c - b * b).clamp_min(1e-12)
    conics = torch.stack([c / det, -b / det, a / det], -1)
    means2d = torch.stack([fx * cam[:, 0] / z + cx, fy * cam[:, 1] / z + cy], -1)
    with torch.no_grad():
        # alpha = opacity exp(-power) >= 1/255 only where power <= ln(255 opacity): an ellipse whose
        # axis-aligned box has half-sizes extent * (std along x, std along y).
        # (At most sqrt(2 ln 255) = 3.33 standard deviations, gsplat's bound.)
        extent = torch.sqrt(2 * torch.log((opacities.detach() / ALPHA_THRESHOLD).clamp_min(1.0)))
        half_sizes = extent[:, None] * torch.stack([a, c], -1).detach().sqrt()
        low, high = means2d.detach() - half_sizes, means2d.detach() + half_sizes
        visible = (in_front & (extent > 0) & (high[:, 0] > 0) & (low[:, 0] < width) & (high[:, 1] > 0)
                   & (low[:, 1] < height))
    return Splats(means2d, conics, cam[:, 2], half_sizes, visible)
