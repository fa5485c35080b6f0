"""Procedural STAND-IN hand–object scenes: a textured object primitive grasped by a primitive hand + forearm,
rendered twice from the same camera — with the hand and without it — so every HOI image comes with its true
object-only image and exact hand and object masks.

The hand is built from boxes and capsules (palm, five fingers, forearm) laid flat on the object's tangent
plane at a random contact point, palm toward the object, which keeps it outside any convex object. It stands
in for the MANO hands of the HOGSA pipeline until that pipeline renders them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from models.render.camera import intrinsics, look_at
from models.render.raster import rasterize

SKIN = np.array([224, 172, 140])
# stand-in object class -> (trimesh primitive builder, base colour)
OBJECTS = {
    "box": (lambda: trimesh.creation.box((0.16, 0.10, 0.12)), (70, 110, 200)),
    "bottle": (lambda: trimesh.creation.cylinder(0.045, 0.22, sections=48), (60, 160, 90)),
    "ball": (lambda: trimesh.creation.icosphere(3, 0.08), (220, 80, 60)),
    "mug": (lambda: trimesh.creation.cylinder(0.06, 0.11, sections=48), (230, 200, 60)),
}


@dataclass
class HandObjectScene:
    image: np.ndarray  # (H, W, 3) uint8, hand and object
    object_only: np.ndarray  # (H, W, 3) uint8, the same view without the hand
    hand_mask: np.ndarray  # (H, W) bool, visible hand + forearm
    hand_box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 of the visible hand without the forearm
    object_mask: np.ndarray  # (H, W) bool, the whole object (as in the object-only view)
    object_class: str
    palm_centre: tuple[float, float]  # x, y (pixels) of the palm box's centre, projected (visible or not)
    forearm_direction: tuple[float, float]  # unit image direction from the palm toward the forearm


def _hand_mesh() -> tuple[trimesh.Trimesh, int]:
    """Hand frame: palm in the x–y plane, palm side facing -z, fingers (half curled, so short) along +y,
    forearm along -y. Proportions make the palm box about as wide as the forearm, as the layout assumes.
    Also returns the number of forearm faces, which come last."""
    parts = [trimesh.creation.box((0.085, 0.09, 0.025))]
    for i, x in enumerate((-0.03, -0.01, 0.01, 0.03)):
        length = (0.04, 0.045, 0.042, 0.035)[i]
        finger = trimesh.creation.capsule(length, 0.01, count=(8, 8))  # along z
        finger.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))
        finger.apply_translation((x, 0.045 + length / 2, 0))
        parts.append(finger)
    thumb = trimesh.creation.capsule(0.04, 0.012, count=(8, 8))
    thumb.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))
    thumb.apply_transform(trimesh.transformations.rotation_matrix(-0.7, (0, 0, 1)))
    thumb.apply_translation((0.06, 0.0, 0))
    parts.append(thumb)
    forearm = trimesh.creation.cylinder(0.038, 0.26, sections=24)  # along z
    forearm.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))
    forearm.apply_translation((0, -0.045 - 0.13, 0.014))
    parts.append(forearm)
    return trimesh.util.concatenate(parts), len(forearm.faces)


def _frame(normal: np.ndarray, spin: float) -> np.ndarray:
    """Rotation whose -z column is -normal (palm toward the object) and whose y column is spun by `spin`."""
    z = normal / np.linalg.norm(normal)
    helper = np.array([0, 1.0, 0]) if abs(z[1]) < 0.9 else np.array([1.0, 0, 0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    x, y = np.cos(spin) * x + np.sin(spin) * y, -np.sin(spin) * x + np.cos(spin) * y
    return np.stack([x, y, z], 1)


def _texture(points_object: np.ndarray, base: np.ndarray, rng_phase: np.ndarray) -> np.ndarray:
    """Stripes and a checker in object coordinates: structure the inpainter must continue behind the hand."""
    stripes = np.sin(points_object[:, 1] * 90 + rng_phase[0])
    checker = np.sign(np.sin(points_object[:, 0] * 60 + rng_phase[1]) * np.sin(points_object[:, 2] * 60))
    return base * (0.75 + 0.15 * stripes[:, None] + 0.1 * checker[:, None])


def render_hand_object(seed: int, width: int = 320, height: int = 240, object_class: str | None = None
                       ) -> HandObjectScene:
    rng = np.random.default_rng(seed)
    object_class = object_class or list(OBJECTS)[rng.integers(len(OBJECTS))]
    build, colour = OBJECTS[object_class]
    obj = build()
    obj.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)) if object_class == "ball"
                        else trimesh.transformations.rotation_matrix(rng.uniform(-0.4, 0.4), (0, 0, 1)))
    eye = rng.normal(size=3) * [1, 0.4, 1]
    eye = eye / np.linalg.norm(eye) * rng.uniform(0.55, 0.75)
    R, t = look_at(eye, np.zeros(3) + rng.normal(0, 0.02, 3))
    # Contact on the side of the object facing the camera (mostly), palm flat on the tangent plane there.
    toward_camera = eye / np.linalg.norm(eye)
    direction = toward_camera + rng.normal(0, 0.5, 3)
    points, triangles = trimesh.sample.sample_surface(obj, 400, seed=int(rng.integers(2**31)))
    best = np.argmax(points @ direction)
    contact, normal = points[best], obj.face_normals[triangles[best]]
    hand, forearm_faces = _hand_mesh()
    rotation = _frame(normal, rng.uniform(0, 2 * np.pi))
    hand_vertices = hand.vertices @ rotation.T + contact + normal * 0.014

    K = intrinsics(width, height, fov_degrees=rng.uniform(40, 55))
    background = _background(rng, width, height)
    phase = rng.uniform(0, 2 * np.pi, 2)
    base = np.asarray(colour, dtype=float)
    object_cam, hand_cam = obj.vertices @ R.T + t, hand_vertices @ R.T + t
    depth_obj, faces_obj = rasterize(object_cam, np.asarray(obj.faces), K, width, height)
    depth_all, faces_all = rasterize(np.concatenate([object_cam, hand_cam]),
                                     np.concatenate([obj.faces, hand.faces + len(obj.vertices)]), K, width, height)
    object_only = _shade(background, faces_obj, depth_obj, np.asarray(obj.faces), object_cam, K, R, t,
                         lambda p: _texture(p, base, phase), None)
    hand_faces = faces_all >= len(obj.faces)
    rows, cols = np.nonzero(hand_faces & (faces_all < len(obj.faces) + len(hand.faces) - forearm_faces))
    hand_box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1) if len(rows) else None
    image = _shade(background, faces_all, depth_all, np.concatenate([obj.faces, hand.faces + len(obj.vertices)]),
                   np.concatenate([object_cam, hand_cam]), K, R, t, lambda p: _texture(p, base, phase), hand_faces)
    palm = contact + normal * 0.014  # the hand frame's origin: the palm box's centre
    palm_pixel, along_forearm = (_project(point, K, R, t) for point in (palm, palm - rotation[:, 1] * 0.05))
    direction = (along_forearm - palm_pixel) / np.linalg.norm(along_forearm - palm_pixel)
    return HandObjectScene(image, object_only, hand_faces & (faces_all >= 0), hand_box, faces_obj >= 0, object_class,
                           tuple(palm_pixel.tolist()), tuple(direction.tolist()))


def _project(point: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """World point -> pixel (x, y), pixel centres at half-integers as the rasterizer has them."""
    camera = K @ (R @ point + t)
    return camera[:2] / camera[2]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    top, bottom = rng.integers(90, 230, 3), rng.integers(40, 170, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    image = (top * (1 - ramp) + bottom * ramp).repeat(width, 1)
    return image + rng.normal(0, 3, image.shape)


def _shade(background, face_index, depth, faces, vertices_cam, K, R, t, texture, hand_pixels) -> np.ndarray:
    """Lambert shading; object pixels get their texture (from the 3D point behind the pixel), hand pixels skin."""
    image = background.copy()
    covered = face_index >= 0
    tri = vertices_cam[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    light = np.array([0.3, -0.6, -0.75]) / np.linalg.norm([0.3, -0.6, -0.75])
    shade = 0.35 + 0.65 * np.abs(normals @ light)
    rows, cols = np.nonzero(covered)
    rays = np.stack([cols + 0.5, rows + 0.5, np.ones_like(rows, dtype=float)], 1) @ np.linalg.inv(K).T
    points_world = (rays * depth[rows, cols, None] - t) @ R  # camera -> world (= object frame)
    colours = texture(points_world)
    if hand_pixels is not None:
        on_hand = hand_pixels[rows, cols]
        colours[on_hand] = SKIN
    image[rows, cols] = colours * shade[face_index[rows, cols], None]
    return np.clip(image, 0, 255).astype(np.uint8)


# file -> the reason the HO3Pairs pipeline must reject it with
BAD_FILES = {
    "images/bad-empty.png": "empty file",
    "images/bad-no-mask.png": "no hand mask provided",
    "images/bad-mask-size.png": "hand mask size differs from the image",
}


def write_hand_object_folder(folder: str | Path, count: int, seed: int = 0, with_bad_files: bool = True
                             ) -> dict[str, str]:
    """`count` scenes in the HO3Pairs folder layout (images/, hand_masks/, object_masks/, object_only/,
    classes.json, hand_boxes.json), plus known-bad inputs; returns {relative path: expected reject reason}."""
    folder = Path(folder)
    for sub in ("images", "hand_masks", "object_masks", "object_only"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    classes, boxes = {}, {}
    for i in range(count):
        stem = f"scene-{i:05d}"
        scene = render_hand_object(seed * 1_000_003 + i)
        Image.fromarray(scene.image).save(folder / "images" / f"{stem}.png")
        Image.fromarray(scene.object_only).save(folder / "object_only" / f"{stem}.png")
        Image.fromarray(scene.hand_mask).save(folder / "hand_masks" / f"{stem}.png")
        Image.fromarray(scene.object_mask).save(folder / "object_masks" / f"{stem}.png")
        classes[stem] = scene.object_class
        if scene.hand_box:
            boxes[stem] = scene.hand_box
    (folder / "classes.json").write_text(json.dumps(classes, indent=1))
    (folder / "hand_boxes.json").write_text(json.dumps(boxes, indent=1))
    if not with_bad_files:
        return {}
    scene = render_hand_object(seed * 1_000_003 + count)
    (folder / "images/bad-empty.png").write_bytes(b"")
    Image.fromarray(scene.hand_mask).save(folder / "hand_masks/bad-empty.png")
    Image.fromarray(scene.image).save(folder / "images/bad-no-mask.png")
    Image.fromarray(scene.image).save(folder / "images/bad-mask-size.png")
    Image.fromarray(scene.hand_mask[:-8]).save(folder / "hand_masks/bad-mask-size.png")
    return dict(BAD_FILES)
