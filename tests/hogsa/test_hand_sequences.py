"""Procedural bimanual sequences against independent geometry: masks against projected MANO vertices, contact and
penetration against the object mesh's own face planes and surface samples (not the generator's analytic distance),
hands carried rigidly with the object, the object-only render, and determinism by seed."""

from functools import lru_cache

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from models.hand import load_hands
from models.render.camera import project
from tasks.hogsa.sequence import Sequence, posed_object_vertices
from tasks.hogsa.standin_sequences import CONTACT_GAP, procedural_sequence, render_frame, render_scene

PENETRATION_TOLERANCE = 0.0005  # metres a hand vertex may sit inside the object mesh
TOUCH_DISTANCE = 0.003  # metres: a hand part closer than this touches the object


@pytest.fixture(scope="module")
def hands():
    return load_hands()


@pytest.fixture(scope="module")
def rendered():
    return procedural_sequence(seed=3, object_name="bottle", frames=2, cameras=3, width=128, height=96)


@lru_cache(maxsize=None)
def poses_only(object_name: str):
    return procedural_sequence(seed=11, object_name=object_name, frames=2, render=False)


def hand_vertices(hands, pose, side) -> np.ndarray:
    with torch.no_grad():
        out = hands[side](*(torch.tensor(getattr(pose, k), dtype=torch.float32)[None]
                            for k in ("global_orient", "hand_pose", "betas", "transl")))
    return out.vertices[0].numpy().astype(np.float64)


def in_object_frame(frame, world: np.ndarray) -> np.ndarray:
    return (world - frame.object_translation) @ frame.object_rotation


def convex_signed_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Max over the mesh's face planes: the exact signed distance inside a convex mesh, a lower bound outside."""
    planes = np.unique(np.round(np.concatenate([mesh.face_normals, (mesh.face_normals * mesh.triangles[:, 0])
                                                .sum(1, keepdims=True)], 1), 9), axis=0)
    return (points @ planes[:, :3].T - planes[:, 3]).max(1)


def test_sequence_holds_cameras_images_masks_and_a_textured_object(rendered):
    assert isinstance(rendered, Sequence) and len(rendered.cameras) == 3 and len(rendered.frames) == 2
    colours = rendered.object_mesh.visual.vertex_colors[:, :3].astype(float)
    assert colours.std(0).mean() > 10  # a pattern, not a flat colour
    for frame in rendered.frames:
        assert set(frame.hands) == {"left", "right"}
        for camera in rendered.cameras:
            image, masks = frame.images[camera.name], frame.masks[camera.name]
            assert image.shape == (96, 128, 3) and image.dtype == np.uint8
            assert set(masks) == {"left", "right", "object"} and all(m.dtype == bool for m in masks.values())
            assert masks["object"].sum() > 200 and masks["left"].sum() + masks["right"].sum() > 100
            assert image[masks["object"]].std(0).mean() > 8  # texture and shading show in the image
            assert not (masks["left"] & masks["right"]).any() and not (masks["left"] & masks["object"]).any()


