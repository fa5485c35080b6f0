"""CHORUS geometry against ground truth: the stand-in body, the rasterizer, the vectorized aggregation
against its per-voxel reference, and the recovery of a known object placement (with the paper's
canonicalization ablation)."""

import math

import numpy as np
import pytest
import torch
import trimesh

import models.chorus.aggregate as aggregate_module
from models.body import load_body_model
from models.body.smpl import star_pose
from models.body.standin import rest_joints
from models.chorus.aggregate import Views, aggregate, aggregate_reference, view_weights
from models.chorus.canonical import Grid, backward_warp, canonical_weights, forward_warp
from models.render.camera import intrinsics, orbit_camera
from models.render.raster import rasterize
from tasks.chorus.lexicon import CATEGORIES
from tasks.chorus.scenes import canonical_object_voxels, interaction_pose, render_scene


@pytest.fixture(scope="module")
def body():
    return load_body_model("standin")


def test_standin_loads_through_smplx_with_smpl_joints(body):
    rest = body.pose(torch.zeros(1, 69))
    assert rest.vertices.shape[2] == 3 and body.faces.max() < rest.vertices.shape[1]
    np.testing.assert_allclose(rest.joints[0].numpy(), rest_joints(), atol=1e-5)  # regressor gives the joints back
    np.testing.assert_allclose(rest.transforms.numpy(), np.broadcast_to(np.eye(4), (1, 24, 4, 4)), atol=1e-6)
    # Bending the left elbow by 90 degrees about y moves the left wrist forward/back, not the right one.
    pose = torch.zeros(1, 23, 3)
    pose[0, 17, 1] = math.pi / 2  # left_elbow is joint 18 -> body_pose index 17
    bent = body.pose(pose.reshape(1, -1)).joints[0]
    assert abs(bent[20, 2] - rest.joints[0, 20, 2]) == pytest.approx(0.25, abs=1e-3)  # forearm length
    assert torch.allclose(bent[21], rest.joints[0, 21], atol=1e-6)


def test_rasterizer_matches_analytic_sphere():
    sphere = trimesh.creation.icosphere(5, radius=0.5)
    K = intrinsics(128, 128)
    R, t = orbit_camera(0, 0, 3.0)
    depth, faces = rasterize(sphere.vertices @ R.T + t, sphere.faces, K, 128, 128)
    radius_px = K[0, 0] * math.tan(math.asin(0.5 / 3))
    assert (faces >= 0).sum() == pytest.approx(math.pi * radius_px**2, rel=0.02)
    assert depth[64, 64] == pytest.approx(2.5, abs=2e-3)
    assert np.isinf(depth[0, 0]) and faces[0, 0] == -1


def _views(body, scenes, canonical=True):
    star = body.pose(star_pose())
    poses = torch.tensor(np.stack([s.body_pose for s in scenes])).float()
    bones = body.pose(poses).transforms @ torch.linalg.inv(star.transforms)
    if not canonical:
        bones = torch.eye(4).expand_as(bones).clone()
    return Views([s.instances[-1].mask for s in scenes], torch.tensor(np.stack([s.K for s in scenes])).float(),
                 torch.tensor(np.stack([s.R for s in scenes])).float(),
                 torch.tensor(np.stack([s.t for s in scenes])).float(), bones,
                 torch.tensor([s.azimuth for s in scenes]))


def test_vectorized_aggregation_equals_the_per_voxel_reference(body, monkeypatch):
    """Chunked over voxels (20 per chunk) and over views (tables of 2 views of 50x50 cells): the same as one voxel and
    one view at a time."""
    monkeypatch.setattr(aggregate_module, "TABLE_CELLS", 2 * 50 * 50)
    grid = Grid(resolution=6)
    star = body.pose(star_pose())
    weights = canonical_weights(grid, star.vertices[0].numpy(), body.lbs_weights.numpy())
    views = _views(body, [render_scene(body, "backpack", "wearing", seed=s, image_size=48) for s in range(5)])
    fast = aggregate(grid.centres(), weights, views, chunk_elements=2 * 20).numpy()
    slow = aggregate_reference(grid.centres().numpy(), weights.numpy(), views)
    assert fast.max() > 0  # the case is not trivially empty
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_view_weights_equalize_azimuth_bins():
    r = view_weights(torch.tensor([1.0, 2.0, 3.0, 100.0, 359.0]))
    np.testing.assert_allclose(r.numpy(), [1 / 3, 1 / 3, 1 / 3, 1.0, 1.0])


def test_backward_warp_inverts_the_forward_warp_near_the_body(body):
    grid = Grid()
    star = body.pose(star_pose())
    pose = torch.from_numpy(interaction_pose("right_hand_forward", 0.2, np.random.default_rng(1))).float()[None]
    posed = body.pose(pose)
    bones = (posed.transforms @ torch.linalg.inv(star.transforms))[0]
    on_body = star.vertices[0][::7]
    weights = canonical_weights(grid, star.vertices[0].numpy(), body.lbs_weights.numpy())
    sampled = torch.stack([grid.sample(weights[:, j].reshape(48, 48, 48), on_body) for j in range(24)], 1)
    moved = forward_warp(on_body, sampled, bones)
    back = backward_warp(moved, posed.vertices[0].numpy(), body.lbs_weights.numpy(), bones)
    assert (back - on_body).norm(dim=1).median() < 0.03  # metres: within half a voxel


def _iou(occupancy: np.ndarray, truth: np.ndarray, level: float = 0.5) -> float:
    predicted = occupancy >= level
    return (predicted & truth).sum() / (predicted | truth).sum()


def test_known_placement_is_recovered_and_canonicalization_matters(body):
    """A hat on the head, 96 random views, poses jittered by 0.3 rad per joint axis, exact calibration."""
    grid = Grid()
    star = body.pose(star_pose())
    weights = canonical_weights(grid, star.vertices[0].numpy(), body.lbs_weights.numpy())
    scenes = [render_scene(body, "hat", "wearing", seed=s, jitter=0.3) for s in range(96)]
    canonical = aggregate(grid.centres(), weights, _views(body, scenes)).numpy()
    truth = canonical_object_voxels(body, "hat", "wearing", grid.centres().numpy(), star_pose())
    # Ablation: no canonicalization, scored against the object in the interaction's own (un-jittered) pose.
    direct = aggregate(grid.centres(), weights, _views(body, scenes, canonical=False)).numpy()
    base = torch.from_numpy(interaction_pose(CATEGORIES["hat"].interactions["wearing"], 0.0,
                                             np.random.default_rng(0))).float()[None]
    direct_truth = canonical_object_voxels(body, "hat", "wearing", grid.centres().numpy(), base)
    with_canonicalization, without = _iou(canonical, truth), _iou(direct, direct_truth)
    print(f"IoU at 0.5: canonical {with_canonicalization:.3f}, without canonicalization {without:.3f}")
    assert with_canonicalization >= 0.5
    assert without < with_canonicalization - 0.25
