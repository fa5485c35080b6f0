"""Procedural STAND-IN H2O data: a tiny take written in H2O's released file formats (see tasks/hogsa/h2o.py for the
formats), together with the Sequence it encodes, so tests can check that the adapter recovers exactly what was written.

The scene is a coloured box (the object mesh, vertex colours in a .ply) seen by fixed cameras; the hands carry small
random MANO parameters, and the left hand is unannotated (flag 0) in frame 1. Every camera folder gets its
intrinsics, camera -> world poses (in an H2O world frame different from the reference camera's), the object pose in
its own frame and its images; hand_pose_mano goes to the reference camera only, because expressing MANO parameters
in another camera needs the MANO model's wrist joint (see tasks/hogsa/h2o.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from models.render.camera import intrinsics, orbit_camera
from models.render.raster import rasterize
from tasks.hogsa.h2o import FILE_HAND_ORDER, HAND_VALUES, OBJECT_NAMES
from tasks.hogsa.sequence import (
    HAND_SIDES,
    CameraView,
    Frame,
    HandPose,
    Sequence,
    axis_angle_to_matrix,
    posed_object_vertices,
)

BACKGROUND = np.array([40, 50, 60], dtype=np.uint8)
UNANNOTATED = (1, "left")  # (frame, hand) written with flag 0


def _rigid(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, translation
    return matrix


def _numbers(path: Path, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(repr(float(v)) for v in np.ravel(values)) + "\n")


def coloured_box() -> trimesh.Trimesh:
    """Metres, object frame: a 10 x 6 x 4 cm box, each vertex coloured by its position."""
    mesh = trimesh.creation.box((0.10, 0.06, 0.04))
    colours = (np.asarray(mesh.vertices) / [0.10, 0.06, 0.04] + 0.5) * 200 + 30
    mesh.visual.vertex_colors = np.hstack([colours, np.full((len(colours), 1), 255)]).astype(np.uint8)
    return mesh


def _render(sequence: Sequence, frame: Frame, camera: CameraView) -> np.ndarray:
    """The object flat-shaded with its first face-vertex colour, on a plain background."""
    mesh = sequence.object_mesh
    vertices = posed_object_vertices(sequence, frame) @ camera.R.T + camera.t
    _, face_index = rasterize(vertices, np.asarray(mesh.faces), camera.K, camera.width, camera.height)
    image = np.broadcast_to(BACKGROUND, (camera.height, camera.width, 3)).copy()
    covered = face_index >= 0
    image[covered] = np.asarray(mesh.visual.vertex_colors)[mesh.faces[face_index[covered], 0], :3]
    return image


def write_h2o_fixture(root: str | Path, subject: str = "subject1", sequence: str = "h1/0",
                      cameras: tuple[str, ...] = ("cam0", "cam1"), num_frames: int = 3, width: int = 64,
                      height: int = 48, object_class: int = 1, hand_mean: Mapping[str, np.ndarray] | None = None,
                      seed: int = 0) -> Sequence:
    """Writes the H2O layout under `root` (subject folders and `object/`); returns the Sequence those files encode,
    in the frame of the first camera, its hand poses relative to `hand_mean` (default zeros) as HandPose holds them
    (the files hold absolute poses, as H2O's do)."""
    root, rng = Path(root), np.random.default_rng(seed)
    K = intrinsics(width, height, fov_degrees=60)
    # Scene frame: the object near its origin, cameras around it; the Sequence's world is the first camera's frame.
    scene_to_camera = [_rigid(*orbit_camera(azimuth, 25.0, 0.35)) for azimuth in np.linspace(-40, 40, len(cameras))]
    scene_to_world = np.linalg.inv(scene_to_camera[0])
    h2o_world_from_scene = _rigid(axis_angle_to_matrix(rng.normal(0, 1, 3)), rng.normal(0, 1, 3))
    truth = Sequence(id=f"h2o/{subject}/{sequence}", object_name=OBJECT_NAMES[object_class],
                     object_mesh=coloured_box(), frames=[],
                     cameras=[CameraView(name, K, (m @ scene_to_world)[:3, :3], (m @ scene_to_world)[:3, 3], width,
                                         height) for name, m in zip(cameras, scene_to_camera)])
    take = root / subject / sequence
    for name, to_camera in zip(cameras, scene_to_camera):
        _numbers(take / name / "cam_intrinsics.txt", [K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height])
    for index in range(num_frames):
        object_in_scene = _rigid(axis_angle_to_matrix(rng.normal(0, 0.4, 3)), rng.normal(0, 0.02, 3))
        object_pose = scene_to_camera[0] @ object_in_scene
        hands = {side: HandPose(global_orient=rng.normal(0, 0.3, 3), hand_pose=rng.normal(0, 0.05, 45),
                                betas=rng.normal(0, 0.5, 10), transl=rng.normal(0, 0.1, 3)) for side in HAND_SIDES}
        hand_values = []
        for side in FILE_HAND_ORDER:
            annotated = (index, side) != UNANNOTATED
            pose = hands[side]
            absolute = pose.hand_pose + (0 if hand_mean is None else hand_mean[side])
            hand_values += [float(annotated), *pose.transl, *pose.global_orient, *absolute, *pose.betas] \
                if annotated else [0.0] * HAND_VALUES
            if not annotated:
                del hands[side]
        frame = Frame(index=index, hands=hands, object_rotation=object_pose[:3, :3],
                      object_translation=object_pose[:3, 3])
        frame.images = {camera.name: _render(truth, frame, camera) for camera in truth.cameras}
        truth.frames.append(frame)
        stem = f"{index:06d}"
        _numbers(take / cameras[0] / "hand_pose_mano" / f"{stem}.txt", hand_values)
        for name, to_camera in zip(cameras, scene_to_camera):
            _numbers(take / name / "cam_pose" / f"{stem}.txt", h2o_world_from_scene @ np.linalg.inv(to_camera))
            _numbers(take / name / "obj_pose_rt" / f"{stem}.txt",
                     [object_class, *(to_camera @ object_in_scene).ravel()])
            (take / name / "rgb").mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame.images[name]).save(take / name / "rgb" / f"{stem}.png")
    mesh_folder = root / "object" / truth.object_name
    mesh_folder.mkdir(parents=True, exist_ok=True)
    truth.object_mesh.export(mesh_folder / f"{truth.object_name}.ply")
    return truth
