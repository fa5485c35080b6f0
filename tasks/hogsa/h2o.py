"""H2O (Kwon et al. 2021) -> Sequence: one take of a subject, its fixed cameras, MANO hands and rigid object, read
from the released layout (root = the folder holding subject1..subject4, any fsspec URL).

Files read, as the dataset README (taeinkwon/h2odataset) and its player (taeinkwon/h2oplayer: h2oplayer.py, utils.py)
describe and read them, under `<root>/<subject>/<scene>/<take>/cam<k>/` (sequence = "<scene>/<take>", e.g. "h1/0";
cam0-cam3 are fixed, cam4 is head-mounted), one whitespace-separated text file per frame:
- `cam_intrinsics.txt`: fx fy cx cy width height.
- `cam_pose/<frame:06d>.txt`: 16 numbers, the camera -> world 4x4 (metres).
- `hand_pose_mano/<frame:06d>.txt`: 124 numbers, per hand (left, then right): annotated flag (0/1), translation (3,
  metres), pose (48: global orientation + 45 finger values, axis-angle), shape (10); in this camera's frame.
- `obj_pose_rt/<frame:06d>.txt`: object class id + 16 numbers, the object -> this camera 4x4 (metres).
- `rgb/<frame:06d>.png` (1280x720).
- object meshes: `<objects_root>/<name>/<name>.ply` (or `.obj`), metres, vertex colours kept, the name from the class
  id (1 book, 2 espresso, 3 lotion, 4 lotion_spray, 5 milk, 6 ovomaltine, 7 pringles, 8 starbucks); `objects_root`
  defaults to `<root>/object` (where object.zip is assumed unpacked).

World frame: the first camera asked for (the reference). Its hand and object files are used unchanged, and camera k's
extrinsics are inv(cam_pose_k) @ cam_pose_ref. Why not H2O's own world: MANO rotates the hand about its wrist joint,
which depends on the shape, so moving MANO parameters into another frame needs the MANO model; in the frame the
annotation was made in nothing has to be converted, and this stays exact for any hand model.

MANO: H2O's labels are posed by manopth with flat_hand_mean=True: absolute finger rotations, and vertices in mm / 1000
+ translation, which is smplx's `transl`. Given `hand_mean` (the `HandModel.hand_mean` of the models the sequence will
be posed with) it is subtracted, which suits models of either flat_hand_mean; without it the absolute pose is kept,
for models loaded with flat_hand_mean=True. A hand whose flag is 0 is absent from that frame's `hands`.

Not read: cam4 (it moves every frame, and a Sequence's cameras are static), depth, hand_pose (joints), obj_pose
(box corners), labels. A malformed intrinsics file, a missing mesh, a bad request or a take without one readable
frame annotation stops the read with a PlanError; a frame with a missing, malformed or non-finite file, no object,
another object than the take's, a fixed camera that moved (off the median pose over the take) or a bad image is
skipped and recorded as a FrameReject.
"""

from __future__ import annotations

import io
import posixpath
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import trimesh

from hoi_factory.pipeline import PlanError
from tasks.hogsa.sequence import (
    BadFrame,
    CameraView,
    DatasetFolder,
    Frame,
    FrameReject,
    HandPose,
    Sequence,
    StorageOptions,
    downscaled_camera,
    read_image,
    rigid_transform_problem,
)

FIXED_CAMERAS = ("cam0", "cam1", "cam2", "cam3")
EGOCENTRIC_CAMERA = "cam4"
OBJECT_NAMES = {1: "book", 2: "espresso", 3: "lotion", 4: "lotion_spray", 5: "milk", 6: "ovomaltine", 7: "pringles",
                8: "starbucks"}
HAND_VALUES = 1 + 3 + 48 + 10  # flag, translation, pose, shape
FILE_HAND_ORDER = ("left", "right")
CAMERA_TOLERANCE = 1e-4  # a fixed camera whose pose differs by more (metres / rotation entries) has moved


@dataclass
class _Annotation:
    """The poses of one frame, before the checks that need every frame (fixed cameras, one object)."""

    index: int
    camera_poses: dict[str, np.ndarray]  # camera -> (4, 4) camera -> H2O world
    hands: dict[str, HandPose]
    object_class: int
    object_pose: np.ndarray  # (4, 4) object -> reference camera


def _numbers(folder: DatasetFolder, parts: tuple[str, ...], count: int) -> np.ndarray:
    """The `count` numbers of a one-line text file; BadFrame naming the file when missing or malformed."""
    where = folder.path(*parts)
    try:
        text = folder.read_bytes(*parts).decode("ascii")
    except FileNotFoundError:
        raise BadFrame("missing file", where) from None
    except UnicodeDecodeError:
        raise BadFrame("malformed file", f"{where}: not text") from None
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError:
        raise BadFrame("malformed file", f"{where}: not numbers") from None
    if len(values) != count:
        raise BadFrame("malformed file", f"{where}: {len(values)} numbers, expected {count}")
    if not np.isfinite(values).all():
        raise BadFrame("non-finite values", where)
    return values


