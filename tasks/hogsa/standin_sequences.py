"""Procedural STAND-IN bimanual hand–object sequences with exact ground truth, and a small mesh renderer for any
hand–object scene (images, per-label masks, depth, and the object-only view HOGSA and HO3Pairs need).

A sequence: a textured primitive object (box, bottle, ball or mug from hand_object.py, vertex colours with stripes,
a checker and spots so images carry texture) held by both STAND-IN MANO hands (models/hand/standin.py): each palm
faces the object surface `CONTACT_GAP` away from it, and each digit curls until it comes `CONTACT_GAP` from the surface
(or as close as it gets), judged with the primitive's exact signed distance. Over the frames the object and the
hands move together by a small rigid motion. Cameras stand on a ring around the world's vertical (+y) axis looking
at the object. Hand parameters are in the hand model's default convention (flat_hand_mean=False), world frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from models.hand import HandModel, load_hands
from models.hand.standin import flexion_axes
from models.render.camera import intrinsics, look_at
from models.render.raster import rasterize
from tasks.hogsa.sequence import CameraView, Frame, HandPose, Sequence, axis_angle_to_matrix, posed_object_vertices
from tasks.procedural.hand_object import OBJECTS, SKIN

CONTACT_GAP = 0.001  # metres between a hand's closest vertex and the object surface
# Flexion (radians) of joints 1, 2, 3 when a digit is fully curled; the grasp search scales these by [-0.4, 1].
_FULL_CURL = {"finger": np.array([1.3, 1.5, 1.0]), "thumb": np.array([0.6, 0.9, 0.9])}
_THUMB_JOINTS = (13, 14, 15)
_DIGIT_JOINTS = [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12), _THUMB_JOINTS]
_UPRIGHT = axis_angle_to_matrix(np.array([-np.pi / 2, 0, 0]))  # object +z (the primitives' axis) -> world +y


# --- rendering ---------------------------------------------------------------------------------------------------


@dataclass
class RenderedView:
    image: np.ndarray  # (H, W, 3) uint8, hands and object
    masks: dict[str, np.ndarray]  # label -> (H, W) bool, visible pixels
    depth: np.ndarray  # (H, W) camera z, inf where empty
    object_only: np.ndarray  # (H, W, 3) uint8, the same view without the hands


def render_scene(camera: CameraView, meshes: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]],
                 background=(0, 0, 0)) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """meshes: (vertices (V, 3) world, faces (F, 3), vertex colours (V, 3) 0-255, label). Returns the image
    (interpolated vertex colours, Lambert-shaded with interpolated normals), the visible mask of every label and
    depth."""
    offsets = np.cumsum([0] + [len(v) for v, _, _, _ in meshes])
    vertices = np.concatenate([v for v, _, _, _ in meshes]).astype(np.float64)
    faces = np.concatenate([f + o for (_, f, _, _), o in zip(meshes, offsets)])
    colours = np.concatenate([np.asarray(c, dtype=np.float64)[:, :3] for _, _, c, _ in meshes])
    face_label = np.concatenate([np.full(len(f), i) for i, (_, f, _, _) in enumerate(meshes)])
    cam = vertices @ np.asarray(camera.R).T + np.asarray(camera.t)
    depth, face_index = rasterize(cam, faces, camera.K, camera.width, camera.height)
    image = np.empty((camera.height, camera.width, 3))
    image[:] = background
    rows, cols = np.nonzero(face_index >= 0)
    hit = face_index[rows, cols]
    rays = np.stack([cols + 0.5, rows + 0.5, np.ones(len(rows))], 1) @ np.linalg.inv(camera.K).T
    weights = _barycentric(rays * depth[rows, cols, None], cam[faces[hit]])
    normals = np.einsum("pk,pkc->pc", weights, _vertex_normals(cam, faces)[faces[hit]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    light = np.array([-0.3, -0.5, -1.0]) / np.linalg.norm([-0.3, -0.5, -1.0])  # from above-left of the camera
    shade = 0.3 + 0.7 * np.abs(normals @ light)
    image[rows, cols] = np.einsum("pk,pkc->pc", weights, colours[faces[hit]]) * shade[:, None]
    labels = np.where(face_index >= 0, face_label[np.maximum(face_index, 0)], -1)
    masks: dict[str, np.ndarray] = {}
    for i, (_, _, _, label) in enumerate(meshes):  # meshes may share a label
        masks[label] = masks.get(label, False) | (labels == i)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), masks, depth


def _barycentric(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(P, 3) weights of points (on their triangles' planes) with respect to the (P, 3, 3) triangles' corners."""
    e1, e2, p = triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0], points - triangles[:, 0]
    d11, d12, d22 = (e1 * e1).sum(1), (e1 * e2).sum(1), (e2 * e2).sum(1)
    dp1, dp2 = (p * e1).sum(1), (p * e2).sum(1)
    det = np.maximum(d11 * d22 - d12 * d12, 1e-30)
    w1, w2 = (d22 * dp1 - d12 * dp2) / det, (d11 * dp2 - d12 * dp1) / det
    return np.clip(np.stack([1 - w1 - w2, w1, w2], 1), 0, 1)


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (sign follows the winding; shading uses |n . l|, so either works)."""
    tri = vertices[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    return normals


def mesh_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    """(V, 3) 0-255 vertex colours of a trimesh (texture maps are sampled per vertex)."""
    visual = mesh.visual if mesh.visual.kind in ("vertex", "face") else mesh.visual.to_color()
    return np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3]


def render_hands_and_object(camera: CameraView, object_vertices: np.ndarray, object_mesh: trimesh.Trimesh,
                            hands: dict[str, tuple[np.ndarray, np.ndarray]], background=(0, 0, 0)) -> RenderedView:
    """A hand–object scene: posed object vertices (world) with the object mesh's faces and colours, and hands as
    side -> (posed vertices, faces). Masks "left", "right" (empty when that hand is absent) and "object"."""
    object_part = (object_vertices, np.asarray(object_mesh.faces), mesh_colours(object_mesh), "object")
    hand_parts = [(vertices, faces, skin_colours(len(vertices)), side) for side, (vertices, faces) in hands.items()]
    image, masks, depth = render_scene(camera, [object_part, *hand_parts], background)
    object_only, _, _ = render_scene(camera, [object_part], background)
    empty = np.zeros((camera.height, camera.width), dtype=bool)
    masks = {label: masks.get(label, empty) for label in ("left", "right", "object")}
    return RenderedView(image, masks, depth, object_only)


def skin_colours(count: int) -> np.ndarray:
    """(V, 3) stand-in skin: the HO3Pairs skin tone with a faint vertex-index ripple (some texture to fit)."""
    return SKIN * (0.92 + 0.08 * np.sin(np.arange(count) * 0.37))[:, None]


def posed_hands(models: dict[str, HandModel], frame: Frame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """side -> (posed world vertices (V, 3), faces) of the hands present in `frame`."""
    posed = {}
    for side, pose in frame.hands.items():
        with torch.no_grad():
            out = models[side](*(torch.as_tensor(getattr(pose, name), dtype=torch.float32)[None]
                                 for name in ("global_orient", "hand_pose", "betas", "transl")))
        posed[side] = (out.vertices[0].numpy().astype(np.float64), models[side].faces)
    return posed


def render_frame(sequence: Sequence, frame: Frame, camera: CameraView, models: dict[str, HandModel],
                 background=(0, 0, 0)) -> RenderedView:
    """Render one frame of any sequence whose object mesh is textured (vertex colours or a texture map)."""
    return render_hands_and_object(camera, posed_object_vertices(sequence, frame), sequence.object_mesh,
                                   posed_hands(models, frame), background)


# --- objects -----------------------------------------------------------------------------------------------------


def textured_object(name: str, rng: np.random.Generator) -> trimesh.Trimesh:
    """The primitive `name` subdivided to ~1 cm edges and painted with stripes, a checker and a few spots."""
    build, base = OBJECTS[name]
    mesh = build()
    vertices, faces = trimesh.remesh.subdivide_to_size(mesh.vertices, mesh.faces, max_edge=0.012)
    phase, spots = rng.uniform(0, 2 * np.pi, 3), rng.uniform(-0.1, 0.1, (4, 3))
    stripes = np.sin(vertices[:, 2] * 70 + phase[0])
    checker = np.sign(np.sin(vertices[:, 0] * 45 + phase[1]) * np.sin(vertices[:, 1] * 45 + phase[2]))
    colours = np.asarray(base, dtype=float) * (0.7 + 0.18 * stripes + 0.12 * checker)[:, None]
    spot_colours = rng.uniform(30, 250, (len(spots), 3))
    for centre, colour in zip(spots, spot_colours):
        near = np.exp(-np.sum((vertices - centre) ** 2, axis=1) / 0.02**2)[:, None]
        colours = colours * (1 - near) + colour * near
    alpha = np.full((len(vertices), 1), 255)
    return trimesh.Trimesh(vertices, faces, vertex_colors=np.concatenate([np.clip(colours, 0, 255), alpha], 1)
                           .astype(np.uint8), process=False)


def signed_distance(name: str, points: np.ndarray) -> np.ndarray:
    """Exact signed distance (negative inside) from object-frame points to the primitive `name`."""
    mesh = OBJECTS[name][0]()
    if name == "ball":
        return np.linalg.norm(points, axis=1) - np.abs(mesh.vertices).max()
    if name == "box":
        q = np.abs(points) - mesh.extents / 2
    else:  # a cylinder along z
        radius, half_height = mesh.extents[0] / 2, mesh.extents[2] / 2
        q = np.stack([np.linalg.norm(points[:, :2], axis=1) - radius, np.abs(points[:, 2]) - half_height], 1)
    return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)


# --- grasps ------------------------------------------------------------------------------------------------------


def _contact_frames(name: str, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """side -> (contact point, outward normal, finger direction) in the object frame: the hands on opposite
    sides, fingers pointing up (box: over the top edge) or around the object (bottle, mug, ball)."""
    extents = OBJECTS[name][0]().extents
    frames = {}
    for side, sign in (("right", 1.0), ("left", -1.0)):
        if name == "box":
            point = np.array([sign * extents[0] / 2, rng.uniform(-0.2, 0.2) * extents[1], extents[2] / 2 - 0.035])
            normal, fingers = np.array([sign, 0, 0]), np.array([0, 0, 1.0])
        else:
            angle = (0 if sign > 0 else np.pi) + rng.uniform(-0.3, 0.3)
            normal = np.array([np.cos(angle), np.sin(angle), 0.0])
            if name == "ball":
                tilt = rng.uniform(-0.4, 0.4)
                normal = np.cos(tilt) * normal + np.sin(tilt) * np.array([0, 0, 1.0])
            height = 0.0 if name == "ball" else rng.uniform(-0.3, 0.3) * extents[2]
            point = normal * extents[0] / 2 + np.array([0, 0, height])
            fingers = np.cross(np.array([0, 0, 1.0]), normal) * sign
            fingers /= np.linalg.norm(fingers)
        frames[side] = (point, normal, fingers)
    return frames


def _rest_frame(side: str) -> np.ndarray:
    """Columns: finger direction, palm normal (palmward) and their cross product, in the rest hand."""
    fingers = np.array([-1.0 if side == "right" else 1.0, 0, 0])
    palmward = np.array([0, -1.0, 0])
    return np.stack([fingers, palmward, np.cross(fingers, palmward)], 1)


def _grasp(model: HandModel, name: str, point: np.ndarray, normal: np.ndarray, fingers: np.ndarray,
           betas: np.ndarray) -> HandPose:
    """Orient the rest hand (palm toward -normal, fingers along `fingers`), slide it along the normal until its
    closest vertex is CONTACT_GAP from the surface, then curl each digit until it is that close too."""
    target = np.stack([fingers, -normal, np.cross(fingers, -normal)], 1)
    rotation = target @ _rest_frame(model.side).T
    global_orient = _axis_angle(rotation)
    flat = -model.hand_mean  # the flat hand in the model's pose convention
    rest = _vertices(model, global_orient, flat, betas, np.zeros(3))
    palm = model.lbs_weights[:, 0].numpy() == 1
    wrist = model.rest_joints(torch.as_tensor(betas, dtype=torch.float32)[None])[0, 0].numpy()
    # The contact point goes under the knuckle half of the palm, as in power grasps; it keeps the thumb's base
    # (near the wrist) clear of curved surfaces, so the thumb can close.
    knuckle_half = palm & (np.linalg.norm(rest - wrist, axis=1) > 0.05)
    transl = point - rest[knuckle_half].mean(0)
    for _ in range(3):  # exact in one step on flat faces; converges quickly on curved ones
        placed = _vertices(model, global_orient, flat, betas, transl)
        transl = transl + normal * (CONTACT_GAP - signed_distance(name, placed[palm]).min())
    curl = _curl(model, name, global_orient, betas, transl)
    return HandPose(global_orient, curl - model.hand_mean, betas, transl)


def _curl(model: HandModel, name: str, global_orient, betas, transl, steps: int = 17) -> np.ndarray:
    """Absolute finger pose: per digit, scanning from slightly extended to fully curled, the last curl before any of
    its vertices comes closer than CONTACT_GAP (a coarse scan, then a fine one between the bracketing samples)."""
    axes = flexion_axes(model.side)
    weights = model.lbs_weights.numpy()
    digit_vertices = [weights[:, list(joints)].sum(1) > 0 for joints in _DIGIT_JOINTS]

    def poses(fractions: np.ndarray) -> np.ndarray:  # (n, 5) curl fractions -> (n, 45)
        angles = np.zeros((len(fractions), 15))
        for d, joints in enumerate(_DIGIT_JOINTS):
            full = _FULL_CURL["thumb" if joints == _THUMB_JOINTS else "finger"]
            angles[:, [j - 1 for j in joints]] = fractions[:, d, None] * full
        return (angles[:, :, None] * axes).reshape(len(fractions), 45)

    low, high = np.full(5, -0.4), np.ones(5)  # extension lets a digit lying on a flat face lift off it
    for _ in range(2):
        grid = low + np.linspace(0, 1, steps)[:, None] * (high - low)
        vertices = _vertices(model, global_orient, poses(grid) - model.hand_mean, betas, transl)
        distance = signed_distance(name, vertices.reshape(-1, 3)).reshape(steps, -1)
        for d, on in enumerate(digit_vertices):
            low[d], high[d] = _bracket(grid[:, d], distance[:, on].min(1))
    return poses(low[None])[0]


def _bracket(fractions: np.ndarray, gap: np.ndarray) -> tuple[float, float]:
    """From the first sample clear of the object: the last clear one and the first blocked one after it (both the
    closest clear sample if none is blocked; the least blocked one if none is clear)."""
    clear = gap >= CONTACT_GAP
    if not clear.any():
        return (fractions[gap.argmax()],) * 2
    first = int(clear.argmax())
    blocked = ~clear[first:]
    if not blocked.any():
        return (fractions[first + gap[first:].argmin()],) * 2
    stop = first + int(blocked.argmax())
    return fractions[stop - 1], fractions[stop]


def _vertices(model: HandModel, global_orient, hand_pose, betas, transl) -> np.ndarray:
    hand_pose = np.atleast_2d(hand_pose)
    batch = len(hand_pose)
    with torch.no_grad():
        out = model(torch.as_tensor(np.tile(global_orient, (batch, 1)), dtype=torch.float32),
                    torch.as_tensor(hand_pose, dtype=torch.float32),
                    torch.as_tensor(np.tile(betas, (batch, 1)), dtype=torch.float32),
                    torch.as_tensor(np.tile(transl, (batch, 1)), dtype=torch.float32))
    vertices = out.vertices.numpy().astype(np.float64)
    return vertices[0] if batch == 1 else vertices


def _axis_angle(rotation: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(rotation).as_rotvec()


def _moved(model: HandModel, pose: HandPose, rotation: np.ndarray, translation: np.ndarray) -> HandPose:
    """The hand carried by a rigid motion x -> rotation x + translation. MANO turns the hand about its rest wrist
    joint J (which depends on betas) before adding transl, so transl' = rotation (J + transl) + translation - J."""
    wrist = model.rest_joints(torch.as_tensor(pose.betas, dtype=torch.float32)[None])[0, 0].numpy()
    orient = _axis_angle(rotation @ axis_angle_to_matrix(pose.global_orient))
    transl = rotation @ (wrist + pose.transl) + translation - wrist
    return HandPose(orient, pose.hand_pose.copy(), pose.betas.copy(), transl)


