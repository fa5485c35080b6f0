"""The batched aggregation (models/chorus/aggregate.py) computes what the official per-view loop computes: against
the benchmark's port of that loop on posed procedural views, and against the per-voxel reference on random
cameras, bones and masks of different sizes (points behind the cameras, outside the images, bound to one
non-root bone); `views_hit` answers what one aggregation per view answered."""

import numpy as np
import pytest
import torch

import models.chorus.aggregate as aggregate_module
from benchmarks.chorus_aggregation import official_per_view_loop, stand_in_views, weights_for
from models.chorus.aggregate import Views, aggregate, aggregate_reference, views_hit
from models.chorus.canonical import Grid


@pytest.fixture(scope="module")
def posed_views():
    grid = Grid(resolution=16)
    return grid.centres(), weights_for(grid), stand_in_views(24, 64)


def test_float64_equals_the_official_per_view_loop(posed_views):
    points, weights, views = posed_views
    single_bone = ((weights != 0).sum(1) == 1).float().mean()
    assert 0 < single_bone < 1  # both kinds of voxels: one bone (4 x 3 block), blended (all bones)
    exact = Views(views.masks, *(x.double() for x in (views.K, views.R, views.t, views.bones)), views.azimuths)
    batched = aggregate(points.double(), weights.double(), exact)
    official = official_per_view_loop(points.double(), weights.double(), exact)
    assert (official > 0.5).any() and (official > 0).sum() > 100  # the object is there, seen in many voxels
    torch.testing.assert_close(batched, official, rtol=0, atol=1e-6)


def test_float32_differs_from_the_official_loop_only_where_rounding_crosses_a_pixel_edge(posed_views):
    """Same votes summed in the same order: bit-identical wherever both land on the same pixels."""
    points, weights, views = posed_views
    batched, official = aggregate(points, weights, views), official_per_view_loop(points, weights, views)
    assert int((batched != official).sum()) <= len(points) // 1000


def test_views_hit_is_where_each_view_alone_aggregates_above_zero(posed_views):
    points, weights, views = posed_views
    region = (points - torch.tensor([0.3, 0.0, 0.0])).norm(dim=1) < 0.2  # beside the backpack: some views reach it
    alone = [bool(aggregate(points[region], weights[region], Views([views.masks[k]], *(
        x[k:k + 1] for x in (views.K, views.R, views.t, views.bones, views.azimuths)))).gt(0).any())
        for k in range(len(views.masks))]
    assert any(alone) and not all(alone)
    assert views_hit(points[region], weights[region], views).tolist() == alone


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_random_cameras_bones_and_mask_sizes_equal_the_per_voxel_reference(monkeypatch):
    rng = np.random.default_rng(0)
    sizes = [(20, 30), (25, 17), (9, 40), (32, 32), (12, 12)]
    masks = [rng.random(size) < 0.5 for size in sizes]
    K = torch.tensor(np.stack([[[20.0, 0, w / 2], [0, 20.0, h / 2], [0, 0, 1]] for h, w in sizes]))
    R = torch.tensor(np.stack([_rotation(rng) for _ in sizes]))
    t = torch.tensor(np.stack([[0, 0, rng.uniform(0.3, 1.0)] for _ in sizes]))
    bones = torch.eye(4, dtype=torch.float64).repeat(len(sizes), 24, 1, 1)
    bones[:, :, :3, :3] = torch.tensor(np.stack([[_rotation(rng) for _ in range(24)] for _ in sizes]))
    bones[:, :, :3, 3] = torch.tensor(rng.normal(0, 0.3, (len(sizes), 24, 3)))
    views = Views(masks, K, R, t, bones, torch.tensor(rng.uniform(0, 360, len(sizes))))

    points = torch.tensor(rng.uniform(-1, 1, (400, 3)))
    weights = torch.tensor(rng.dirichlet(np.full(24, 0.3), 400))
    weights[:100] = 0
    weights[torch.arange(100), torch.tensor(rng.integers(0, 24, 100))] = 1.0  # bound to one bone, root or not
    posed = torch.einsum("nj,kjab,nb->kna", weights, bones, torch.cat([points, torch.ones(400, 1)], 1))[..., :3]
    depth = (posed @ R.transpose(1, 2) + t[:, None])[..., 2]
    assert ((depth <= 0).any(1) & (depth > 0).any(1)).all()  # every view has points behind it and in front

    monkeypatch.setattr(aggregate_module, "TABLE_CELLS", 2 * 34 * 42)  # tables of 2 views (34 x 42 with the frame)
    batched = aggregate(points, weights, views, chunk_elements=2 * 37).numpy()
    reference = aggregate_reference(points.numpy(), weights.numpy(), views)
    assert 0 < (reference > 0).mean() < 1
    np.testing.assert_allclose(batched, reference, rtol=0, atol=1e-6)