def _rigid(values: np.ndarray, where: str) -> np.ndarray:
    matrix = values.reshape(4, 4)
    problem = rigid_transform_problem(matrix)
    if problem:
        raise BadFrame("malformed file", f"{where}: {problem}")
    return matrix


def _hands(values: np.ndarray, where: str, hand_mean: Mapping[str, np.ndarray]) -> dict[str, HandPose]:
    hands = {}
    for side, chunk in zip(FILE_HAND_ORDER, values.reshape(2, HAND_VALUES)):
        if chunk[0] not in (0, 1):
            raise BadFrame("malformed file", f"{where}: {side} hand flag {chunk[0]} is not 0 or 1")
        if chunk[0] == 1:
            hands[side] = HandPose(global_orient=chunk[4:7], hand_pose=chunk[7:52] - hand_mean[side],
                                   betas=chunk[52:62], transl=chunk[1:4])
    return hands


def _annotation(folder: DatasetFolder, take: tuple[str, ...], cameras: list[str], index: int,
                hand_mean: Mapping[str, np.ndarray]) -> _Annotation:
    name = f"{index:06d}.txt"
    poses = {camera: _rigid(_numbers(folder, (*take, camera, "cam_pose", name), 16),
                            folder.path(*take, camera, "cam_pose", name)) for camera in cameras}
    reference = (*take, cameras[0])
    hands = _hands(_numbers(folder, (*reference, "hand_pose_mano", name), 2 * HAND_VALUES),
                   folder.path(*reference, "hand_pose_mano", name), hand_mean)
    object_values = _numbers(folder, (*reference, "obj_pose_rt", name), 17)
    where = folder.path(*reference, "obj_pose_rt", name)
    if object_values[0] == 0:
        raise BadFrame("no object", f"{where}: class 0 (background)")
    if object_values[0] not in OBJECT_NAMES:
        raise BadFrame("malformed file", f"{where}: unknown object class {object_values[0]}")
    return _Annotation(index, poses, hands, int(object_values[0]), _rigid(object_values[1:], where))


def _intrinsics(folder: DatasetFolder, take: tuple[str, ...], camera: str) -> tuple[np.ndarray, int, int]:
    try:
        fx, fy, cx, cy, width, height = _numbers(folder, (*take, camera, "cam_intrinsics.txt"), 6)
    except BadFrame as bad:
        raise PlanError(bad.detail) from None
    if fx <= 0 or fy <= 0 or width < 1 or height < 1 or width != int(width) or height != int(height):
        raise PlanError(f"{folder.path(*take, camera, 'cam_intrinsics.txt')}: not a valid camera")
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), int(width), int(height)


def _object_mesh(objects: DatasetFolder, name: str) -> trimesh.Trimesh:
    for suffix in ("ply", "obj"):
        try:
            data = objects.read_bytes(name, f"{name}.{suffix}")
        except FileNotFoundError:
            continue
        where = objects.path(name, f"{name}.{suffix}")
        try:
            mesh = trimesh.load(io.BytesIO(data), file_type=suffix, process=False, force="mesh")
        except Exception as exc:  # trimesh raises many types for a bad file
            raise PlanError(f"{where}: not a readable mesh ({type(exc).__name__}: {exc})") from None
        if len(mesh.vertices) == 0 or len(mesh.faces) == 0 or not np.isfinite(mesh.vertices).all():
            raise PlanError(f"{where}: empty mesh or non-finite vertices")
        return mesh
    raise PlanError(f"no mesh for object {name!r}: {objects.path(name, name + '.ply')} (or .obj) does not exist")


def _camera_names(folder: DatasetFolder, take: tuple[str, ...], cameras) -> list[str]:
    if cameras is None:
        present = [c for c in FIXED_CAMERAS if folder.exists(*take, c)]
        if not present:
            raise PlanError(f"{folder.path(*take)} has no fixed camera folders cam0-cam3")
        return present
    names = [f"cam{c}" if str(c).isdigit() else str(c) for c in cameras]
    for name in names:
        if name == EGOCENTRIC_CAMERA:
            raise PlanError("H2O cam4 is the head-mounted camera, which moves every frame; a Sequence holds static "
                            "cameras: use cam0-cam3")
        if name not in FIXED_CAMERAS:
            raise PlanError(f"unknown H2O camera {name!r}: the fixed cameras are cam0-cam3")
    if not names or len(set(names)) != len(names):
        raise PlanError(f"cameras {names} must be distinct and not empty")
    return names


