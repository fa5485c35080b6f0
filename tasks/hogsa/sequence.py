"""The one in-memory form of a hand-object sequence that every source (ARCTIC, H2O, procedural stand-ins) produces,
and the small helpers the dataset adapters share (files under an fsspec root, images, rigid transforms, rejects).

Conventions: metres; cameras in OpenCV form (x_cam = R @ x_world + t, pixels = K @ x_cam, y down, looking down +z,
pixel i covering [i, i + 1) as in models/render/raster.py); MANO parameters in axis-angle, in the world frame, as
`HandModel.forward` (models/hand/mano.py) takes them: `hand_pose` relative to the model's `hand_mean` (smplx's
flat_hand_mean=False, its default: ARCTIC, the stand-ins, and H2O read with `hand_mean`; H2O read without it keeps
its absolute labels, for models loaded with flat_hand_mean=True), `transl` added after the rotation about the rest
wrist joint.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import trimesh
from fsspec.core import url_to_fs
from PIL import Image

from hoi_factory.codec import open_image
from hoi_factory.pipeline import PlanError
from models.render.raster import rasterize

HAND_SIDES = ("left", "right")
StorageOptions = Callable[[str], dict[str, Any]]  # fsspec options for a URL, e.g. StageContext.storage_options


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
    """MANO parameters of one hand in one frame (world frame, metres, axis-angle), as HandModel.forward takes them
    (see the module docstring for the hand_pose convention)."""

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


def visible_masks(camera: CameraView, meshes: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """label -> (H, W) bool: the pixels where that label's mesh (world vertices (V, 3), faces (F, 3)) is the nearest
    surface, all meshes z-buffered together (models/render/raster.py, pixel centres)."""
    labels = list(meshes)
    offsets = np.cumsum([0] + [len(meshes[label][0]) for label in labels])
    vertices = np.concatenate([np.asarray(meshes[label][0], dtype=np.float64) for label in labels])
    faces = np.concatenate([np.asarray(meshes[label][1]) + offset for label, offset in zip(labels, offsets)])
    face_label = np.repeat(np.arange(len(labels)), [len(meshes[label][1]) for label in labels])
    _, face_index = rasterize(vertices @ np.asarray(camera.R).T + np.asarray(camera.t), faces, np.asarray(camera.K),
                              camera.width, camera.height)
    pixel_label = np.where(face_index >= 0, face_label[np.maximum(face_index, 0)], -1)
    return {label: pixel_label == i for i, label in enumerate(labels)}


# --- shared by the dataset adapters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameReject:
    """A frame an adapter skipped: a short stable reason (for counting) and the detail naming the file."""

    frame: int
    reason: str
    detail: str


class BadFrame(Exception):
    """One frame cannot be used; the adapter skips it and records a FrameReject."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class DatasetFolder:
    """Files under a dataset root given as any fsspec URL (a local folder, s3://...), opened with the
    `storage_options` for that URL (none by default)."""

    def __init__(self, root: str, storage_options: StorageOptions | None = None):
        root = str(root)
        self.fs, self.root = url_to_fs(root, **(storage_options(root) if storage_options else {}))

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        """The file's bytes; FileNotFoundError when it is missing or not a file."""
        try:
            with self.fs.open(self.path(*parts), "rb") as handle:
                return handle.read()
        except (IsADirectoryError, NotADirectoryError) as exc:  # a folder where a file belongs: as good as missing
            raise FileNotFoundError(f"{self.path(*parts)} is not a file") from exc

    def names(self, *parts: str) -> list[str]:
        """Sorted names directly under a folder; empty when the folder does not exist."""
        folder = self.path(*parts)
        if not self.fs.isdir(folder):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(folder, detail=False))


def downscaled_camera(camera: CameraView, factor: int) -> CameraView:
    """The camera of an image shrunk by an integer `factor` (box filter): with pixel i covering [i, i + 1), as the
    rasterizers here and gsplat assume, every pixel coordinate divides by `factor`."""
    if factor < 1 or camera.width % factor or camera.height % factor:
        raise PlanError(f"camera {camera.name}: {camera.width}x{camera.height} is not divisible by {factor}")
    if factor == 1:
        return camera
    K = np.asarray(camera.K, dtype=np.float64).copy()
    K[:2] /= factor
    return replace(camera, K=K, width=camera.width // factor, height=camera.height // factor)


def read_image(folder: DatasetFolder, parts: tuple[str, ...], camera: CameraView, factor: int = 1) -> np.ndarray:
    """(H, W, 3) uint8: the image file at `parts`, which must have the (full-size) camera's size, shrunk by `factor`;
    BadFrame naming the file when it is missing, unreadable or of another size."""
    where = folder.path(*parts)
    try:
        data = folder.read_bytes(*parts)
    except FileNotFoundError:
        raise BadFrame("missing file", where) from None
    return decode_frame(data, where, camera.width, camera.height, factor)


def decode_frame(data: bytes, where: str, width: int, height: int, factor: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 from encoded bytes that must be `width` x `height`, shrunk by `factor`; BadFrame otherwise."""
    try:
        image = open_image(data)
    except Image.UnidentifiedImageError:
        raise BadFrame("unreadable image", f"{where}: not in any image format PIL reads") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadFrame("unreadable image", f"{where}: {type(exc).__name__}: {exc}") from None
    if image.size != (width, height):
        raise BadFrame("image size mismatch",
                       f"{where}: {image.size[0]}x{image.size[1]}, the calibration says {width}x{height}")
    image = image.convert("RGB")
    return np.asarray(image.reduce(factor) if factor > 1 else image)


def rigid_transform_problem(matrix: np.ndarray, tolerance: float = 1e-3) -> str | None:
    """Why a 4x4 matrix is not a finite rigid transform (rotation + translation), or None when it is. The tolerance
    admits calibrations and poses written with a few decimals."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4):
        return f"shape {matrix.shape}, not (4, 4)"
    if not np.isfinite(matrix).all():
        return "non-finite values"
    if np.abs(matrix[3] - (0, 0, 0, 1)).max() > tolerance:
        return f"last row {matrix[3].tolist()} is not [0, 0, 0, 1]"
    rotation = matrix[:3, :3]
    if np.abs(rotation.T @ rotation - np.eye(3)).max() > tolerance or np.linalg.det(rotation) < 0:
        return "the 3x3 block is not a rotation"
    return None
