"""Differentiable 3D Gaussian splatting: one entry point, two backends.

- "gsplat": gsplat's fused CUDA rasterizer (`gsplat.rasterization`), for float32 CUDA tensors when gsplat is
  installed (pip install 'hoi-factory[gsplat]').
- "torch": a pure-torch rasterizer with the same rules, for CPU (and any device): EWA projection
  (projection.py), SH colours (spherical_harmonics.py), then front-to-back compositing with gsplat's rules:
  alpha = min(0.999, opacity exp(-power)), alphas below 1/255 skipped, a pixel stops before the Gaussian that
  would bring its transmittance to <= 1e-4. As in gsplat, each Gaussian is paired with the TILE x TILE tiles its
  alpha >= 1/255 box meets, the pairs are sorted by (tile, depth) with a stable sort (equal depths keep index
  order, as gsplat's radix sort does), and every pixel of a tile is composited against that tile's Gaussians
  with a cumulative sum of log-transmittance down the sorted pairs, restarted at each tile. Deviation: TILE is
  3, not gsplat's 16 (a CUDA thread block): on a CPU each pair evaluates every pixel of its tile, and small
  tiles waste fewer of those on pixels outside the splat. Each tile's weighted values are summed by one sparse
  matrix product. Pairs are processed in chunks of whole tiles holding at most PAIRS_PER_BAND (Gaussian, pixel)
  evaluations, so memory stays bounded for any scene; autograd gives the gradients. (An alpha of exactly 1/255
  is skipped here and kept by gsplat: a measure-zero difference.)

Optional per-Gaussian `features` (labels, ids...) are composited in the same pass with the same weights.

"auto" picks gsplat for float32 CUDA tensors once a tiny gsplat render has succeeded on that device (the PyPI
wheel compiles its CUDA code at the first call, which fails without a matching toolkit); otherwise torch, with
one warning per device when CUDA tensors fall back. float64 always renders with torch (gsplat refuses it).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from hoi_factory.optional import require
from models.gaussians.projection import ALPHA_THRESHOLD, MAX_ALPHA, Splats, project
from models.gaussians.spherical_harmonics import sh_degree, sh_to_rgb

TRANSMITTANCE_STOP = 1e-4
TILE = 3  # pixels per tile side (gsplat: 16)
PAIRS_PER_BAND = 1 << 22  # (Gaussian, pixel) evaluations composited at once by the torch backend
_GSPLAT_WORKS: dict[str, bool] = {}  # device -> whether gsplat's one-time probe render succeeded there


def rasterize_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                        colors: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
                        background: torch.Tensor | None = None, backend: str = "auto",
                        features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Render N Gaussians into one camera.

    means (N, 3), quats (N, 4) w-x-y-z (any norm), scales (N, 3) standard deviations, opacities (N,) in [0, 1],
    colors (N, 3) RGB or (N, K, 3) SH coefficients (K = 1, 4, 9, 16), viewmat (4, 4) world -> camera,
    K (3, 3). Returns image (H, W, 3) over `background` (default black), alpha (H, W) and depth (H, W): the
    expected camera z of the visible Gaussians (accumulated depth / alpha; 0 where nothing is drawn); with
    `features` (N, F), also "features" (H, W, F): them composited with the colours' weights, over zero.
    """
    if colors.dim() not in (2, 3) or colors.shape[0] != len(means) or colors.shape[-1] != 3:
        raise ValueError(f"colors must be (N, 3) or (N, K, 3) with N = {len(means)}, got {tuple(colors.shape)}")
    if features is not None and (features.dim() != 2 or len(features) != len(means)):
        raise ValueError(f"features must be (N, F) with N = {len(means)}, got {tuple(features.shape)}")
    background = torch.as_tensor((0.0, 0.0, 0.0) if background is None else background, dtype=means.dtype,
                                 device=means.device)
    if backend == "auto":
        usable = means.is_cuda and means.dtype == torch.float32 and _gsplat_works(means.device)
        backend = "gsplat" if usable else "torch"
    if backend == "gsplat":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                                 features)
    if backend == "torch":
        return _rasterize_torch(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                                features)
    raise ValueError(f"unknown backend {backend!r}: 'auto', 'torch' or 'gsplat'")


def _gsplat_works(device: torch.device) -> bool:
    """Whether gsplat imports and renders one float32 Gaussian on `device`; probed once per device, and a
    failure is warned about once. Any exception counts as failure: the wheel's first call may compile CUDA code,
    and what fails there (compiler, toolkit, missing `_C`) raises many kinds of errors."""
    key = str(device)
    if key not in _GSPLAT_WORKS:
        try:
            gsplat = require("gsplat", "gsplat", "Rendering Gaussians with the gsplat backend")
            one = torch.ones(1, device=device)
            gsplat.rasterization(torch.tensor([[0.0, 0.0, 1.0]], device=device), torch.tensor([[1.0, 0, 0, 0]],
                                 device=device), 0.1 * torch.ones(1, 3, device=device), 0.5 * one,
                                 torch.ones(1, 3, device=device), torch.eye(4, device=device)[None],
                                 torch.tensor([[[8.0, 0, 4], [0, 8, 4], [0, 0, 1]]], device=device), 8, 8)
            _GSPLAT_WORKS[key] = True
        except Exception as error:  # noqa: BLE001 - see the docstring
            warnings.warn(f"gsplat cannot render on {key} ({type(error).__name__}: {error}); using the pure-torch "
                          "rasterizer there", RuntimeWarning, stacklevel=3)
            _GSPLAT_WORKS[key] = False
    return _GSPLAT_WORKS[key]


