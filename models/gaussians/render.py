"""Differentiable 3D Gaussian splatting: one entry point, two backends.

- "gsplat": gsplat's fused CUDA rasterizer (`gsplat.rasterization`), for CUDA tensors when gsplat is installed
  (pip install 'hoi-factory[gsplat]').
- "torch": a pure-torch rasterizer with the same rules, for CPU (and any device): EWA projection
  (projection.py), SH colours (spherical_harmonics.py), then front-to-back compositing with gsplat's rules:
  alpha = min(0.999, opacity exp(-power)), alphas below 1/255 skipped, a pixel stops before the Gaussian that
  would bring its transmittance to <= 1e-4. Where gsplat bins Gaussians into 16x16 tiles for its thread
  blocks, here each Gaussian is paired only with the pixels inside its alpha >= 1/255 box (the finest
  tiling: about 25 pixels for a small splat instead of whole tiles), the pairs are sorted by (pixel, depth)
  and composited with a segmented cumulative sum of log-transmittance. The image is processed in bands of
  rows holding at most PAIRS_PER_BAND pairs, so memory stays bounded for any scene; autograd gives the
  gradients.

"auto" picks gsplat for CUDA tensors when it is installed, else torch.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from hoi_factory.optional import require
from models.gaussians.projection import ALPHA_THRESHOLD, MAX_ALPHA, Splats, project
from models.gaussians.spherical_harmonics import sh_degree, sh_to_rgb

TRANSMITTANCE_STOP = 1e-4
PAIRS_PER_BAND = 1 << 22  # (Gaussian, pixel) pairs composited at once by the torch backend


def rasterize_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                        colors: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
                        background: torch.Tensor | None = None, backend: str = "auto"
                        ) -> dict[str, torch.Tensor]:
    """Render N Gaussians into one camera.

    means (N, 3), quats (N, 4) w-x-y-z (any norm), scales (N, 3) standard deviations, opacities (N,) in [0, 1],
    colors (N, 3) RGB or (N, K, 3) SH coefficients (K = 1, 4, 9, 16), viewmat (4, 4) world -> camera,
    K (3, 3). Returns image (H, W, 3) over `background` (default black), alpha (H, W) and depth (H, W): the
    expected camera z of the visible Gaussians (accumulated depth / alpha; 0 where nothing is drawn).
    """
    if colors.dim() not in (2, 3) or colors.shape[0] != len(means) or colors.shape[-1] != 3:
        raise ValueError(f"colors must be (N, 3) or (N, K, 3) with N = {len(means)}, got {tuple(colors.shape)}")
    background = torch.as_tensor((0.0, 0.0, 0.0) if background is None else background, dtype=means.dtype,
                                 device=means.device)
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and importlib.util.find_spec("gsplat") is not None else "torch"
    if backend == "gsplat":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background)
    if backend == "torch":
        return _rasterize_torch(means, quats, scales, opacities, colors, viewmat, K, width, height, background)
    raise ValueError(f"unknown backend {backend!r}: 'auto', 'torch' or 'gsplat'")


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background):
    gsplat = require("gsplat", "gsplat", "Rendering Gaussians with the gsplat backend")
    if not means.is_cuda:
        raise ValueError("the gsplat backend renders CUDA tensors; use backend='torch' on CPU")
    rendered, alphas, _ = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmat[None], K[None], width, height,
        sh_degree=None if colors.dim() == 2 else sh_degree(colors.shape[1]), backgrounds=background[None],
        render_mode="RGB+ED")
    return {"image": rendered[0, ..., :3], "alpha": alphas[0, ..., 0], "depth": rendered[0, ..., 3]}


def _rasterize_torch(means, quats, scales, opacities, colors, viewmat, K, width, height, background):
    splats = project(means, quats, scales, opacities, viewmat, K, width, height)
    if colors.dim() == 3:
        camera_centre = -viewmat[:3, :3].T @ viewmat[:3, 3]
        colors = sh_to_rgb(colors, means - camera_centre)
    ids = torch.nonzero(splats.visible).squeeze(1)
    first, last = _pixel_boxes(splats, ids, width, height)
    # Per pixel: red, green, blue, alpha, depth (the last two accumulated).
    accumulated = torch.zeros(height * width, 5, dtype=means.dtype, device=means.device)
    inputs = (splats.means2d[ids], splats.conics[ids], opacities[ids], colors[ids], splats.depths[ids])
    for top, bottom in _bands(first[:, 1], last[:, 1], (last[:, 0] - first[:, 0] + 1).clamp_min(0), height):
        pixels, values = _composite_band(top, bottom, first, last, splats.depths[ids].detach(), inputs, width)
        accumulated = accumulated.index_copy(0, pixels, values) if len(pixels) else accumulated
    accumulated = accumulated.reshape(height, width, 5)
    alpha = accumulated[..., 3]
    return {"image": accumulated[..., :3] + (1 - alpha)[..., None] * background, "alpha": alpha,
            "depth": accumulated[..., 4] / alpha.clamp_min(1e-10)}


@torch.no_grad()
def _pixel_boxes(splats: Splats, ids: torch.Tensor, width: int, height: int):
    """First and last (column, row) whose pixel centre (+0.5) lies in each Gaussian's box; first > last if none."""
    centre, half = splats.means2d[ids], splats.half_sizes[ids]
    limit = torch.tensor([width - 1, height - 1], device=ids.device)
    first = torch.ceil(centre - half - 0.5).long().clamp_min(0)
    last = torch.minimum(torch.floor(centre + half - 0.5).long(), limit)
    return first, last


