"""Part relevance for prompt + part clusters (the official semantic clustering): a view counts for a body part
when some ray through its object mask passes a canonical voxel within epsilon = 0.13 m of the part."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from hoi_factory.codec import encode_png
from hoi_factory.stage import Reject
from models.body import load_body_model
from models.body.smpl import star_pose
from models.chorus.aggregate import Views
from models.chorus.canonical import Grid, canonical_weights
from models.render.camera import camera_azimuth, intrinsics, orbit_camera, project
from models.render.raster import rasterize
from tasks.chorus.occupancy import (
    BODY_PARTS,
    INTERACTION_DISTANCE,
    AggregateCluster,
    OccupancyConfig,
    interaction_region,
    rays_reach,
)
from tasks.chorus.scenes import render_scene


@pytest.fixture(scope="module")
def body():
    return load_body_model("standin")


@pytest.fixture(scope="module")
def star(body):
    return body.pose(star_pose())


def _part_vertices(body, vertices: np.ndarray, part: str) -> np.ndarray:
    return vertices[np.isin(body.lbs_weights.argmax(1).numpy(), BODY_PARTS[part])]


def _old_rule(body, pose: np.ndarray, mask: np.ndarray, K, R, t, part: str) -> bool:
    """The rule this replaces: some projected vertex of the posed part falls in the object mask."""
    vertices = _part_vertices(body, body.pose(torch.from_numpy(pose).float()[None]).vertices[0].numpy(), part)
    pixels = project(vertices, K, R, t)
    u, v = np.floor(pixels[:, 0]).astype(int), np.floor(pixels[:, 1]).astype(int)
    inside = (u >= 0) & (u < mask.shape[1]) & (v >= 0) & (v < mask.shape[0]) & (pixels[:, 2] > 0)
    return bool(mask[v[inside], u[inside]].any())


def test_interaction_region_is_the_voxels_within_epsilon():
    # One vertex at the origin of a grid with 0.1 m voxels (centres at +-0.05, +-0.15, ...): the 8 centres at
    # distance sqrt(3) * 0.05 = 0.087 are inside 0.13, the 24 at sqrt(0.15^2 + 2 * 0.05^2) = 0.166 are not.
    centres = Grid(resolution=10, extent=0.5).centres().numpy()
    region = interaction_region(centres, np.zeros((1, 3)))
    assert region.sum() == 8 and np.allclose(np.abs(centres[region]), 0.05)
    assert interaction_region(centres, np.zeros((1, 3)), epsilon=0.17).sum() == 8 + 24
    assert INTERACTION_DISTANCE == 0.13


def _sphere_view(centre: np.ndarray, radius: float, size: int = 256):
    """The object mask of a sphere seen from the front (camera 3 m away on +z, star-posed person)."""
    sphere = trimesh.creation.icosphere(4, radius=radius)
    K = intrinsics(size, size)
    R, t = orbit_camera(0, 0, 3.0)
    _, faces = rasterize((sphere.vertices + centre) @ R.T + t, sphere.faces, K, size, size)
    return faces >= 0, K, R, t


def test_a_sphere_beside_the_hand_counts_for_the_hand_where_the_old_rule_missed_it(body, star):
    """A 5 cm sphere 4 cm above the star-posed right hand, seen from the front: in the image it sits just above
    the hand without touching it (the old rule: not relevant), but in 3D it is 4 cm from the hand (relevant).
    Grid of 3.125 cm voxels so the margins are provable: the voxel centre nearest the sphere's centre is within
    half a voxel diagonal (2.7 cm < 5 cm) of it, so it projects into the mask, and it lies within
    4 + 5 + 2.7 = 11.7 cm < 13 cm of the hand. Lifted 40 cm, the sphere's rays (nearly along z) stay over 35 cm
    above the hand, far outside the region."""
    grid = Grid(resolution=96)
    centres = grid.centres()
    hand = _part_vertices(body, star.vertices[0].numpy(), "hands")
    right_hand = hand[hand[:, 0] < 0]
    top = right_hand[right_hand[:, 1].argmax()]
    bones = torch.eye(4).expand(1, 24, 4, 4).clone()  # the view's pose is the canonical pose itself
    weights = torch.zeros(len(centres), 24)
    weights[:, 0] = 1
    region = torch.from_numpy(interaction_region(centres.numpy(), hand))
    answers = {}
    for name, lift in (("near", 0.04), ("far", 0.40)):
        centre = top + [0, lift + 0.05, 0]
        mask, K, R, t = _sphere_view(centre, 0.05)
        views = Views([mask], *(torch.tensor(x).float()[None] for x in (K, R, t)), bones, torch.zeros(1))
        answers[name] = rays_reach(centres[region], weights[region], views)[0]
        if name == "near":
            assert not _old_rule(body, star_pose()[0].numpy(), mask, K, R, t, "hands")
    assert answers == {"near": True, "far": False}


def _scene_views(body, star, scenes) -> Views:
    poses = torch.tensor(np.stack([s.body_pose for s in scenes])).float()
    bones = body.pose(poses).transforms @ torch.linalg.inv(star.transforms)
    return Views([s.instances[-1].mask for s in scenes], torch.tensor(np.stack([s.K for s in scenes])).float(),
                 torch.tensor(np.stack([s.R for s in scenes])).float(),
                 torch.tensor(np.stack([s.t for s in scenes])).float(), bones,
                 torch.tensor([s.azimuth for s in scenes]).float())


@pytest.fixture(scope="module")
def cup_scenes(body):
    """A cup held 14 cm from the right wrist, random views (random azimuth, elevation -10..35 degrees)."""
    return [render_scene(body, "cup", "holding", seed=seed) for seed in range(12)]


def test_a_held_cup_counts_for_the_hands_and_never_for_the_feet(body, star, cup_scenes):
    """Truth: the hand holds the cup in every view, so every view that shows some of the cup counts for the
    hands; the cup is over 80 cm above the feet and the camera looks down at most 35 degrees, so no ray through
    it passes near them. The occluded views are where the old rule fails: seen past the body, the few visible
    cup pixels do not cover the hand, though the rays through them pass right by it."""
    grid = Grid()
    centres = grid.centres()
    weights = canonical_weights(grid, star.vertices[0].numpy(), body.lbs_weights.numpy())
    views = _scene_views(body, star, cup_scenes)
    visible = [bool(s.instances[-1].mask.any()) for s in cup_scenes]
    assert not all(visible)  # the case includes a cup hidden behind the body
    relevant = {}
    for part in ("hands", "feet"):
        region = torch.from_numpy(interaction_region(centres.numpy(), _part_vertices(body, star.vertices[0].numpy(),
                                                                                      part)))
        relevant[part] = rays_reach(centres[region], weights[region], views)
    assert relevant["hands"] == visible
    assert not any(relevant["feet"])
    old = [_old_rule(body, s.body_pose, s.instances[-1].mask, s.K, s.R, s.t, "hands") for s in cup_scenes]
    assert sum(old) < sum(visible)  # views the old rule dropped although the hand holds the cup


def test_the_stage_keeps_only_the_views_that_count_for_the_part(body, cup_scenes, monkeypatch):
    # View rows as the views dataset stores them (lists of floats).
    rows = [{"sample_id": f"cup-{i}", "object_mask": encode_png(s.instances[-1].mask),
             "body_pose": s.body_pose.tolist(), "K": s.K.reshape(-1).tolist(), "R": s.R.reshape(-1).tolist(),
             "t": s.t.tolist(), "azimuth": camera_azimuth(s.R, s.t),
             "width": 128, "height": 128, "verb": "holding"} for i, s in enumerate(cup_scenes)]
    stage = AggregateCluster(OccupancyConfig(min_views=1, body_parts=["hands", "feet"]))
    stage.setup(SimpleNamespace(datasets=None))
    monkeypatch.setattr(stage, "_read", lambda ref, refs: rows if ref == "views" else [])
    item = {"sample_id": "cup|a person holding a cup @ {}", "input_id": "", "category": "cup", "parent": "views",
            "view_refs": [[0, i] for i in range(len(rows))], "test_parent": "", "test_refs": []}
    hands = stage.process_row({**item, "body_part": "hands"})
    assert hands["num_views"] == sum(bool(s.instances[-1].mask.any()) for s in cup_scenes)
    feet = stage.process_row({**item, "body_part": "feet"})
    assert isinstance(feet, Reject) and feet.reason == "too few views"
