"""Procedural STAND-IN scenes for CHORUS: the stand-in body (or a real SMPL file) in an interaction pose
with an object primitive placed by the lexicon, seen from a random camera. Everything a detector would
estimate is exact here (instance masks, COCO keypoints, pose, camera), which makes these scenes the
ground truth of the tests and the embedded demo's image source.

`defect` stages the cases the paper's filter must catch: a second person, no object, the object far from
the person, the torso out of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.body.smpl import NUM_BODY_JOINTS, BodyModel
from models.body.standin import JOINT_NAMES
from models.render.camera import camera_azimuth, intrinsics, orbit_camera, project
from models.render.raster import rasterize
from tasks.chorus.lexicon import CATEGORIES, PLACEMENTS

DEFECTS = ("second_person", "no_object", "object_far", "torso_out_of_frame")
JITTERED_JOINTS = ("spine1", "spine2", "spine3", "neck", "left_shoulder", "right_shoulder", "left_elbow",
                   "right_elbow", "left_hip", "right_hip", "left_knee", "right_knee", "left_collar", "right_collar")
PERSON_COLOUR = np.array([205, 170, 140])


@dataclass
class Instance:
    label: str  # "person" or the object category
    mask: np.ndarray  # (H, W) bool, visible pixels
    keypoints: np.ndarray | None  # (17, 3) pixel x, y, confidence (people only)


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    instances: list[Instance]
    body_pose: np.ndarray  # (69,) of the (first) person
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    azimuth: float


def interaction_pose(placement_name: str, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """The placement's base pose plus Gaussian jitter (radians) on the torso and limb joints."""
    pose = np.zeros((NUM_BODY_JOINTS, 3))
    for joint, angles in PLACEMENTS[placement_name].pose.items():
        pose[JOINT_NAMES.index(joint) - 1] = angles
    for joint in JITTERED_JOINTS:
        pose[JOINT_NAMES.index(joint) - 1] += rng.normal(0, jitter, 3)
    return pose.reshape(-1)