def test_masks_hold_every_visible_projected_vertex(rendered, hands):
    checked = 0
    for frame in rendered.frames:
        surfaces = {side: hand_vertices(hands, pose, side) for side, pose in frame.hands.items()}
        surfaces["object"] = posed_object_vertices(rendered, frame)
        for camera in rendered.cameras:
            depth = render_frame(rendered, frame, camera, hands).depth
            masks = frame.masks[camera.name]
            for label, vertices in surfaces.items():
                x, y, z = project(vertices, camera.K, camera.R, camera.t).T
                col, row = np.floor(x).astype(int), np.floor(y).astype(int)
                inside = (col >= 1) & (col < camera.width - 1) & (row >= 1) & (row < camera.height - 1)
                col, row, z = col[inside], row[inside], z[inside]
                # Visible: nothing nearer (by 3 mm) at its pixel or the 8 around it. A vertex on a silhouette may sit
                # on a pixel whose centre its triangles just miss, so the mask need only reach one of those 9 pixels.
                window = [(row + dr, col + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
                visible = np.all([depth[r, c] >= z - 0.003 for r, c in window], axis=0)
                in_mask = np.any([masks[label][r, c] for r, c in window], axis=0)
                assert in_mask[visible].all(), f"{label}: {(visible & ~in_mask).sum()} visible vertices off the mask"
                checked += visible.sum()
                # And the mask is where that surface is: mask pixels back-project onto it (within an edge length).
                rows, cols = np.nonzero(masks[label])
                rays = np.stack([cols + 0.5, rows + 0.5, np.ones(len(rows))], 1) @ np.linalg.inv(camera.K).T
                points = (rays * depth[rows, cols, None] - camera.t) @ camera.R
                assert cKDTree(vertices).query(points)[0].max() < 0.015
    assert checked > 1000


@pytest.mark.parametrize("object_name", ["box", "bottle", "ball"])
def test_hands_touch_the_object_without_penetrating_it(object_name, hands):
    sequence = poses_only(object_name)
    mesh = sequence.object_mesh
    assert mesh.is_convex
    surface = cKDTree(trimesh.sample.sample_surface(mesh, 40000, seed=0)[0])
    weights = hands["right"].lbs_weights.numpy()
    parts = {"palm": weights[:, 0] == 1} | {
        digit: weights[:, list(joints)].sum(1) > 0
        for digit, joints in (("index", (1, 2, 3)), ("middle", (4, 5, 6)), ("pinky", (7, 8, 9)),
                              ("ring", (10, 11, 12)), ("thumb", (13, 14, 15)))}
    for frame in sequence.frames:
        for side, pose in frame.hands.items():
            local = in_object_frame(frame, hand_vertices(hands, pose, side))
            penetration = -convex_signed_distance(mesh, local).min()
            assert penetration < PENETRATION_TOLERANCE, f"{side} hand {penetration * 1000:.2f} mm inside"
            distance = surface.query(local)[0]  # an upper bound on the distance to the surface (+ ~1 mm sampling)
            touching = [name for name, on in parts.items() if distance[on].min() < TOUCH_DISTANCE]
            assert distance.min() < CONTACT_GAP + 0.002 and set(touching) == set(parts), (side, touching)


def test_hands_move_rigidly_with_the_object(hands):
    first, second = poses_only("ball").frames
    assert np.abs(second.object_translation - first.object_translation).max() > 0.005
    assert not np.allclose(second.object_rotation, first.object_rotation)
    for side in ("left", "right"):
        np.testing.assert_allclose(in_object_frame(second, hand_vertices(hands, second.hands[side], side)),
                                   in_object_frame(first, hand_vertices(hands, first.hands[side], side)), atol=2e-5)


def test_object_only_render_matches_the_full_render_off_the_hands(rendered, hands):
    frame, camera = rendered.frames[0], rendered.cameras[0]
    view = render_frame(rendered, frame, camera, hands)
    np.testing.assert_array_equal(view.image, frame.images[camera.name])
    for label in ("left", "right", "object"):
        np.testing.assert_array_equal(view.masks[label], frame.masks[camera.name][label])
    np.testing.assert_array_equal(view.object_only[view.masks["object"]], view.image[view.masks["object"]])
    _, alone, _ = render_scene(camera, [(posed_object_vertices(rendered, frame), rendered.object_mesh.faces,
                                         rendered.object_mesh.visual.vertex_colors[:, :3], "object")])
    hidden = alone["object"] & ~view.masks["object"]
    assert hidden.any() and (view.masks["left"] | view.masks["right"])[hidden].all()  # hands cover the rest
    assert (view.object_only[hidden] != view.image[hidden]).any(axis=1).mean() > 0.9
    covered = np.isfinite(view.depth)
    np.testing.assert_array_equal(covered, view.masks["left"] | view.masks["right"] | view.masks["object"])


def test_sequences_are_deterministic_by_seed():
    a, b = (procedural_sequence(seed=7, frames=1, cameras=2, width=48, height=36) for _ in range(2))
    c = procedural_sequence(seed=8, frames=1, render=False)
    assert a.object_name == b.object_name and a.id == b.id
    np.testing.assert_array_equal(a.object_mesh.visual.vertex_colors, b.object_mesh.visual.vertex_colors)
    for side in ("left", "right"):
        for key in ("global_orient", "hand_pose", "betas", "transl"):
            np.testing.assert_array_equal(getattr(a.frames[0].hands[side], key), getattr(b.frames[0].hands[side], key))
        assert not np.allclose(a.frames[0].hands[side].transl, c.frames[0].hands[side].transl)
    for camera in a.cameras:
        np.testing.assert_array_equal(a.frames[0].images[camera.name], b.frames[0].images[camera.name])