# --- sequences ---------------------------------------------------------------------------------------------------


def ring_cameras(count: int, centre: np.ndarray, width: int, height: int, distance: float = 0.45,
                 elevation_degrees: float = 25.0) -> list[CameraView]:
    """`count` cameras evenly spaced on a ring around the vertical through `centre`, looking at it."""
    cameras = []
    elevation = np.radians(elevation_degrees)
    for k in range(count):
        azimuth = 2 * np.pi * k / count
        eye = centre + distance * np.array([np.sin(azimuth) * np.cos(elevation), np.sin(elevation),
                                            np.cos(azimuth) * np.cos(elevation)])
        R, t = look_at(eye, centre)
        cameras.append(CameraView(f"cam{k}", intrinsics(width, height, 50.0), R, t, width, height))
    return cameras


def procedural_sequence(seed: int = 0, object_name: str | None = None, frames: int = 3, cameras: int = 4,
                        width: int = 160, height: int = 120, render: bool = True) -> Sequence:
    """A STAND-IN bimanual sequence: `frames` frames seen by `cameras` ring cameras, rendered with exact masks
    (or poses only with render=False). Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    object_name = object_name or ("box", "bottle", "ball", "mug")[rng.integers(4)]
    mesh = textured_object(object_name, rng)
    models = load_hands()
    grasps = {}
    for side, (point, normal, fingers) in _contact_frames(object_name, rng).items():
        betas = np.concatenate([rng.normal(0, 0.5, 4), np.zeros(6)])
        grasps[side] = _grasp(models[side], object_name, point, normal, fingers, betas)
    # A small rigid motion: the object (upright, random heading) turns about a random axis and rises.
    heading = axis_angle_to_matrix(np.array([0, rng.uniform(0, 2 * np.pi), 0]))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    start = np.array([0, 0.1, 0]) + rng.normal(0, 0.01, 3)
    views = ring_cameras(cameras, start, width, height)
    sequence = Sequence(id=f"standin-{object_name}-{seed}", object_name=object_name, object_mesh=mesh,
                        cameras=views, frames=[])
    for index in range(frames):
        rotation = axis_angle_to_matrix(axis * np.radians(4.0) * index) @ heading @ _UPRIGHT
        translation = start + np.array([0, 0.01, 0]) * index
        hands = {side: _moved(models[side], pose, rotation, translation) for side, pose in grasps.items()}
        frame = Frame(index=index, hands=hands, object_rotation=rotation, object_translation=translation)
        if render:
            hands_now, object_now = posed_hands(models, frame), posed_object_vertices(sequence, frame)
            for camera in views:
                view = render_hands_and_object(camera, object_now, mesh, hands_now)
                frame.images[camera.name], frame.masks[camera.name] = view.image, view.masks
        sequence.frames.append(frame)
    return sequence
