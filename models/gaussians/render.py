"""Differentiable 3D Gaussian splatting: one entry point, two backends.

- "gsplat": gsplat's fused CUDA rasterizer (`gsplat.rasterization`), for CUDA tensors when gsplat is installed
  (pip install 'hoi-factory[gsplat]').
- "torch": a pure-torch tiled rasterizer with the same rules, for CPU (and any device): EWA projection
  (projection.py), SH colours (spherical_harmonics.py), then per 16x16 tile the Gaussians whose alpha >= 1/255
  box reaches the tile, sorted by depth, composited front to back with gsplat's rules: alpha = min(0.999,
  opacity exp(-power)), alphas below 1/255 skipped, a pixel stops before the Gaussian that would bring its
  transmittance to <= 1e-4. Tiles with similar Gaussian counts are padded and evaluated together in chunks of
  bounded size, so memory stays bounded for any scene; autograd gives the gradients.

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
CHUNK_ELEMENTS = 1 << 21  # (tiles x Gaussians x pixels) evaluated at once by the torch backend


def rasterize_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                        colors: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
                        background: torch.Tensor | None = None, backend: str = "auto", tile_size: int = 16
                        ) -> dict[str, torch.Tensor]:
    """Render N Gaussians into one camera.

    means (N, 3), quats (N, 4) w-x-y-z (any norm), scales (N, 3) standard deviations, opacities (N,) in [0, 1],
    colors (N, 3) RGB or (N, K, 3) SH coefficients (K = 1, 4, 9, 16), viewmat (4, 4) world -> camera,
    K (3, 3). Returns image (H, W, 3) over `background` (default black), alpha (H, W) and depth (H, W): the
    expected camera z of the visible Gaussians (accumulated depth / alpha; 0 where nothing is drawn).
    """
    if colors.dim() not in (2, 3) or colors.shape[0] != len(means) or colors.shape[-1] != 3:
        raise ValueError(f"colors must be (N, 3) or (N, K, 3) with N = {len(means)}, got {tuple(colors.shape)}")
    if background is None:
        background = torch.zeros(3, dtype=means.dtype, device=means.device)
    background = torch.as_tensor(background, dtype=means.dtype, device=means.device)
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and importlib.util.find_spec("gsplat") is not None else "torch"
    if backend == "gsplat":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                                 tile_size)
    if backend == "torch":
        return _rasterize_torch(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                                tile_size)
    raise ValueError(f"unknown backend {backend!r}: 'auto', 'torch' or 'gsplat'")


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background, tile_size):
    gsplat = require("gsplat", "gsplat", "Rendering Gaussians with the gsplat backend")
    if not means.is_cuda:
        raise ValueError("the gsplat backend renders CUDA tensors; use backend='torch' on CPU")
    rendered, alphas, _ = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmat[None], K[None], width, height,
        sh_degree=None if colors.dim() == 2 else sh_degree(colors.shape[1]), backgrounds=background[None],
        render_mode="RGB+ED", tile_size=tile_size)
    return {"image": rendered[0, ..., :3], "alpha": alphas[0, ..., 0], "depth": rendered[0, ..., 3]}


def _rasterize_torch(means, quats, scales, opacities, colors, viewmat, K, width, height, background, tile_size):
    splats = project(means, quats, scales, opacities, viewmat, K, width, height)
    if colors.dim() == 3:
        camera_centre = -viewmat[:3, :3].T @ viewmat[:3, 3]
        colors = sh_to_rgb(colors, means - camera_centre)
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    pixels = tile_size * tile_size
    # Per tile: red, green, blue, alpha, depth (the last two accumulated), for every pixel of the tile.
    per_tile = torch.zeros(tiles_x * tiles_y, pixels, 5, dtype=means.dtype, device=means.device)
    ids = torch.nonzero(splats.visible).squeeze(1)
    if len(ids):
        tiles, starts, counts, gaussians = _bin_by_tile(splats, ids, tile_size, tiles_x, tiles_y)
        # Padding row (index len(ids)): opacity 0, so it never draws.
        pad = lambda x, value: torch.cat([x[ids], torch.full_like(x[:1], value)])  # noqa: E731
        inputs = (pad(splats.means2d, 0), pad(splats.conics, 1), pad(opacities, 0), pad(colors, 0),
                  pad(splats.depths, 0))
        results = [_composite_tiles(chunk, starts, counts, gaussians, len(ids), inputs, tile_size, tiles_x)
                   for chunk in _chunks(tiles, counts, pixels)]
        per_tile = per_tile.index_copy(0, torch.cat([c for c, _ in results]), torch.cat([r for _, r in results]))
    image = (per_tile.reshape(tiles_y, tiles_x, tile_size, tile_size, 5).permute(0, 2, 1, 3, 4)
             .reshape(tiles_y * tile_size, tiles_x * tile_size, 5)[:height, :width])
    alpha = image[..., 3]
    return {"image": image[..., :3] + (1 - alpha)[..., None] * background, "alpha": alpha,
            "depth": image[..., 4] / alpha.clamp_min(1e-10)}


@torch.no_grad()
def _bin_by_tile(splats: Splats, ids: torch.Tensor, tile_size: int, tiles_x: int, tiles_y: int):
    """Gaussian-tile pairs sorted by tile, then depth. Returns the non-empty tiles, each tile's start and count
    in the sorted list (indexed by tile id), and the sorted Gaussians (indices into `ids`)."""
    centre, half = splats.means2d[ids], splats.half_sizes[ids]
    # Columns whose pixel centre (col + 0.5) lies inside [x - half, x + half]; same for rows.
    first = torch.ceil(centre - half - 0.5).long().div(tile_size, rounding_mode="floor")
    last = torch.floor(centre + half - 0.5).long().div(tile_size, rounding_mode="floor")
    first = torch.stack([first[:, 0].clamp_min(0), first[:, 1].clamp_min(0)], 1)
    last = torch.stack([last[:, 0].clamp_max(tiles_x - 1), last[:, 1].clamp_max(tiles_y - 1)], 1)
    spans = (last - first + 1).clamp_min(0)
    per_gaussian = spans[:, 0] * spans[:, 1]
    owner = torch.repeat_interleave(torch.arange(len(ids), device=ids.device), per_gaussian)
    local = torch.arange(len(owner), device=ids.device) - torch.repeat_interleave(
        torch.cumsum(per_gaussian, 0) - per_gaussian, per_gaussian)
    tile = ((first[owner, 1] + local // spans[owner, 0]) * tiles_x + first[owner, 0] + local % spans[owner, 0])
    depth_rank = torch.empty_like(ids)
    depth_rank[torch.argsort(splats.depths[ids].detach())] = torch.arange(len(ids), device=ids.device)
    order = torch.argsort(tile * len(ids) + depth_rank[owner])
    tile, gaussians = tile[order], owner[order]
    counts = torch.bincount(tile, minlength=tiles_x * tiles_y)
    starts = torch.cumsum(counts, 0) - counts
    return torch.nonzero(counts).squeeze(1), starts, counts, gaussians


def _chunks(tiles: torch.Tensor, counts: torch.Tensor, pixels: int):
    """Groups of tiles with similar Gaussian counts, each padded group under CHUNK_ELEMENTS (or one tile)."""
    tiles = tiles[torch.argsort(counts[tiles], descending=True)]
    sizes = counts[tiles].tolist()
    start = 0
    while start < len(tiles):
        widest = sizes[start]  # the first tile of a group has the most Gaussians
        end = start + max(1, CHUNK_ELEMENTS // (widest * pixels))
        yield tiles[start:end]
        start = end


def _composite_tiles(tiles, starts, counts, gaussians, pad_index, inputs, tile_size, tiles_x):
    """Front-to-back compositing of a group of tiles -> (tiles, (T, pixels, 5))."""
    means2d, conics, opacities, colors, depths = inputs
    slots = torch.arange(int(counts[tiles].max()), device=tiles.device)
    position = starts[tiles, None] + slots
    index = torch.where(slots < counts[tiles, None], gaussians[position.clamp_max(len(gaussians) - 1)], pad_index)
    # log(opacity) - power as a quadratic in the pixel's coordinates relative to the tile's corner (small
    # numbers, so float32 keeps its precision): one batched matrix product for all (Gaussian, pixel) pairs.
    corner = torch.stack([tiles % tiles_x, tiles // tiles_x], -1).to(means2d.dtype) * tile_size
    mx, my = (means2d[index] - corner[:, None, :]).unbind(-1)  # (T, slots)
    a, b, c = conics[index].unbind(-1)
    log_opacity = torch.log(opacities[index].clamp_min(1e-30))
    coefficients = torch.stack([-0.5 * a, -b, -0.5 * c, a * mx + b * my, c * my + b * mx,
                                log_opacity - 0.5 * a * mx * mx - b * mx * my - 0.5 * c * my * my], -1)
    pixel = torch.arange(tile_size * tile_size, device=tiles.device)
    px, py = (pixel % tile_size + 0.5).to(means2d.dtype), (pixel // tile_size + 0.5).to(means2d.dtype)
    features = torch.stack([px * px, px * py, py * py, px, py, torch.ones_like(px)])  # (6, pixels)
    alpha = torch.exp(coefficients @ features).clamp_max(MAX_ALPHA)  # (T, slots, pixels)
    alpha = torch.where(alpha >= ALPHA_THRESHOLD, alpha, torch.zeros_like(alpha))
    with torch.no_grad():
        reaching = torch.cumprod(1 - alpha, 1) > TRANSMITTANCE_STOP
    alpha = alpha * reaching
    transmittance = torch.cumprod(1 - alpha, 1)
    weights = alpha * torch.cat([torch.ones_like(transmittance[:, :1]), transmittance[:, :-1]], 1)
    rgb_depth = weights.transpose(1, 2) @ torch.cat([colors[index], depths[index, None]], -1)  # (T, pixels, 4)
    return tiles, torch.cat([rgb_depth[..., :3], (1 - transmittance[:, -1])[..., None], rgb_depth[..., 3:]], -1)