def object_rest_mesh(body: BodyModel, category: str, verb: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """The object's convex parts (vertices, faces) in rest-pose space, and the joint that carries them."""
    placement = PLACEMENTS[CATEGORIES[category].interactions[verb]]
    joint = JOINT_NAMES.index(placement.joint)
    anchor = body.pose(torch.zeros(1, NUM_BODY_JOINTS * 3)).joints[0, joint].numpy()
    parts = [(np.asarray(p.vertices) + anchor + placement.offset, np.asarray(p.faces)) for p in
             CATEGORIES[category].parts]
    return parts, joint


def move_with_bone(vertices: np.ndarray, transform: torch.Tensor) -> np.ndarray:
    T = transform.numpy()
    return vertices @ T[:3, :3].T + T[:3, 3]


def render_scene(body: BodyModel, category: str, verb: str, seed: int, image_size: int = 128,
                 jitter: float = 0.25, defect: str | None = None) -> Scene:
    rng = np.random.default_rng(seed)
    placement_name = CATEGORIES[category].interactions[verb]
    pose = interaction_pose(placement_name, jitter, rng)
    posed = body.pose(torch.from_numpy(pose).float()[None])
    parts, joint = object_rest_mesh(body, category, verb)
    object_parts = [(move_with_bone(v, posed.transforms[0, joint]), f) for v, f in parts]

    azimuth, elevation = rng.uniform(0, 360), rng.uniform(-10, 35)
    distance, target = rng.uniform(2.7, 3.3), np.array([0, -0.1, 0]) + rng.normal(0, 0.05, 3)
    if defect == "object_far":
        distance += 1.5  # room in the frame for the object, moved sideways (as seen from the camera)
    if defect == "torso_out_of_frame":
        # Close up on the object: it stays in the frame, shoulders and hips do not.
        distance, target = 0.6, np.concatenate([v for v, _ in object_parts]).mean(0)
    R, t = orbit_camera(azimuth, elevation, distance, target)
    if defect == "object_far":
        shift = R[0] * rng.choice([-1, 1]) * rng.uniform(1.3, 1.5) - (np.mean(object_parts[0][0], 0) * [1, 0, 1])
        object_parts = [(v + shift, f) for v, f in object_parts]
    K = intrinsics(image_size, image_size)

    people = [posed.vertices[0].numpy()]
    if defect == "second_person":
        side = rng.choice([-1, 1])
        people.append(people[0] + np.array([side * rng.uniform(0.7, 0.9), 0, -0.3]))
    meshes = [(v, body.faces, "person", PERSON_COLOUR) for v in people]
    if defect != "no_object":
        colour = np.array(CATEGORIES[category].colour)
        meshes += [(v, f, category, colour) for v, f in object_parts]

    image, instance_ids = _shade(meshes, K, R, t, image_size, rng)
    instances = []
    for index, person in enumerate(people):
        kp = project(keypoints_of(person, people[0], posed.keypoints[0].numpy()), K, R, t)
        inside = (kp[:, 0] >= 0) & (kp[:, 0] < image_size) & (kp[:, 1] >= 0) & (kp[:, 1] < image_size) & (kp[:, 2] > 0)
        instances.append(Instance("person", instance_ids == index,
                                  np.concatenate([kp[:, :2], inside[:, None].astype(float)], 1)))
    if defect != "no_object":
        object_ids = [len(people) + i for i in range(len(object_parts))]
        instances.append(Instance(category, np.isin(instance_ids, object_ids), None))
    return Scene(image, instances, pose, K, R, t, camera_azimuth(R, t))


def keypoints_of(person: np.ndarray, first: np.ndarray, first_keypoints: np.ndarray) -> np.ndarray:
    """Keypoints of a person that is a translated copy of the first one."""
    return first_keypoints + (person[0] - first[0])


def _shade(meshes, K, R, t, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lambert-shaded colour image over a gradient background, and the instance index per pixel (-1: none)."""
    vertices, faces, owners, colours, offset = [], [], [], [], 0
    for index, (v, f, _, colour) in enumerate(meshes):
        vertices.append(v @ R.T + t)
        faces.append(f + offset)
        owners.append(np.full(len(f), index))
        colours.append(np.repeat(colour[None], len(f), 0))
        offset += len(v)
    vertices, faces = np.concatenate(vertices), np.concatenate(faces)
    owners, colours = np.concatenate(owners), np.concatenate(colours)
    _, face_index = rasterize(vertices, faces, K, size, size)
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    light = np.array([0.3, -0.5, -0.8]) / np.linalg.norm([0.3, -0.5, -0.8])
    shade = 0.35 + 0.65 * np.abs(normals @ light)
    top, bottom = rng.integers(90, 230, 3), rng.integers(40, 160, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    image = (top * (1 - ramp) + bottom * ramp).repeat(size, 1)
    covered = face_index >= 0
    image[covered] = colours[face_index[covered]] * shade[face_index[covered], None]
    instance_ids = np.where(covered, owners[np.maximum(face_index, 0)], -1)
    return image.clip(0, 255).astype(np.uint8), instance_ids


def inside_convex(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Points inside a convex mesh: behind every face plane (faces wound outward)."""
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    offsets = (normals * tri[:, 0]).sum(1)
    return (points @ normals.T <= offsets + 1e-9).all(1)


def canonical_object_voxels(body: BodyModel, category: str, verb: str, centres: np.ndarray,
                            canonical_pose: torch.Tensor) -> np.ndarray:
    """The exact voxels of the object, carried rigidly by its joint into the canonical pose."""
    parts, joint = object_rest_mesh(body, category, verb)
    transform = body.pose(canonical_pose).transforms[0, joint]
    occupied = np.zeros(len(centres), dtype=bool)
    for vertices, faces in parts:
        occupied |= inside_convex(centres, move_with_bone(vertices, transform), faces)
    return occupied
