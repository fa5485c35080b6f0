"""The 5-parameter layout: its convention, splat (hard, soft, differentiable), and extraction from masks."""

import math

import numpy as np
import pytest
import torch

from models.affordance.layout import MIN_HAND_PIXELS, iou, layout_from_mask, splat, splat_mask

SIZE = 256


def random_layouts(count: int, seed: int = 0) -> list[np.ndarray]:
    """Palms of radius 8..24 px on 256 px, inside the frame; the forearm may leave it."""
    rng = np.random.default_rng(seed)
    layouts = []
    for _ in range(count):
        a = math.sqrt(rng.uniform(0.125, 0.375))
        angle = rng.uniform(0, 2 * math.pi)
        layouts.append(np.array([*rng.uniform(-0.6, 0.6, 2), a, math.cos(angle), math.sin(angle)], np.float32))
    return layouts


def test_splat_follows_the_official_convention():
    # a = sqrt(0.25): palm radius a^2/2 = 0.125 NDC = 16 px; forearm 3.5 a^2 = 0.875 NDC = 112 px toward +x,
    # width = palm radius (16 px). Centre (0, 0) = the image centre, pixel 128.
    mask = splat_mask(np.array([0, 0, 0.5, 1, 0]), SIZE)
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    disc = (xx - 128) ** 2 + (yy - 128) ** 2 <= 16**2
    stick = (xx >= 128) & (xx <= 128 + 112) & (np.abs(yy - 128) <= 8)
    assert iou(mask, disc | stick) > 0.97
    assert mask[128, 128 + 100] and not mask[128, 128 - 20]  # the forearm points along +b, not behind the palm
    down = splat_mask(np.array([0.5, -0.5, 0.5, 0, 1]), SIZE)  # b = (0, 1): forearm toward the image bottom
    assert down[64 + 100, 192] and not down[64 - 20, 192]
    # The direction's length does not matter, its sign does.
    assert iou(splat_mask(np.array([0, 0, 0.5, 3, 0]), SIZE), mask) > 0.99


def test_layout_round_trip_on_lollipop_masks():
    errors = []
    for layout in random_layouts(40):
        mask = splat_mask(layout, SIZE)
        extraction = layout_from_mask(mask)
        assert extraction.layout is not None, extraction.reason
        got = extraction.layout
        angle = math.atan2(got[4], got[3]) - math.atan2(layout[4], layout[3])
        errors.append([abs(got[0] - layout[0]) * SIZE / 2, abs(got[1] - layout[1]) * SIZE / 2,
                       abs(got[2] ** 2 / layout[2] ** 2 - 1), abs((angle + math.pi) % (2 * math.pi) - math.pi)])
        assert iou(splat_mask(got, SIZE), mask) >= 0.9
    errors = np.array(errors)
    assert errors[:, 0].max() < 1.0 and errors[:, 1].max() < 1.0  # centre within a pixel
    assert errors[:, 2].max() < 0.05  # palm size within 5 %
    assert np.degrees(errors[:, 3]).max() < 2.0  # direction within 2 degrees


def test_layout_from_a_hand_box_is_the_papers_formula():
    mask = splat_mask(np.array([0.1, -0.2, 0.5, 0.6, 0.8]), SIZE)
    box = (120.0, 80.0, 160.0, 110.0)  # a detector's box: centre (140, 95), radius max(40, 30) / 2 = 20 px
    rows, cols = np.nonzero(mask)
    offset = np.array([(cols + 0.5).mean() - 140, (rows + 0.5).mean() - 95])
    expected = [2 * 140 / SIZE - 1, 2 * 95 / SIZE - 1, math.sqrt(4 * 20 / SIZE), *(offset / np.linalg.norm(offset))]
    extraction = layout_from_mask(mask, box)
    assert extraction.layout is not None
    np.testing.assert_allclose(extraction.layout, expected, atol=1e-5)


def test_soft_and_hard_splats_agree_after_thresholding_and_the_soft_one_has_gradients():
    layouts = torch.tensor(np.stack(random_layouts(12, seed=1)))
    hard, soft = splat(layouts, SIZE), splat(layouts, SIZE, soft=True)
    for h, s in zip(hard[:, 0].numpy() >= 0.5, soft[:, 0].numpy() >= 0.5):
        assert iou(h, s) > 0.98
    assert soft.min() >= 0 and soft.max() <= 1 and (soft[:, 0] > 0.01).sum() > (soft[:, 0] >= 0.5).sum()  # smooth

    params = layouts[:1].clone().requires_grad_(True)
    target = splat(layouts[:1] + torch.tensor([[0.1, 0, 0, 0, 0]]), SIZE, soft=True).detach()
    loss = ((splat(params, SIZE, soft=True) - target) ** 2).mean()
    loss.backward()
    assert torch.isfinite(params.grad).all() and params.grad[0, 0] < 0  # pushes x toward the shifted target


def test_masks_without_a_layout_are_rejected_with_the_reason():
    tiny = np.zeros((SIZE, SIZE), bool)
    tiny[10:15, 10:19] = True  # 45 pixels
    assert tiny.sum() < MIN_HAND_PIXELS
    assert layout_from_mask(tiny).reason == "too few hand pixels"
    ring = np.zeros((SIZE, SIZE), bool)  # a thin ring: no disc + stick explains it
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = np.hypot(xx - 128, yy - 128)
    ring[(radius > 60) & (radius < 64)] = True
    result = layout_from_mask(ring)
    assert result.layout is None and result.reason == "layout does not fit the hand mask" and result.iou < 0.5
    with pytest.raises(ValueError, match="square"):
        layout_from_mask(np.ones((10, 20), bool))