def _camera_centre(viewmat: torch.Tensor) -> torch.Tensor:
    return -viewmat[:3, :3].T @ viewmat[:3, 3]


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background, features):
    if means.dtype != torch.float32:
        raise ValueError(f"the gsplat backend renders float32 only, got {means.dtype}: pass tensors.float() or use "
                         "backend='torch'")
    if not means.is_cuda:
        raise ValueError("the gsplat backend renders CUDA tensors; use backend='torch' on CPU")
    gsplat = require("gsplat", "gsplat", "Rendering Gaussians with the gsplat backend")
    degree = None if colors.dim() == 2 else sh_degree(colors.shape[1])
    if features is not None:  # extra channels ride along with RGB, so the colours are evaluated here
        colors = torch.cat([colors if degree is None else sh_to_rgb(colors, means - _camera_centre(viewmat)),
                            features.to(colors)], 1)
        background, degree = torch.cat([background, background.new_zeros(features.shape[1])]), None
    rendered, alphas, _ = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmat[None], K[None], width, height, sh_degree=degree,
        backgrounds=background[None], render_mode="RGB+ED")
    out = {"image": rendered[0, ..., :3], "alpha": alphas[0, ..., 0], "depth": rendered[0, ..., -1]}
    if features is not None:
        out["features"] = rendered[0, ..., 3:-1]
    return out


def _rasterize_torch(means, quats, scales, opacities, colors, viewmat, K, width, height, background, features):
    splats = project(means, quats, scales, opacities, viewmat, K, width, height)
    if colors.dim() == 3:
        colors = sh_to_rgb(colors, means - _camera_centre(viewmat))
    ids = torch.nonzero(splats.visible).squeeze(1)
    tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
    # Per Gaussian: colour (3), features (F), depth, 1 (its accumulated weight is the pixel's alpha).
    values = [colors, *([] if features is None else [features.to(colors)]), splats.depths[:, None],
              torch.ones_like(splats.depths)[:, None]]
    inputs = torch.cat([splats.means2d, splats.conics, opacities[:, None], *values], 1).index_select(0, ids)
    gaussian, tile = _tile_intersections(splats, ids, tiles_x, width, height)
    tiles = tiles_y * tiles_x
    accumulated = torch.zeros(TILE * TILE * tiles, inputs.shape[1] - 6, dtype=means.dtype, device=means.device)
    for start, end in _chunks(tile, tiles):
        accumulated = accumulated + _composite_tiles(inputs, gaussian[start:end], tile[start:end], tiles_x, tiles)
    # (pixel in tile, tile row, tile column) -> (row, column)
    accumulated = accumulated.reshape(TILE, TILE, tiles_y, tiles_x, -1).permute(2, 0, 3, 1, 4)
    accumulated = accumulated.reshape(tiles_y * TILE, tiles_x * TILE, -1)[:height, :width]
    alpha = accumulated[..., -1]
    out = {"image": accumulated[..., :3] + (1 - alpha)[..., None] * background, "alpha": alpha,
           "depth": accumulated[..., -2] / alpha.clamp_min(1e-10)}
    if features is not None:
        out["features"] = accumulated[..., 3:-2]
    return out


