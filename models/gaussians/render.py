"""Differentiable 3D Gaussian splatting: one entry point, two backends.

- "gsplat": gsplat's fused CUDA rasterizer (`gsplat.rasterization`), for float32 CUDA tensors when gsplat is
  installed (pip install 'hoi-factory[gsplat]').
- "torch": a pure-torch rasterizer with the same rules, for CPU (and any device): EWA projection
  (projection.py), SH colours (spherical_harmonics.py), then front-to-back compositing with gsplat's rules:
  alpha = min(0.999, opacity exp(-power)), alphas below 1/255 skipped, a pixel stops before the Gaussian that
  would bring its transmittance to <= 1e-4. As in gsplat, each Gaussian is paired with the TILE x TILE tiles it
  reaches, the pairs are sorted by (tile, depth) with a stable sort (equal depths keep index order, as gsplat's
  radix sort does), and every pixel of a tile is composited against that tile's Gaussians in that order.
  Deviations, for speed on a CPU (the images are the same): TILE is 4, not gsplat's 16 (a CUDA thread block):
  each pair evaluates every pixel of its tile, and small tiles waste fewer of those on pixels outside the splat;
  and a Gaussian is paired only with the tiles whose pixel centres its alpha > 1/255 ellipse meets, not every
  tile of its box. Tiles are composited in groups of similar pair counts, each group one padded dense block
  (tiles, pairs, pixels) that fits the CPU's cache: alphas from one matrix product, transmittance from a
  cumulative sum of log(1 - alpha) along the pairs, the weighted values summed by a batched matrix product. At
  most PAIRS_PER_GROUP (Gaussian, pixel) evaluations are held at once, so memory stays bounded for any scene;
  every step is a dense torch op, so autograd's backward costs about what the forward does. (An alpha of
  exactly 1/255 is skipped here and kept by gsplat: a measure-zero difference.)

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
TILE = 4  # pixels per tile side (gsplat: 16)
PAIRS_PER_GROUP = 1 << 16  # (Gaussian, pixel) evaluations composited at once by the torch backend
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
    gaussian, tile = _tile_intersections(splats, ids, opacities, tiles_x, width, height)
    # Per Gaussian: its centre, conic and log opacity (visible ones have opacity > 1/255), and the values it
    # composites: colour (3), features (F), depth, 1 (its accumulated weight is the pixel's alpha). A last row,
    # zero opacity, is the Gaussian of one last pair that pads the tile groups.
    shape = torch.cat([splats.means2d.T, splats.conics.T, torch.log(opacities.clamp_min(ALPHA_THRESHOLD))[None]])
    shape = torch.cat([shape, shape.new_tensor([0, 0, 0, 0, 0, -math.inf])[:, None]], 1)  # (6, Gaussians + 1)
    values = torch.cat([colors, *([] if features is None else [features.to(colors)]), splats.depths[:, None],
                        torch.ones_like(splats.depths)[:, None]], 1)
    values = torch.cat([values, values.new_zeros(1, values.shape[1])])
    gaussian, tile = torch.cat([gaussian, gaussian.new_full((1,), len(means))]), torch.cat([tile, tile.new_zeros(1)])
    terms = _log_alpha_terms(shape.index_select(1, gaussian), tile, tiles_x)
    pixel = torch.arange(TILE * TILE, device=means.device)
    u, v = (pixel % TILE).to(terms), (pixel // TILE).to(terms)
    monomials = torch.stack([torch.ones_like(u), u, v, u * u, v * v, u * v])  # (6, pixels in a tile)
    tiles = tiles_y * tiles_x
    drawn, parts = [], []
    for group, slots in _tile_groups(tile[:-1], tiles, len(tile) - 1):
        drawn.append(group)
        slot = slots.reshape(-1)
        parts.append(_composite(terms.index_select(0, slot).reshape(*slots.shape, 6),
                                values.index_select(0, gaussian.index_select(0, slot)).reshape(*slots.shape, -1),
                                monomials))
    accumulated = values.new_zeros(tiles, TILE * TILE, values.shape[1])
    if parts:
        accumulated = accumulated.index_copy(0, torch.cat(drawn), torch.cat(parts))
    # (tile row, tile column, pixel row in tile, pixel column in tile) -> (row, column)
    accumulated = accumulated.reshape(tiles_y, tiles_x, TILE, TILE, -1).permute(0, 2, 1, 3, 4)
    accumulated = accumulated.reshape(tiles_y * TILE, tiles_x * TILE, -1)[:height, :width]
    alpha = accumulated[..., -1]
    out = {"image": accumulated[..., :3] + (1 - alpha)[..., None] * background, "alpha": alpha,
           "depth": accumulated[..., -2] / alpha.clamp_min(1e-10)}
    if features is not None:
        out["features"] = accumulated[..., 3:-2]
    return out


@torch.no_grad()
def _tile_intersections(splats: Splats, ids: torch.Tensor, opacities: torch.Tensor, tiles_x: int, width: int,
                        height: int):
    """Every (Gaussian, tile) pair where the Gaussian's alpha can exceed 1/255 at a pixel centre of the tile,
    sorted by tile, then depth, then index (as gsplat's radix sort of (tile, depth) keys keeps index order for
    equal depths): the Gaussian (one of `ids`) and the tile, per pair. Per Gaussian and row of tiles, the tiles
    are those whose pixel-centre columns meet the ellipse alpha >= 1/255 within the row's band of pixel centres
    (gsplat pairs a Gaussian with every tile of its bounding box: here the tiles are small, and the box's corners
    would be a quarter of the pairs)."""
    ids = ids.index_select(0, torch.sort(splats.depths.detach().index_select(0, ids), stable=True).indices)
    x, y, a, b, c = torch.cat([splats.means2d.detach(), splats.conics.detach()], 1).index_select(0, ids).unbind(1)
    # The ellipse: power = 0.5 (a x^2 + 2 b x y + c y^2) <= bound = ln(255 opacity) (x, y from its centre),
    # widened by a rounding margin so that no pixel it reaches is lost.
    bound = torch.log(opacities.detach().index_select(0, ids) / ALPHA_THRESHOLD)
    twice_bound = 2 * (bound + 1e-4 * (1 + bound))
    det = a * c - b * b
    reach_y = torch.sqrt(twice_bound * a / det)
    first_row = torch.ceil(y - reach_y - 0.5).clamp_min(0)
    last_row = torch.floor(y + reach_y - 0.5).clamp_max(height - 1)
    first_tile_row = torch.div(first_row, TILE, rounding_mode="floor")
    rows = torch.where(last_row >= first_row, torch.div(last_row, TILE, rounding_mode="floor") - first_tile_row + 1,
                       0).long()
    # Across a band of rows, the ellipse's left edge x = (-b y - sqrt(2 bound a - det y^2)) / a is convex in y,
    # least at the ellipse's leftmost point y = b sqrt(2 bound / (det c)); the right edge is greatest at minus it.
    extreme_y = b * torch.sqrt(twice_bound / (det * c))
    # Per (Gaussian, row of tiles), nearest Gaussian first: its row of tiles (the Gaussian's first + the place of
    # the row in the Gaussian's), the band of pixel-centre rows y0..y1 it covers there, its columns of tiles.
    x, y, a, b, det, twice_bound, extreme_y, first_row, last_row = torch.repeat_interleave(
        torch.stack([x, y, a, b, det, twice_bound, extreme_y, first_row, last_row], 1), rows, 0).unbind(1)
    row = torch.repeat_interleave(first_tile_row.long() - (torch.cumsum(rows, 0) - rows), rows)
    row = (row + torch.arange(len(row), device=ids.device)).to(x)
    y0 = torch.maximum(row * TILE, first_row) + 0.5 - y
    y1 = torch.minimum(row * TILE + TILE - 1, last_row) + 0.5 - y

    def edge(band_y, sign):
        return (-b * band_y + sign * torch.sqrt((twice_bound * a - det * band_y * band_y).clamp_min(0))) / a + x

    first_column = torch.ceil(edge(torch.minimum(torch.maximum(extreme_y, y0), y1), -1) - 0.5).clamp_min(0)
    last_column = torch.floor(edge(torch.minimum(torch.maximum(-extreme_y, y0), y1), 1) - 0.5).clamp_max(width - 1)
    first_tile = torch.div(first_column, TILE, rounding_mode="floor")
    columns = torch.where(last_column >= first_column,
                          torch.div(last_column, TILE, rounding_mode="floor") - first_tile + 1, 0).long()
    # Per pair: the band's first tile + the pair's place in its band.
    tile = torch.repeat_interleave((row * tiles_x + first_tile).long() - (torch.cumsum(columns, 0) - columns), columns)
    tile, order = torch.sort((tile + torch.arange(len(tile), device=ids.device)).int(), stable=True)  # (int32: faster)
    # (a stable sort: within a tile, the depth (then index) order of generation stays)
    return torch.repeat_interleave(torch.repeat_interleave(ids, rows), columns).index_select(0, order), tile.long()


def _log_alpha_terms(shape: torch.Tensor, tile: torch.Tensor, tiles_x: int) -> torch.Tensor:
    """Per pair, its Gaussian's (6, pairs) centre, conic and log opacity -> (pairs, 6): log alpha = log opacity -
    power, power = 0.5 (a dx^2 + c dy^2) + b dx dy with (dx, dy) = (ox + u, oy + v): (ox, oy) from the Gaussian's
    centre to the tile's first pixel centre, (u, v) the pixel's offset in the tile. Expanded in u and v, log alpha
    at every pixel of the tile is one matrix product: these six terms times (1, u, v, u^2, v^2, uv)."""
    x, y, a, b, c, log_opacity = shape  # (rows: contiguous, faster than columns)
    ox = ((tile % tiles_x) * TILE).to(shape) + 0.5 - x
    oy = (torch.div(tile, tiles_x, rounding_mode="floor") * TILE).to(shape) + 0.5 - y
    return torch.stack([log_opacity - 0.5 * (a * ox * ox + c * oy * oy) - b * ox * oy,
                        -(a * ox + b * oy), -(c * oy + b * ox), -0.5 * a, -0.5 * c, -b], 1)


@torch.no_grad()
def _tile_groups(tile: torch.Tensor, tiles: int, padding: int):
    """The occupied tiles in groups of similar pair counts, each group as (its tiles, (tiles, width) the rows of
    their pairs, nearest first, padded with `padding` up to the group's largest count). Groups hold at most
    PAIRS_PER_GROUP (Gaussian, pixel) evaluations (or one tile): small enough to stay in the CPU's cache while
    they are composited, and memory stays bounded for any scene. Tiles are taken by decreasing count, so
    padding wastes little."""
    counts = torch.bincount(tile, minlength=tiles)
    starts = torch.cumsum(counts, 0) - counts
    occupied = torch.nonzero(counts).squeeze(1)
    occupied = occupied.index_select(0, torch.sort(counts[occupied], descending=True, stable=True).indices)
    occupied_counts = counts[occupied].tolist()
    first = 0
    while first < len(occupied):
        width = occupied_counts[first]
        group = occupied[first:first + max(1, PAIRS_PER_GROUP // (width * TILE * TILE))]
        slots = starts[group, None] + torch.arange(width, device=tile.device)
        yield group, torch.where(slots < (starts + counts)[group, None], slots, padding)
        first += len(group)


def _composite(terms: torch.Tensor, values: torch.Tensor, monomials: torch.Tensor) -> torch.Tensor:
    """Front-to-back compositing of a group of tiles: per tile its pairs' (tiles, pairs, 6) log-alpha terms and
    (tiles, pairs, values) values, nearest first -> per tile and pixel the sum of the weighted values,
    (tiles, pixels in a tile, values)."""
    alpha = torch.exp(terms @ monomials)  # (tiles, pairs, pixels)
    alpha = F.threshold(alpha.clamp_max(MAX_ALPHA), ALPHA_THRESHOLD, 0.0)  # (keeps alpha > 1/255; gsplat >=)
    log_keep = torch.log1p(-alpha)
    # log transmittance after each pair; a pixel stops before the Gaussian that would bring its transmittance to
    # <= 1e-4 (log transmittance -inf from there: no weight for it and those behind it).
    log_after = F.threshold(torch.cumsum(log_keep, 1), math.log(TRANSMITTANCE_STOP), -math.inf)
    # (values x pairs) @ (pairs x pixels) per tile: much faster than the transposed product on a CPU.
    return (values.transpose(1, 2) @ (alpha * torch.exp(log_after - log_keep))).transpose(1, 2)
