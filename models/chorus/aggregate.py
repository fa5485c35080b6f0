"""Occupancy aggregation over calibrated views (CHORUS Eq. 6), vectorized over voxels and views.

    occupancy(x) = sum_k r_k M_k(P_k(W_k(x))) / max(sum_k r_k I_k(P_k(W_k(x))), 1e-7)

The result is the official per-view loop's (jellyheadandrew/CHORUS utils/aggregation/aggregator.py: pose the
grid with the view's bones, project it, look the pixels up in the mask, one view at a time), organized
differently:
- the warp and the camera are both linear before the perspective divide, so the homogeneous pixel of voxel x
  in view k is sum_j w_j(x) P_k B_kj [x; 1]: a 96-vector per voxel (w_j(x) x_c), the same in every view, times
  a 96 x 3 matrix per view (P_k B_kj). A chunk of voxels is projected into all views by one matrix product;
  no posed grid is ever made.
- voxels with a single non-zero skinning weight (the pure-root voxels far from the body, ~58% of the 48^3
  grid) need only their bone's 4 x 3 block: 12 multiply-adds per view instead of 288.
- each view's mask is looked up in a table framed by one unseen cell on each side and holding (r_k if seen,
  r_k M_k): the inside test, the mask and the view weight are one clamp and one gather.
- each voxel's votes are summed view after view, in view order, as in the official loop, so they round alike.
Deviation: folding the camera's translation into the bones takes each voxel's weights to sum to 1 (LBS weights
do); the official code poses the point before the camera and does not need it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

AZIMUTH_BINS = 12  # 30-degree bins for uniform view sampling
MIN_DEPTH = 1e-6  # points at or behind this depth are not seen
TABLE_CELLS = 1 << 22  # mask-table cells per group of views: float32 cell indices stay exact (< 2^24), tables small


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


def aggregate(points: torch.Tensor, weights: torch.Tensor, views: Views, chunk_elements: int | None = None
              ) -> torch.Tensor:
    """Occupancy in [0, 1] for canonical `points` (N, 3) with LBS `weights` (N, 24, rows summing to 1), computed on
    `points`' device (the views' cameras, bones and masks, numpy arrays or tensors, are moved there).
    `chunk_elements`: voxel-view pairs projected at once (default: 2^20 on the CPU, where the working set then
    stays in cache; 2^24 on a GPU)."""
    votes = torch.zeros(len(points), 2, device=points.device)  # per voxel: sum r_k I_k, sum r_k M_k
    for _, voxels, view_votes in _view_votes(points, weights, views, chunk_elements):
        _accumulate(votes, voxels, view_votes)
    return votes[:, 1] / votes[:, 0].clamp(min=1e-7)


def views_hit(points: torch.Tensor, weights: torch.Tensor, views: Views, chunk_elements: int | None = None
              ) -> torch.Tensor:
    """(V,) bool: does some point land in view k's object mask (where view k alone would aggregate above 0)?
    Arguments as `aggregate`'s; all views in one pass."""
    hit = torch.zeros(len(views.masks), dtype=torch.bool, device=points.device)
    for start, _, view_votes in _view_votes(points, weights, views, chunk_elements):
        hit[start:start + len(view_votes)] |= (view_votes[..., 1] > 0).any(1)
    return hit