@torch.no_grad()
def _tile_intersections(splats: Splats, ids: torch.Tensor, tiles_x: int, width: int, height: int):
    """Every (Gaussian, tile) pair whose tile meets the Gaussian's alpha >= 1/255 box, sorted by tile, then depth,
    then index (as gsplat's radix sort of (tile, depth) keys keeps index order for equal depths): the Gaussian's
    row in `ids` and the tile, per pair."""
    centre, half = splats.means2d[ids], splats.half_sizes[ids]
    limit = torch.tensor([width - 1, height - 1], device=ids.device)
    # First and last (column, row) whose pixel centre (+0.5) lies in the box, then their tiles; first > last if none.
    first = torch.ceil(centre - half - 0.5).long().clamp_min(0)
    last = torch.minimum(torch.floor(centre + half - 0.5).long(), limit)
    first_tile, last_tile = first // TILE, torch.where(last >= first, last // TILE, first // TILE - 1)
    columns = (last_tile[:, 0] - first_tile[:, 0] + 1).clamp_min(0)
    per_gaussian = columns * (last_tile[:, 1] - first_tile[:, 1] + 1).clamp_min(0)
    by_depth = torch.sort(splats.depths[ids], stable=True).indices
    per_gaussian = per_gaussian.index_select(0, by_depth)
    # Per Gaussian, nearest first: minus the index of its first pair, its first tile's column and row, its width
    # in tiles; then per pair (int32: faster division and sort).
    box = torch.stack([-(torch.cumsum(per_gaussian, 0) - per_gaussian), first_tile[:, 0].index_select(0, by_depth),
                       first_tile[:, 1].index_select(0, by_depth), columns.index_select(0, by_depth)], 1).int()
    local, left, top, span = torch.repeat_interleave(box, per_gaussian, 0).unbind(1)
    local = local + torch.arange(len(local), dtype=torch.int32, device=ids.device)
    tile, order = torch.sort((top + local // span) * tiles_x + left + local % span, stable=True)
    # (a stable sort: within a tile, the depth (then index) order of generation stays)
    return torch.repeat_interleave(by_depth, per_gaussian).index_select(0, order), tile.long()


@torch.no_grad()
def _chunks(tile: torch.Tensor, tiles: int):
    """Consecutive ranges of the sorted pairs, cut between tiles, each holding at most PAIRS_PER_BAND
    (Gaussian, pixel) pairs (or one tile)."""
    counts = torch.bincount(tile, minlength=tiles).tolist()
    start, end = 0, 0
    for count in counts:
        if end > start and (end - start + count) * TILE * TILE > PAIRS_PER_BAND:
            yield start, end
            start = end
        end += count
    if end > start:
        yield start, end


def _composite_tiles(inputs: torch.Tensor, gaussian: torch.Tensor, tile: torch.Tensor, tiles_x: int, tiles: int
                     ) -> torch.Tensor:
    """Front-to-back compositing of (Gaussian, tile) pairs sorted by tile then depth -> per (pixel in tile, tile)
    the sum of the Gaussians' weighted values, (TILE^2 * tiles, values). Arrays are (pixel in tile, pair): the
    cumulative sum along the pairs reads memory in order."""
    pairs = inputs.index_select(0, gaussian)
    # -log alpha = power - log opacity, power = 0.5 (a dx^2 + c dy^2) + b dx dy with (dx, dy) = (ox + u, oy + v):
    # (ox, oy) from the Gaussian's centre to the tile's first pixel centre, (u, v) the pixel's offset in the tile.
    # Expanded in u and v, it is one matrix product: (1, u, v, u^2, v^2, uv) per pixel times six terms per pair.
    ox = ((tile % tiles_x) * TILE).to(pairs) + 0.5 - pairs[:, 0]
    oy = ((tile // tiles_x) * TILE).to(pairs) + 0.5 - pairs[:, 1]
    a, b, c = pairs[:, 2], pairs[:, 3], pairs[:, 4]
    log_alpha_terms = -torch.stack([0.5 * (a * ox * ox + c * oy * oy) + b * ox * oy - torch.log(pairs[:, 5]),
                                    a * ox + b * oy, c * oy + b * ox, 0.5 * a, 0.5 * c, b])
    count, pixels = len(gaussian), TILE * TILE
    pixel = torch.arange(pixels, device=inputs.device)
    u, v = (pixel % TILE).to(pairs), (pixel // TILE).to(pairs)
    alpha = torch.exp(torch.stack([torch.ones_like(u), u, v, u * u, v * v, u * v], 1) @ log_alpha_terms)
    alpha = F.threshold(alpha.clamp_max(MAX_ALPHA), ALPHA_THRESHOLD, 0.0)  # (keeps alpha > 1/255; gsplat >=)
    # A sparse (pixel in tile, tile) x pair matrix sums per tile: the row of a pixel of a tile holds the tile's
    # pairs (contiguous).
    counts = torch.bincount(tile, minlength=tiles)
    tile_start = torch.cumsum(counts, 0) - counts  # (tiles,): index of each tile's first pair in this chunk
    row_starts = pixel[:, None] * count + tile_start
    row_starts = torch.cat([row_starts.reshape(-1), row_starts.new_full((1,), pixels * count)])
    columns = torch.arange(count, device=inputs.device).repeat(pixels)

    def per_tile(values: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
            return torch.sparse_csr_tensor(row_starts, columns, values.reshape(-1), (pixels * tiles, count),
                                           check_invariants=False)

    # log transmittance after each pair: a cumulative sum along the pairs that restarts at each tile, as each
    # tile's first pair also takes away the sum of the tile before it (float64: the running sum spans the chunk).
    log_keep = torch.log(1 - alpha)
    log_keep_64 = log_keep.double()
    occupied = counts > 0
    tile_sums = (per_tile(log_keep_64) @ torch.ones(count, 1, dtype=torch.float64, device=inputs.device)
                 ).reshape(pixels, tiles)[:, occupied]
    restart = torch.zeros_like(log_keep_64).index_add(1, tile_start[occupied][1:], -tile_sums[:, :-1])
    log_after = torch.cumsum(log_keep_64 + restart, 1).to(alpha)
    # A pixel stops before the Gaussian that would bring its transmittance to <= 1e-4 (log transmittance -inf
    # from there: no weight), so the alphas past the stop in the running sum never reach the image.
    log_after = F.threshold(log_after, math.log(TRANSMITTANCE_STOP), -math.inf)
    return per_tile(alpha * torch.exp(log_after - log_keep)) @ pairs[:, 6:]