@torch.no_grad()
def _bands(first_row: torch.Tensor, last_row: torch.Tensor, row_width: torch.Tensor, height: int):
    """Consecutive row ranges [top, bottom) holding at most PAIRS_PER_BAND pairs each (or one row)."""
    rows = torch.zeros(height + 1, dtype=torch.long, device=first_row.device)
    spans = last_row >= first_row
    rows.index_add_(0, first_row[spans], row_width[spans])
    rows.index_add_(0, last_row[spans] + 1, -row_width[spans])
    per_row = torch.cumsum(rows[:height], 0).tolist()
    top, total = 0, 0
    for row, count in enumerate(per_row):
        if total and total + count > PAIRS_PER_BAND:
            yield top, row
            top, total = row, 0
        total += count
    yield top, height


@torch.no_grad()
def _pairs(top: int, bottom: int, first: torch.Tensor, last: torch.Tensor, depths: torch.Tensor, width: int):
    """The (Gaussian, pixel) pairs of rows [top, bottom), sorted by pixel, then depth: Gaussian and pixel per
    pair, the distinct pixels, and per pair the index of its pixel among those and of its pixel's first pair."""
    row0, row1 = first[:, 1].clamp_min(top), last[:, 1].clamp_max(bottom - 1)
    columns, rows = (last[:, 0] - first[:, 0] + 1).clamp_min(0), (row1 - row0 + 1).clamp_min(0)
    by_depth = torch.argsort(depths)  # pairs are generated nearest Gaussian first ...
    per_gaussian = (columns * rows)[by_depth]
    gaussian = torch.repeat_interleave(by_depth, per_gaussian)
    # Per pair: minus the index of its Gaussian's first pair, the box's left column, top row and width.
    box = torch.stack([-(torch.cumsum(per_gaussian, 0) - per_gaussian), first[by_depth, 0], row0[by_depth],
                       columns[by_depth]], 1).int()
    local, left, row, span = torch.repeat_interleave(box, per_gaussian, 0).unbind(1)
    local = local + torch.arange(len(gaussian), dtype=torch.int32, device=depths.device)
    pixel, order = torch.sort((row + local // span) * width + left + local % span, stable=True)
    gaussian = gaussian.index_select(0, order)  # ... so a stable sort by pixel keeps depth order
    pixels, counts = torch.unique_consecutive(pixel, return_counts=True)
    segment = torch.repeat_interleave(torch.arange(len(pixels), device=depths.device), counts)
    return gaussian, pixel, pixels.long(), segment, torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)


def _composite_band(top, bottom, first, last, depths, inputs, width):
    """Front-to-back compositing of rows [top, bottom) -> (pixel ids, (pixels, 5) values)."""
    gaussian, pixel, pixels, segment, segment_start = _pairs(top, bottom, first, last, depths, width)
    # One gather of every per-Gaussian quantity a pair needs: x, y, conic (3), opacity, colour (3), depth.
    means2d, conics, opacities, colors, z = inputs
    pairs = torch.cat([means2d, conics, opacities[:, None], colors, z[:, None]], 1).index_select(0, gaussian)
    dx = (pixel % width).to(pairs.dtype) + 0.5 - pairs[:, 0]
    dy = (pixel // width).to(pairs.dtype) + 0.5 - pairs[:, 1]
    power = 0.5 * (pairs[:, 2] * dx * dx + pairs[:, 4] * dy * dy) + pairs[:, 3] * dx * dy
    alpha = (pairs[:, 5] * torch.exp(-power)).clamp_max(MAX_ALPHA)
    alpha = alpha * (alpha >= ALPHA_THRESHOLD)
    with torch.no_grad():
        reaching = _log_transmittance(alpha, segment_start) > math.log(TRANSMITTANCE_STOP)
    alpha = alpha * reaching
    log_after = _log_transmittance(alpha, segment_start)
    weights = alpha * torch.exp(log_after - torch.log1p(-alpha).to(log_after)).to(alpha)
    values = torch.cat([pairs[:, 6:9], torch.ones_like(alpha)[:, None], pairs[:, 9:]], 1) * weights[:, None]
    return pixels, torch.zeros(len(pixels), 5, dtype=values.dtype, device=values.device).index_add(0, segment, values)


def _log_transmittance(alpha: torch.Tensor, segment_start: torch.Tensor) -> torch.Tensor:
    """log prod (1 - alpha) over each pixel's pairs up to and including this one (float64: the running sum
    spans all pixels)."""
    log_keep = torch.log1p(-alpha).double()
    running = torch.cumsum(log_keep, 0)
    return running - (running - log_keep).index_select(0, segment_start)
