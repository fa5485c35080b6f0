"""The one in-memory form of a hand-object sequence that every source (ARCTIC, H2O, procedural stand-ins) produces.

Conventions: metres; cameras in OpenCV form (x_cam = R @ x_world + t, pixels = K @ x_cam, y down, looking down +z);
MANO parameters in axis-angle with the hand model's own pose convention (see models/hand/), in the world frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

HAND_SIDES = ("left", "right")


@dataclass
class CameraView:
    """One calibrated camera: x_cam = R @ x_world + t; pixels = K @ x_cam."""

    name: str
    K: np.ndarray  # (3, 3)
    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,)
    width: int
    height: int


@dataclass
class HandPose:
    """MANO parameters of one hand in one frame (world frame, metres, axis-angle)."""

    global_orient: np.ndarray  # (3,)
    hand_pose: np.ndarray  # (45,)
    betas: np.ndarray  # (10,)
    transl: np.ndarray  # (3,)


@dataclass
class Frame:
    index: int
    hands: dict[str, HandPose]  # "left" / "right": the hands present in this frame
    object_rotation: np.ndarray  # (3, 3) object frame -> world
    object_translation: np.ndarray  # (3,)
    articulation: float = 0.0  # radians about the object's articulation axis (0 for rigid objects)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera name -> (H, W, 3) uint8; empty: poses only
    masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # camera -> {"left","right","object"} bool


@dataclass
class Sequence:
    id: str
    object_name: str
    object_mesh: trimesh.Trimesh  # object frame, metres; vertex colours when textured
    cameras: list[CameraView]
    frames: list[Frame]
    object_part: np.ndarray | None = None  # (V,) bool: vertices of the moving part of an articulated object
    articulation_axis: tuple[np.ndarray, np.ndarray] | None = None  # (origin (3,), unit direction (3,)), object frame


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: (3,) axis-angle -> (3, 3) rotation."""
    axis_angle = np.asarray(axis_angle, dtype=np.float64)
    angle = float(np.linalg.norm(axis_angle))
    if angle < 1e-12:
        return np.eye(3)
    k = axis_angle / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def articulated_object_vertices(sequence: Sequence, articulation: float) -> np.ndarray:
    """(V, 3) object-frame vertices with the moving part turned by `articulation` radians about the axis."""
    vertices = np.asarray(sequence.object_mesh.vertices, dtype=np.float64).copy()
    if sequence.object_part is None or sequence.articulation_axis is None or articulation == 0.0:
        return vertices
    origin, direction = (np.asarray(a, dtype=np.float64) for a in sequence.articulation_axis)
    turn = axis_angle_to_matrix(direction / np.linalg.norm(direction) * articulation)
    part = np.asarray(sequence.object_part, dtype=bool)
    vertices[part] = (vertices[part] - origin) @ turn.T + origin
    return vertices


def posed_object_vertices(sequence: Sequence, frame: Frame) -> np.ndarray:
    """(V, 3) world vertices of the object in `frame`: articulation first, then the rigid object -> world pose."""
    vertices = articulated_object_vertices(sequence, frame.articulation)
    return vertices @ np.asarray(frame.object_rotation).T + np.asarray(frame.object_translation)
