"""Occupancy aggregation over calibrated views (CHORUS Eq. 6), vectorized over voxels and views.

    occupancy(x) = sum_k r_k M_k(P_k(W_k(x))) / max(sum_k r_k I_k(P_k(W_k(x))), 1e-7)

W_k blends the bone transforms of view k's pose with the voxel's LBS weights; since the warp and the
camera are both linear before the perspective divide, each view's camera is folded into its 24 bone
matrices first, and all views of a chunk are warped and projected with one matrix product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

AZIMUTH_BINS = 12  # 30-degree bins for uniform view sampling


@dataclass
class Views:
    """A batch of calibrated views. `bones` map canonical to each view's posed space (identity bones:
    no canonicalization, the paper's ablation)."""

    masks: list[np.ndarray]  # (H_k, W_k) bool object masks
    K: torch.Tensor  # (V, 3, 3)
    R: torch.Tensor  # (V, 3, 3)
    t: torch.Tensor  # (V, 3)
    bones: torch.Tensor  # (V, 24, 4, 4)
    azimuths: torch.Tensor  # (V,) degrees


def view_weights(azimuths: torch.Tensor, bins: int = AZIMUTH_BINS) -> torch.Tensor:
    """r_k = 1 / (number of views in k's azimuth bin)."""
    index = (torch.as_tensor(azimuths) % 360 / (360 / bins)).long().clamp(max=bins - 1)
    counts = torch.bincount(index, minlength=bins).float()
    return 1.0 / counts[index]


def aggregate(points: torch.Tensor, weights: torch.Tensor, views: Views, chunk: int = 16) -> torch.Tensor:
    """Occupancy in [0, 1] for canonical `points` (N, 3) with LBS `weights` (N, 24), computed on `points`' device
    (the views' cameras, bones and masks, numpy arrays or tensors, are moved there)."""
    device = points.device
    weights = weights.to(device)
    r = view_weights(views.azimuths).to(device)
    numerator = torch.zeros(len(points), device=device)
    denominator = torch.zeros(len(points), device=device)
    homogeneous = torch.cat([points, torch.ones(len(points), 1, device=device)], 1)  # (N, 4)
    for start in range(0, len(views.masks), chunk):
        stop = min(start + chunk, len(views.masks))
        K, R, t, bones = (x[start:stop].to(device) for x in (views.K, views.R, views.t, views.bones))
        extrinsic = torch.cat([R, t[:, :, None]], 2)  # (C, 3, 4)
        camera_bones = K[:, None] @ extrinsic[:, None] @ bones  # (C, 24, 3, 4)
        count = stop - start
        per_point = (weights @ camera_bones.permute(1, 0, 2, 3).reshape(24, -1)).reshape(-1, count, 3, 4)
        pixels = (per_point @ homogeneous[:, None, :, None])[..., 0]  # (N, C, 3)
        for offset in range(count):
            k = start + offset
            mask = torch.as_tensor(views.masks[k], device=device)
            hit, seen = _lookup(pixels[:, offset], mask)
            numerator += r[k] * hit
            denominator += r[k] * seen
    return numerator / denominator.clamp(min=1e-7)


def _lookup(pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask value, inside image) per projected point; points behind the camera count as outside."""
    height, width = mask.shape
    depth = pixels[:, 2]
    safe = torch.where(depth > 1e-6, depth, torch.ones_like(depth))
    u, v = torch.floor(pixels[:, 0] / safe), torch.floor(pixels[:, 1] / safe)
    seen = (depth > 1e-6) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    flat = (v.clamp(0, height - 1) * width + u.clamp(0, width - 1)).long()
    hit = mask.reshape(-1)[flat] & seen
    return hit.float(), seen.float()


def aggregate_reference(points: np.ndarray, weights: np.ndarray, views: Views) -> np.ndarray:
    """The same formula one voxel and one view at a time in plain Python: the benchmark's baseline and an
    independent check of the vectorized version."""
    r = view_weights(views.azimuths).numpy()
    out = np.zeros(len(points))
    for n, x in enumerate(points):
        numerator = denominator = 0.0
        for k, mask in enumerate(views.masks):
            bone = sum(weights[n, j] * views.bones[k, j].numpy() for j in range(24))
            posed = bone[:3, :3] @ x + bone[:3, 3]
            cam = views.R[k].numpy() @ posed + views.t[k].numpy()
            if cam[2] <= 1e-6:
                continue
            pixel = views.K[k].numpy() @ cam
            u, v = math.floor(pixel[0] / pixel[2]), math.floor(pixel[1] / pixel[2])
            if 0 <= u < mask.shape[1] and 0 <= v < mask.shape[0]:
                denominator += r[k]
                numerator += r[k] * float(mask[v, u])
        out[n] = numerator / max(denominator, 1e-7)
    return out