def _view_votes(points: torch.Tensor, weights: torch.Tensor, views: Views, chunk_elements: int | None
                ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Chunk by chunk: (first view k0, voxel indices, (C, n, 2) float32 votes (r_k I_k, r_k M_k) of views k0.. at
    those voxels), each voxel's chunks in view order."""
    device, dtype = points.device, points.dtype
    if chunk_elements is None:
        chunk_elements = 1 << (20 if device.type == "cpu" else 24)
    weights = weights.to(device, dtype)
    K, R, t, bones = (x.to(device, dtype) for x in (views.K, views.R, views.t, views.bones))
    # Folding the camera's translation into the bones takes the weights to sum to 1 (they do: LBS weights).
    camera_bones = (K @ torch.cat([R, t[:, :, None]], 2))[:, None] @ bones  # (V, 24, 3, 4): P_k B_kj
    r = view_weights(views.azimuths).to(device)  # votes in float32 whatever the projection's precision
    masks = [torch.as_tensor(mask, device=device) for mask in views.masks]
    groups = _voxel_groups(points, weights)
    height = max((mask.shape[0] for mask in masks), default=0) + 2
    width = max((mask.shape[1] for mask in masks), default=0) + 2
    if height * width >= 1 << 24 and dtype != torch.float64:
        raise ValueError(f"masks of {height - 2}x{width - 2} pixels: float32 cell indices would not be exact")
    group_size = max(1, TABLE_CELLS // (height * width))
    for start in range(0, len(masks), group_size):
        stop = min(start + group_size, len(masks))
        table = _mask_table(masks[start:stop], r[start:stop], height, width)
        limits = torch.tensor([[m.shape[1] for m in masks[start:stop]], [m.shape[0] for m in masks[start:stop]]],
                              device=device, dtype=dtype)[:, :, None]
        offsets = (torch.arange(stop - start, device=device, dtype=dtype) * (height * width) + width + 1)[:, None]
        for index, features, bone_of_feature in groups:
            # (3C, F): rows u of every view, then v, then depth; columns (bone, homogeneous coordinate).
            matrix = camera_bones[start:stop, bone_of_feature].permute(2, 0, 1, 3).reshape(3 * (stop - start), -1)
            step = max(1, chunk_elements // (stop - start))
            for first in range(0, len(index), step):
                pixels = (matrix @ features[:, first:first + step]).reshape(3, stop - start, -1)
                cells = _cells(pixels, limits, offsets, width)
                view_votes = table.index_select(0, cells.reshape(-1)).reshape(cells.shape)
                yield start, index[first:first + step], torch.view_as_real(view_votes)


def _voxel_groups(points: torch.Tensor, weights: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(voxel indices, (F, n) features, the bones the features blend) per group of voxels: one group per bone for
    voxels with that single non-zero weight (features w_j [x; 1]), one for the rest (w_j(x) x_c, all bones)."""
    device, bone_count = points.device, weights.shape[1]
    homogeneous = torch.cat([points, torch.ones(len(points), 1, device=device, dtype=points.dtype)], 1)
    bound = (weights != 0).sum(1) == 1
    groups = []
    for bone in weights[bound].abs().argmax(1).unique().tolist():
        index = torch.nonzero(bound & (weights[:, bone] != 0))[:, 0]
        features = (weights[index, bone, None] * homogeneous[index]).T.contiguous()
        groups.append((index, features, torch.tensor([bone], device=device)))
    index = torch.nonzero(~bound)[:, 0]
    if len(index):
        features = (weights[index, :, None] * homogeneous[index, None, :]).reshape(len(index), -1).T.contiguous()
        groups.append((index, features, torch.arange(bone_count, device=device)))
    return groups


def _mask_table(masks: list[torch.Tensor], r: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flat (C * height * width) table of (r_k if view k sees the cell, r_k M_k), each mask framed by unseen cells;
    complex64, so that one gather fetches both votes."""
    table = torch.zeros(len(masks), height, width, 2, device=r.device)
    for k, mask in enumerate(masks):
        rows, columns = mask.shape
        table[k, 1:rows + 1, 1:columns + 1, 0] = r[k]
        table[k, 1:rows + 1, 1:columns + 1, 1] = mask * r[k]
    return torch.view_as_complex(table).reshape(-1)


def _cells(pixels: torch.Tensor, limits: torch.Tensor, offsets: torch.Tensor, width: int) -> torch.Tensor:
    """(C, n) int32 table cells of (3, C, n) homogeneous pixels: floor(u), floor(v) clamped onto the unseen frame
    (`limits`: (2, C, 1) each view's width and height), points at or behind MIN_DEPTH on cell 0 (a frame cell)."""
    depth = pixels[2]
    uv = torch.div(pixels[:2], depth).floor_()
    uv = torch.clamp(uv, min=limits.new_tensor(-1.0), max=limits, out=uv)
    cells = torch.add(uv[0].add_(offsets), uv[1], alpha=width).int()  # exact: integers below 2^24 in float32
    return torch.where(depth > MIN_DEPTH, cells, 0)


def _accumulate(votes: torch.Tensor, voxels: torch.Tensor, view_votes: torch.Tensor) -> None:
    """votes[voxels] (n, 2) += each view's votes (C, n, 2) in turn: on the CPU index_add_ adds in index order, so
    the views are summed in order and round as in the official loop."""
    part = votes.index_select(0, voxels)[None]
    part.index_add_(0, torch.zeros(len(view_votes), dtype=torch.long, device=votes.device), view_votes)
    votes.index_copy_(0, voxels, part[0])


def aggregate_reference(points: np.ndarray, weights: np.ndarray, views: Views) -> np.ndarray:
    """The same formula one voxel and one view at a time in plain Python: an independent check of `aggregate`."""
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