def _checked_hand_mean(hand_mean: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    if hand_mean is None:
        return {side: np.zeros(45) for side in FILE_HAND_ORDER}
    try:
        means = {side: np.asarray(hand_mean[side], dtype=np.float64).reshape(45) for side in FILE_HAND_ORDER}
    except (KeyError, TypeError, ValueError):
        raise PlanError("hand_mean must map 'left' and 'right' to 45 numbers (HandModel.hand_mean)") from None
    if not all(np.isfinite(m).all() for m in means.values()):
        raise PlanError("hand_mean holds non-finite values")
    return means


def _reject(rejects: list[FrameReject] | None, index: int, reason: str, detail: str) -> None:
    if rejects is not None:
        rejects.append(FrameReject(index, reason, detail))


def read_h2o(root: str, subject: str, sequence: str, cameras=None, frames=None, *,
             hand_mean: Mapping[str, np.ndarray] | None = None, objects_root: str | None = None, images: bool = True,
             image_scale: int = 1, rejects: list[FrameReject] | None = None,
             storage_options: StorageOptions | None = None) -> Sequence:
    """One H2O take (e.g. subject "subject1", sequence "h1/0") as a Sequence in the first camera's frame.

    hand_mean: {"left", "right"} -> (45,), the `hand_mean` of the hand models the sequence will be posed with
    ({side: model.hand_mean for side, model in load_hands(...).items()}); None keeps H2O's absolute pose.
    cameras: fixed cameras ("cam0"-"cam3" or 0-3), the first is the reference; default: those present.
    frames: frame numbers; default: every frame with a reference camera pose. images=False reads poses and cameras
    only. image_scale: shrink images (and intrinsics) by this integer factor. Skipped frames go to `rejects`.
    storage_options: fsspec options for a URL (the root's and the objects root's)."""
    hand_mean = _checked_hand_mean(hand_mean)
    folder = DatasetFolder(root, storage_options)
    take = (subject, *sequence.strip("/").split("/"))
    if not folder.exists(*take):
        raise PlanError(f"{folder.path(*take)} does not exist")
    names = _camera_names(folder, take, cameras)
    full_size = {name: _intrinsics(folder, take, name) for name in names}
    listed = [n for n in folder.names(*take, names[0], "cam_pose") if n.endswith(".txt") and n[:-4].isdigit()]
    selected = [int(n[:-4]) for n in listed] if frames is None else [int(f) for f in frames]
    if not selected:
        raise PlanError(f"{folder.path(*take, names[0], 'cam_pose')} lists no frames")

    annotations = []
    for index in selected:
        try:
            annotations.append(_annotation(folder, take, names, index, hand_mean))
        except BadFrame as bad:
            _reject(rejects, index, bad.reason, bad.detail)
    if not annotations:
        raise PlanError(f"no usable frame in {folder.path(*take)}")
    object_class = Counter(a.object_class for a in annotations).most_common(1)[0][0]
    object_name = OBJECT_NAMES[object_class]
    mesh = _object_mesh(DatasetFolder(objects_root or posixpath.join(str(root), "object"), storage_options),
                        object_name)
    # A fixed camera's pose: the element-wise median over the frames read, so one moved frame cannot set it.
    fixed = {c: np.median([a.camera_poses[c] for a in annotations], axis=0) for c in names}
    full_views = {}
    for name in names:
        to_camera = np.linalg.inv(fixed[name]) @ fixed[names[0]]  # reference camera -> this camera
        K, width, height = full_size[name]
        full_views[name] = CameraView(name, K, to_camera[:3, :3], to_camera[:3, 3], width, height)
    views = [downscaled_camera(view, image_scale) for view in full_views.values()]

    kept = []
    for annotation in annotations:
        moved = [c for c in names if np.abs(annotation.camera_poses[c] - fixed[c]).max() > CAMERA_TOLERANCE]
        if moved:
            _reject(rejects, annotation.index, "camera moved",
                    f"{moved} cam_pose of frame {annotation.index} differs from the take's median pose")
            continue
        if annotation.object_class != object_class:
            _reject(rejects, annotation.index, "another object",
                    f"frame {annotation.index} shows {OBJECT_NAMES[annotation.object_class]}, the take {object_name}")
            continue
        frame = Frame(index=annotation.index, hands=annotation.hands,
                      object_rotation=annotation.object_pose[:3, :3], object_translation=annotation.object_pose[:3, 3])
        try:
            for name in names if images else ():
                frame.images[name] = read_image(folder, (*take, name, "rgb", f"{annotation.index:06d}.png"),
                                                full_views[name], image_scale)
        except BadFrame as bad:
            _reject(rejects, annotation.index, bad.reason, bad.detail)
            continue
        kept.append(frame)
    return Sequence(id=f"h2o/{subject}/{sequence.strip('/')}", object_name=object_name, object_mesh=mesh,
                    cameras=views, frames=kept)
