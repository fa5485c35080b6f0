"""Affordance Diffusion's training augmentation: crop + flip move images, hand mask and layout together, the
layout recomputed as the official code does (palm from the transformed box, direction from the transformed
mask); ContentNet's layout jitter stays within its 10 %."""

import math

import numpy as np
import pytest
import torch

from models.affordance.layout import iou, layout_from_mask, splat_mask
from tasks.training.augment import (
    CONTENTNET_JITTER,
    crop_and_flip,
    jitter_layouts,
    random_crop_and_flip,
)

SIZE = 128


def lollipop_layout(x: float, y: float, radius_ndc: float, degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    return np.array([x, y, math.sqrt(2 * radius_ndc), math.cos(angle), math.sin(angle)], np.float32)


def palm_box(layout: np.ndarray) -> tuple[float, float, float, float]:
    """The hand box (pixels) whose centre and max(w, h) / 2 are the layout's palm."""
    cx, cy, radius = (layout[0] + 1) / 2 * SIZE, (layout[1] + 1) / 2 * SIZE, layout[2] ** 2 / 2 * SIZE / 2
    return cx - radius, cy - radius, cx + radius, cy + radius


def transformed_box(box, centre, half_side, flip):
    """The box through the crop (pixels: origin and side of the crop square) and the flip, computed in pixels."""
    x0, y0 = (centre[0] - half_side + 1) / 2 * SIZE, (centre[1] - half_side + 1) / 2 * SIZE
    scale = 1 / half_side  # output pixels per input pixel: SIZE / (half_side * SIZE)
    xs = [(box[0] - x0) * scale, (box[2] - x0) * scale]
    if flip:
        xs = [SIZE - x for x in xs]
    return min(xs), (box[1] - y0) * scale, max(xs), (box[3] - y0) * scale


def batch_of(hand_masks: list[np.ndarray], layouts: list[np.ndarray]) -> dict:
    hands = torch.from_numpy(np.stack(hand_masks))
    hoi = hands[:, None].float().expand(-1, 3, -1, -1) * 2 - 1  # the hand painted white: must move with the mask
    return {"hands": hands, "layouts": torch.from_numpy(np.stack(layouts)), "hoi": hoi,
            "objects": torch.rand(len(hands), 3, SIZE, SIZE) * 2 - 1}


def apply(batch, centres, half_sides, flips):
    return crop_and_flip(batch, torch.tensor(centres, dtype=torch.float32),
                         torch.tensor(half_sides, dtype=torch.float32), torch.tensor(flips))


def test_crop_and_flip_recompute_the_layout_of_the_transformed_hand():
    layout = lollipop_layout(-0.3, 0.1, 0.1, 30)  # palm 6.4 px, forearm 45 px toward the lower right, in frame
    mask = splat_mask(layout, SIZE)
    cases = [((0.0, 0.0), 1.0, True), ((0.05, -0.05), math.sqrt(0.85), False), ((0.05, -0.05), math.sqrt(0.85), True)]
    out = apply(batch_of([mask] * 3, [layout] * 3), [c for c, _, _ in cases], [h for _, h, _ in cases],
                [f for _, _, f in cases])
    for i, (centre, half_side, flip) in enumerate(cases):
        sign = -1 if flip else 1
        analytic = np.array([sign * (layout[0] - centre[0]) / half_side, (layout[1] - centre[1]) / half_side,
                             layout[2] / math.sqrt(half_side), sign * layout[3], layout[4]])
        hand, recomputed = out["hands"][i].numpy(), out["layouts"][i].numpy()
        # The mask moved as the layout's splat does, and the HOI image moved with it.
        assert iou(hand, splat_mask(analytic, SIZE)) > 0.93
        assert np.array_equal(out["hoi"][i, 0].numpy() > 0, hand)
        # The whole hand stays in the crop: the recomputed layout is the analytically transformed one ...
        np.testing.assert_allclose(recomputed, analytic, atol=0.02)
        # ... and the paper's extraction from the transformed mask and box (an independent computation).
        extracted = layout_from_mask(hand, transformed_box(palm_box(layout), centre, half_side, flip))
        np.testing.assert_allclose(recomputed, extracted.layout, atol=1e-4)


def test_a_crop_that_cuts_the_arm_turns_the_direction_as_the_mask_says_and_a_lost_hand_keeps_the_sample():
    layout = lollipop_layout(0.1, 0.0, 0.12, 20)
    mask = splat_mask(layout, SIZE)
    mask[66:72, 118:] = True  # a sleeve at the right border, off the forearm's axis
    original = layout_from_mask(mask, palm_box(layout)).layout
    assert original is not None
    centre, half_side = (-0.1, -0.1), 0.9  # the crop's right edge at x = 0.8 NDC: the sleeve is cut away
    lost = lollipop_layout(0.9, 0.9, 0.05, 0)  # a hand in the corner the crop drops
    lost_mask = splat_mask(lost, SIZE)
    batch = batch_of([mask, lost_mask], [original, lost])
    out = apply(batch, [centre, centre], [half_side, half_side], [True, False])
    recomputed = out["layouts"][0].numpy()
    extracted = layout_from_mask(out["hands"][0].numpy(), transformed_box(palm_box(layout), centre, half_side, True))
    np.testing.assert_allclose(recomputed, extracted.layout, atol=1e-4)
    mirrored = np.array([-original[3], original[4]])
    assert math.degrees(math.acos(np.clip(recomputed[3:] @ mirrored, -1, 1))) > 3  # not just mirrored
    for key in ("hands", "layouts", "hoi", "objects"):  # the hand left the crop: the sample is unchanged
        assert torch.equal(out[key][1], batch[key][1])


def test_random_crops_cover_80_to_100_percent_and_flip_half_the_samples():
    layout = lollipop_layout(0.0, 0.0, 0.1, 90)  # a centred hand, its forearm straight down
    count = 200
    out = random_crop_and_flip(batch_of([splat_mask(layout, SIZE)] * count, [layout] * count),
                               torch.Generator().manual_seed(0))
    area = (layout[2] / out["layouts"][:, 2]) ** 4  # radius a^2 / 2 grows as 1 / half side
    assert area.min() >= 0.8 - 1e-4 and area.max() <= 1 + 1e-4 and area.max() - area.min() > 0.15
    assert torch.equal(out["hoi"][:, 0] > 0, out["hands"])  # the images moved with the masks
    assert torch.allclose(out["layouts"][:, 3:], torch.tensor([0.0, 1.0]), atol=0.03)  # still down (2 deg)
    tilted = lollipop_layout(0.0, 0.0, 0.1, 60)
    out = random_crop_and_flip(batch_of([splat_mask(tilted, SIZE)] * count, [tilted] * count),
                               torch.Generator().manual_seed(1))
    share_flipped = float((out["layouts"][:, 3] < 0).float().mean())
    assert 0.4 < share_flipped < 0.6


def test_contentnet_jitter_is_uniform_within_ten_percent():
    generator = torch.Generator().manual_seed(0)
    count = 4000
    angles = torch.rand(count, generator=generator) * 6 - 3
    layouts = torch.stack([torch.rand(count, generator=generator) * 1.6 - 0.8,
                           torch.rand(count, generator=generator) * 1.6 - 0.8,
                           0.3 + 0.4 * torch.rand(count, generator=generator), angles.cos(), angles.sin()], 1)
    jittered = jitter_layouts(layouts, generator)
    pixel_change = ((jittered[:, :2] + 1) / (layouts[:, :2] + 1) - 1).flatten()  # pixel coordinates from top-left
    radius_change = (jittered[:, 2] / layouts[:, 2]) ** 2 - 1
    uniform_std = CONTENTNET_JITTER / math.sqrt(3)
    for change in (pixel_change, radius_change):
        assert change.abs().max() <= CONTENTNET_JITTER + 1e-5 and change.abs().max() > 0.95 * CONTENTNET_JITTER
        assert abs(float(change.mean())) < 0.005 and float(change.std()) == pytest.approx(uniform_std, rel=0.05)
    angle_change = torch.atan2(jittered[:, 4], jittered[:, 3]) / angles - 1
    assert angle_change.abs().max() <= CONTENTNET_JITTER * math.pi / 180 + 1e-5  # the official degrees reading
    assert torch.allclose(jittered[:, 3:].norm(dim=1), torch.ones(count))
