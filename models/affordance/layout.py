"""The 5-parameter hand layout of Affordance Diffusion and its splat ("lollipop"), shared by HO3Pairs,
LayoutNet and ContentNet.

Parameters, in the official order: (x, y, sqrt_size, b1, b2). x, y: palm centre in NDC ([-1, 1] across the
image, y down); sqrt_size = a, the palm radius is a^2 / 2 in NDC; (b1, b2): the direction from the hand toward
the forearm (any length). The splat is a palm disc plus a forearm stick of length 3.5 a^2 and width equal to the
palm radius, starting at the palm centre. Layouts live on square images.

The splat is a spatial transformer: one canonical template, moved by a similarity transform (affine grid +
grid sample), so it is differentiable in all five parameters. `soft=True` samples the official soft template
(LayoutNet): the max of a Gaussian of the distance to the palm centre (sigma 0.83 palm radii) and, ahead of the
centre, a Gaussian across the stick (sigma 0.83 stick half widths), cut to the official template window (1 palm
radius behind and beside the centre, the stick's end 7 palm radii ahead: a sharp end, zero outside); its 0.5
level is within 3 % of the hard outline (palm 0.98, stick half width 0.49 palm radii). `soft=False` the hard one
(ContentNet, inpainting masks).

Extraction follows the paper (palm from a hand box). A DEVIATION: without a box, which the official code
always has, the palm is found in the hand + forearm mask itself (see `layout_from_mask`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

LAYOUT_SIZE = 5
LAYOUT_DESCRIPTION = ("hand layout (x, y, sqrt_size, b1, b2): palm centre, a with palm radius a^2 / 2, direction "
                      "hand -> forearm (Affordance Diffusion's order)")
LAYOUT_FRAME = "image NDC: [-1, 1] across the square image, y down"
STICK_LENGTH = 3.5  # forearm length in units of a^2 (= 7 palm radii)
STICK_HALF_WIDTH = 0.5  # in palm radii: the stick's width equals the palm radius
MIN_HAND_PIXELS = 50  # Affordance Diffusion: fewer hand pixels -> no layout
MIN_SPLAT_IOU = 0.5  # Affordance Diffusion: the splat must explain the hand mask at least this well
SOFT_SIGMA = 0.83  # the official soft splat's Gaussian width, in palm radii (across the stick: stick half widths)

# The template spans [-EXTENT, EXTENT]^2 palm radii, with the palm at its centre and the stick along +x.
_EXTENT = 8.0
_TEMPLATE_SIZE = 1024
_templates: dict[bool, torch.Tensor] = {}


def _template(soft: bool) -> torch.Tensor:
    """The canonical lollipop, (1, 1, S, S), in palm-radius units; built once per kind."""
    if soft not in _templates:
        coords = (torch.arange(_TEMPLATE_SIZE, dtype=torch.float64) + 0.5) / _TEMPLATE_SIZE * 2 - 1
        v, u = torch.meshgrid(coords * _EXTENT, coords * _EXTENT, indexing="ij")
        radius = torch.sqrt(u**2 + v**2)
        stick_end = 2 * STICK_LENGTH  # 3.5 a^2 = 7 palm radii
        if soft:
            # The official LollipopMask(soft=True): no blur at the window's edges, so the stick ends sharply.
            disc = torch.exp(-0.5 * (radius / SOFT_SIGMA) ** 2)
            bar = torch.exp(-0.5 * (v / (SOFT_SIGMA * STICK_HALF_WIDTH)) ** 2) * (u > 0)
            window = (u >= -1) & (u <= stick_end) & (v.abs() <= 1)
            template = torch.maximum(disc, bar) * window
        else:
            # Anti-aliased: 0.5 exactly on the outline (signed distance of the union), so sampling and
            # thresholding at 0.5 is exact to well below a template pixel.
            along, across = (u - stick_end / 2).abs() - stick_end / 2, v.abs() - STICK_HALF_WIDTH
            bar = (torch.sqrt(along.clamp(min=0) ** 2 + across.clamp(min=0) ** 2)
                   + torch.maximum(along, across).clamp(max=0))
            signed_distance = torch.minimum(radius - 1, bar)
            template = (0.5 - signed_distance / (2 * _EXTENT / _TEMPLATE_SIZE)).clamp(0, 1)
        _templates[soft] = template.float()[None, None]
    return _templates[soft]


def splat(layouts: torch.Tensor, size: int, soft: bool = False) -> torch.Tensor:
    """Layouts (N, 5) -> masks (N, 1, size, size) in [0, 1], differentiable in the layouts."""
    if layouts.ndim != 2 or layouts.shape[1] != 5:
        raise ValueError(f"layouts must have shape (N, 5), got {tuple(layouts.shape)}")
    x, y, a, b1, b2 = layouts.unbind(1)
    radius = (a**2 / 2).clamp_min(1e-6)  # NDC
    norm = torch.sqrt(b1**2 + b2**2).clamp_min(1e-8)
    cos, sin = b1 / norm, b2 / norm
    scale = 1 / (radius * _EXTENT)  # NDC -> template coordinates
    # template = R^T (p - c) * scale with R the rotation taking +x to b.
    theta = torch.stack([
        torch.stack([cos * scale, sin * scale, -(cos * x + sin * y) * scale], 1),
        torch.stack([-sin * scale, cos * scale, (sin * x - cos * y) * scale], 1),
    ], 1)
    grid = F.affine_grid(theta, [len(layouts), 1, size, size], align_corners=False)
    template = _template(soft).to(layouts.device, layouts.dtype).expand(len(layouts), -1, -1, -1)
    return F.grid_sample(template, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def splat_mask(layout: np.ndarray, size: int) -> np.ndarray:
    """One hard splat as a boolean (size, size) array."""
    return splat(torch.as_tensor(layout, dtype=torch.float32)[None], size)[0, 0].numpy() >= 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


@dataclass(frozen=True)
class Extraction:
    layout: np.ndarray | None  # (5,) float32, None when rejected
    reason: str | None  # why there is no layout
    iou: float = 0.0  # of the splat with the mask


HAND_END_SHARE = 0.2  # of the mask's length along its long axis: each end's pixels, compared to find the hand
END_SHARE_FOR_WIDTHS = 0.35  # each end's share whose width profile shows the ragged end (fingers, thumb)
PALM_REACH = 2.0  # the palm lies within this many arm widths of the hand's end


def _hand_end_sign(mask: np.ndarray, along: np.ndarray, rows: np.ndarray, cols: np.ndarray, across: np.ndarray,
                   object_mask: np.ndarray | None) -> float:
    """+1 when the forearm lies toward +`along` (the long axis coordinate of each mask pixel), -1 when the hand
    does. In order of trust: an arm entering from outside touches the image border at its forearm end; the hand
    is the end touching the object it holds; without either, the hand is the ragged end (fingers and thumb make
    its width vary, a forearm is a band of steady width)."""
    height, width = mask.shape
    on_border = (rows == 0) | (cols == 0) | (rows == height - 1) | (cols == width - 1)
    length = max(along.max() - along.min(), 1.0)
    if on_border.any() and abs(along[on_border].mean()) > 0.25 * length:
        return float(np.sign(along[on_border].mean()))
    position = (along - along.min()) / length
    if object_mask is not None and object_mask.any():
        to_object = ndimage.distance_transform_edt(~object_mask)[rows, cols]
        low_end, high_end = (to_object[position <= HAND_END_SHARE].mean(),
                             to_object[position >= 1 - HAND_END_SHARE].mean())
        if low_end != high_end:
            return 1.0 if low_end < high_end else -1.0
    slices = np.floor(along - along.min()).astype(int)
    low, high = np.full(slices.max() + 1, np.inf), np.full(slices.max() + 1, -np.inf)
    np.minimum.at(low, slices, across)
    np.maximum.at(high, slices, across)
    widths = np.where(np.isfinite(low), high - low + 1, 0.0)
    share = max(int(len(widths) * END_SHARE_FOR_WIDTHS), 2)
    variation = [end.std() / max(end.mean(), 1e-6) for end in (widths[:share], widths[-share:])]
    return 1.0 if variation[0] > variation[1] else -1.0


def _palm_from_mask(mask: np.ndarray, object_mask: np.ndarray | None) -> tuple[float, float, float]:
    """Centre and radius (pixels) of the palm of a hand (+ forearm) mask: the widest disc near the hand's end
    of the mask's long axis (the ridge top of its distance transform there, sub-pixel), its radius the distance
    from there to the nearest pixel centre outside the mask. A forearm is often as wide as the palm, so the
    widest disc of the whole mask may sit in the forearm; near the hand end it is the palm."""
    rows, cols = np.nonzero(mask)
    points = np.stack([cols + 0.5, rows + 0.5], 1)
    centred = points - points.mean(0)
    _, axes = np.linalg.eigh(np.cov(centred.T))
    along, across = centred @ axes[:, 1], centred @ axes[:, 0]
    toward_hand = -_hand_end_sign(mask, along, rows, cols, across, object_mask) * along
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][rows, cols]
    arm_width = 2 * np.median(distance[distance >= np.median(distance)])
    near_hand = toward_hand >= toward_hand.max() - PALM_REACH * arm_width
    distance = np.where(near_hand, distance, -1.0)
    ridge = distance >= distance.max() - 1
    cx, cy = points[ridge].mean(0)
    outside_rows, outside_cols = np.nonzero(~np.pad(mask, 1))
    nearest = np.sqrt((outside_cols - 0.5 - cx) ** 2 + (outside_rows - 0.5 - cy) ** 2).min()
    return float(cx), float(cy), float(nearest)


def layout_from_mask(hand_mask: np.ndarray, hand_box: tuple[float, float, float, float] | None = None,
                     min_iou: float = MIN_SPLAT_IOU, object_mask: np.ndarray | None = None) -> Extraction:
    """A hand (+ forearm) mask on a square image -> its layout, or the reason there is none.

    The paper's rule: centre = centre of the hand box, palm radius = max(box w, h) / 2, direction = the mean
    offset of hand-mask pixels from that centre. `hand_box` (x0, y0, x1, y1, pixels) comes from a hand
    detector or keypoints; without one the palm is found in the mask itself (`_palm_from_mask`: the widest
    disc near the hand's end, found from the image border, the `object_mask` or the mask's shape), which is
    exact for splats and within a few pixels for hand + forearm masks. A DEVIATION: the official code always
    has a box (HOI4D's hand keypoints).
    """
    mask = np.asarray(hand_mask, dtype=bool)
    height, width = mask.shape
    if height != width:
        raise ValueError(f"layouts are defined on square images, got a {width}x{height} mask")
    if mask.sum() < MIN_HAND_PIXELS:
        return Extraction(None, "too few hand pixels")
    if hand_box is not None:
        x0, y0, x1, y1 = hand_box
        cx, cy, radius = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2
    else:
        cx, cy, radius = _palm_from_mask(mask, object_mask)
    rows, cols = np.nonzero(mask)
    offset = np.array([(cols + 0.5).mean() - cx, (rows + 0.5).mean() - cy])
    direction = offset / np.linalg.norm(offset) if np.linalg.norm(offset) > 1e-6 else np.array([0.0, 1.0])
    layout = np.array([2 * cx / width - 1, 2 * cy / height - 1, math.sqrt(4 * radius / width), *direction],
                      dtype=np.float32)
    overlap = iou(splat_mask(layout, width), mask)
    if overlap < min_iou:
        return Extraction(None, "layout does not fit the hand mask", overlap)
    return Extraction(layout, None, overlap)
