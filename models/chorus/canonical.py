"""The canonical space of CHORUS: a 48^3 grid over [-1.5, 1.5]^3 around the star-posed body, LBS weights
per voxel, and the warps between canonical and posed space.

Weights (paper Eq. 4 and Supp. A.5): inverse-distance average over the K=30 nearest body vertices, mixed
toward the root (no deformation) as points get far from the body, pure root beyond 0.8 m, then 30 rounds
of 6-neighbour smoothing that keeps the pure-root voxels fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

ROOT = 0


@dataclass(frozen=True)
class Grid:
    resolution: int = 48
    extent: float = 1.5  # the grid spans [-extent, extent]^3

    @property
    def voxel_size(self) -> float:
        return 2 * self.extent / self.resolution

    def centres(self) -> torch.Tensor:
        """(R^3, 3) voxel centres, x-major (index = (i * R + j) * R + k for x_i, y_j, z_k)."""
        axis = -self.extent + self.voxel_size * torch.arange(self.resolution) + self.voxel_size / 2
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)

    def sample(self, values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Trilinear lookup of a (R, R, R) field at (N, 3) points; 0 outside the grid."""
        # grid_sample wants (z, y, x) volume order and (x, y, z) point order in [-1, 1].
        volume = values.permute(2, 1, 0)[None, None].float()
        normalized = (points / self.extent).reshape(1, -1, 1, 1, 3).float()
        return F.grid_sample(volume, normalized, align_corners=False, padding_mode="zeros")[0, 0, :, 0, 0]


def skinning_weights(points: np.ndarray, vertices: np.ndarray, vertex_weights: np.ndarray, k: int = 30,
                     root_distance: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """(N, 24) weights for `points` from the body's vertices, and the mask of points beyond `root_distance`
    (pure root weight: their k-nearest search is skipped)."""
    tree = cKDTree(vertices)
    nearest_distance, _ = tree.query(points, k=1)
    far = nearest_distance >= root_distance
    weights = np.zeros((len(points), vertex_weights.shape[1]))
    weights[far, ROOT] = 1.0
    near = np.nonzero(~far)[0]
    if len(near):
        distances, nearest = tree.query(points[near], k=k)
        inverse = 1.0 / np.maximum(distances, 1e-8)
        blended = (inverse[:, :, None] * vertex_weights[nearest]).sum(1) / inverse.sum(1, keepdims=True)
        to_root = 1 - np.exp(-0.5 * np.arctanh(distances[:, 0] / root_distance))  # 0 on the body, 1 far away
        blended *= (1 - to_root)[:, None]
        blended[:, ROOT] += to_root
        weights[near] = blended
    return weights, far


def smooth_on_grid(weights: np.ndarray, fixed: np.ndarray, resolution: int, rounds: int = 30,
                   keep: float = 0.7) -> np.ndarray:
    """`rounds` of w = (w - mean6) * keep + mean6 on the grid; `fixed` voxels keep their weights."""
    w = torch.from_numpy(weights.reshape(resolution, resolution, resolution, -1)).float()
    fixed_t = torch.from_numpy(fixed.reshape(resolution, resolution, resolution))
    held = w[fixed_t].clone()
    for _ in range(rounds):
        padded = F.pad(w.permute(3, 0, 1, 2)[None], (1, 1, 1, 1, 1, 1), mode="replicate")[0].permute(1, 2, 3, 0)
        mean = (padded[:-2, 1:-1, 1:-1] + padded[2:, 1:-1, 1:-1] + padded[1:-1, :-2, 1:-1]
                + padded[1:-1, 2:, 1:-1] + padded[1:-1, 1:-1, :-2] + padded[1:-1, 1:-1, 2:]) / 6
        w = (w - mean) * keep + mean
        w[fixed_t] = held
    return w.reshape(-1, weights.shape[1]).numpy()


def canonical_weights(grid: Grid, vertices: np.ndarray, vertex_weights: np.ndarray) -> torch.Tensor:
    """(R^3, 24) LBS weights of the canonical grid, from the star-posed body's vertices."""
    weights, far = skinning_weights(grid.centres().numpy(), vertices, vertex_weights)
    return torch.from_numpy(smooth_on_grid(weights, far, grid.resolution)).float()


def forward_warp(points: torch.Tensor, weights: torch.Tensor, bones: torch.Tensor) -> torch.Tensor:
    """Eq. 5: canonical (N, 3) -> posed (N, 3), with bones (24, 4, 4) mapping canonical to posed space."""
    blended = (weights @ bones.reshape(24, 16)).reshape(-1, 4, 4)
    return (blended[:, :3, :3] @ points[:, :, None])[:, :, 0] + blended[:, :3, 3]


def backward_warp(points: torch.Tensor, posed_vertices: np.ndarray, vertex_weights: np.ndarray,
                  bones: torch.Tensor) -> torch.Tensor:
    """Inference: posed (N, 3) -> canonical, with weights computed in posed space and the blend inverted."""
    weights, _ = skinning_weights(points.numpy(), posed_vertices, vertex_weights)
    blended = (torch.from_numpy(weights).float() @ bones.reshape(24, 16)).reshape(-1, 4, 4)
    inverse = torch.linalg.inv(blended)
    return (inverse[:, :3, :3] @ points[:, :, None])[:, :, 0] + inverse[:, :3, 3]
