"""ARCTIC (Fan et al. 2023) -> Sequence: one subject's sequence, its allocentric cameras, MANO hands and articulated
object, read from the released layout (root = `arctic_data/data`, any fsspec URL).

Files read, as ARCTIC's own loaders read them (zc-alexfan/arctic: docs/data/data_doc.md,
src/arctic/preprocess_dataset.py, src/arctic/processing.py, common/object_tensors.py, common/body_models.py,
src/datasets/arctic_dataset.py):
- `raw_seqs/<subject>/<sequence>.mano.npy`: a pickled dict {"right"|"left": {"rot" (F,3), "pose" (F,45),
  "trans" (F,3), "shape" (10,) or (F,10), "fitting_err" (F,)}}: world frame, metres, axis-angle. Read by a restricted
  unpickler that builds numpy arrays and dicts only (a pickle naming anything else is refused, never run).
- `raw_seqs/<subject>/<sequence>.object.npy`: (F, 7) floats: articulation (radians), rotation (axis-angle, object ->
  world), translation in MILLIMETRES (-> metres here).
- `meta/misc.json`: per subject "world2cam" (8 world -> camera 4x4 for views 1-8, metres, OpenCV), "intris_mat"
  (8 K), "image_size" (9 [width, height] for views 0-8) and "ioi_offset" (image number = mocap frame + offset).
- `meta/object_vtemplates/<object>/mesh.obj` (MILLIMETRES -> metres, object frame) and `parts.json` (one 0/1 label
  per vertex). ARCTIC's code adds 1 to the labels and articulates `parts_ids == 1`, so the vertices labelled 0 turn
  (the data doc's "1 for top" disagrees with the code; the code made the released ground truth), about the axis
  (0, 0, -1) through the object-frame origin, by the articulation angle, before the rigid pose.
- `images/<subject>/<sequence>/<view>/<frame + ioi_offset:05d>.jpg`, views 1-8.
The object name is the sequence name up to its first "_" (ARCTIC's rule).

Not read: view 0 (the egocentric camera moves every frame, and a Sequence's cameras are static), `*.egocam.dist.npy`,
`*.smplx.npy`, `cropped_images/` (per-frame crops whose intrinsics change every frame).

MANO: ARCTIC poses MANO with smplx's `flat_hand_mean=False` ("pose" is relative to the MANO file's `hands_mean`) and
its "trans" is smplx's `transl`: the HandPose convention (models/hand with its default flat_hand_mean=False), so the
parameters are handed over as stored. (A hand model loaded with flat_hand_mean=True would need MANO's hands_mean added.)

A malformed file or request stops the read with a PlanError naming the file; a frame with non-finite parameters or a
missing, unreadable or wrongly sized image is skipped and recorded as a FrameReject.
"""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import trimesh

from hoi_factory.codec import decode_npy
from hoi_factory.pipeline import PlanError
from tasks.hogsa.sequence import (
    HAND_SIDES,
    BadFrame,
    CameraView,
    DatasetFolder,
    Frame,
    FrameReject,
    HandPose,
    Sequence,
    StorageOptions,
    axis_angle_to_matrix,
    downscaled_camera,
    read_image,
    rigid_transform_problem,
)

ALLOCENTRIC_VIEWS = tuple(range(1, 9))
EGOCENTRIC_VIEW = 0
ARTICULATION_AXIS = (np.zeros(3), np.array([0.0, 0.0, -1.0]))  # common/object_tensors.py: z_axis = [0, 0, -1]
MILLIMETRE = 1e-3
MOVING_PART_LABEL = 0  # parts.json label of the vertices the articulation turns (see the module docstring)
MANO_FIELDS = {"rot": 3, "pose": 45, "trans": 3}


class RefusedPickle(pickle.UnpicklingError):
    """A pickle names something other than numpy arrays, scalars, dtypes and plain containers."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars, dtypes and plain containers; any other global is refused, so a
    crafted file cannot run code. Module names of numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) both map."""

    _reconstruct = np.zeros(1).__reduce__()[0]
    _scalar = np.float64(0).__reduce__()[0]
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickle(f"refused to load {module}.{name}: only numpy arrays and dicts are accepted") \
                from None


def load_npy(data: bytes, where: str):
    """The content of a .npy file: a plain array, or (object arrays, as np.save writes dicts) the unpickled value
    through NumpyOnlyUnpickler. PlanError naming `where` for anything malformed or refused."""
    handle = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(handle)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(handle) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(handle))
        if not dtype.hasobject:
            return decode_npy(data)
        value = NumpyOnlyUnpickler(handle).load()
    except RefusedPickle as exc:
        raise PlanError(f"{where}: {exc}") from None
    except (pickle.UnpicklingError, ValueError, EOFError, OSError, TypeError, AttributeError, IndexError,
            KeyError) as exc:
        raise PlanError(f"{where}: not a readable .npy file ({type(exc).__name__}: {exc})") from None
    return value.item() if isinstance(value, np.ndarray) and value.shape == () else value


def _read(folder: DatasetFolder, *parts: str) -> tuple[bytes, str]:
    where = folder.path(*parts)
    try:
        return folder.read_bytes(*parts), where
    except FileNotFoundError:
        raise PlanError(f"{where} does not exist") from None


def _float_array(value, shape: tuple[int, ...], where: str) -> np.ndarray:
    """`value` as float64 of exactly `shape` (-1: any length); PlanError naming `where` otherwise."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlanError(f"{where}: not numbers") from None
    if array.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, array.shape)):
        raise PlanError(f"{where}: shape {array.shape}, expected {tuple('F' if s == -1 else s for s in shape)}")
    return array


def _mano(folder: DatasetFolder, subject: str, sequence: str) -> dict[str, dict[str, np.ndarray]]:
    data, where = _read(folder, "raw_seqs", subject, f"{sequence}.mano.npy")
    params = load_npy(data, where)
    hands = {}
    for side in HAND_SIDES:
        fields = params.get(side) if isinstance(params, dict) else None
        if not isinstance(fields, dict):
            raise PlanError(f"{where}: no {side!r} entry (expected a dict with 'right' and 'left' MANO fields)")
        hand = {}
        for name, size in MANO_FIELDS.items():
            if name not in fields:
                raise PlanError(f"{where}: {side} hand has no {name!r}")
            hand[name] = _float_array(fields[name], (-1, size), f"{where} {side}.{name}")
        if "shape" not in fields:
            raise PlanError(f"{where}: {side} hand has no 'shape'")
        frames = len(hand["rot"])
        per_sequence = np.ndim(fields["shape"]) == 1  # ARCTIC stores one shape per sequence (its loader repeats it)
        shape = _float_array(fields["shape"], (10,) if per_sequence else (frames, 10), f"{where} {side}.shape")
        hand["shape"] = np.broadcast_to(shape, (frames, 10))
        if any(len(v) != frames for v in hand.values()):
            raise PlanError(f"{where}: {side} hand fields disagree on the number of frames")
        hands[side] = hand
    if len(hands["left"]["rot"]) != len(hands["right"]["rot"]):
        raise PlanError(f"{where}: the hands disagree on the number of frames")
    return hands


def _subject_meta(folder: DatasetFolder, subject: str) -> tuple[dict, str]:
    data, where = _read(folder, "meta", "misc.json")
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get(subject), dict):
        raise PlanError(f"{where}: no entry for subject {subject!r}")
    missing = {"world2cam", "intris_mat", "image_size", "ioi_offset"} - set(meta[subject])
    if missing:
        raise PlanError(f"{where}: subject {subject!r} lacks {sorted(missing)}")
    return meta[subject], where


def _cameras(meta: dict, where: str, views: list[int]) -> list[CameraView]:
    cameras = []
    for view in views:
        name = f"{where} view {view}"
        try:
            pose, K, size = meta["world2cam"][view - 1], meta["intris_mat"][view - 1], meta["image_size"][view]
        except (IndexError, TypeError):
            raise PlanError(f"{name}: no calibration for this view") from None
        pose = _float_array(pose, (4, 4), f"{name} world2cam")
        problem = rigid_transform_problem(pose)
        if problem:
            raise PlanError(f"{name} world2cam: {problem}")
        K = _float_array(K, (3, 3), f"{name} intris_mat")
        width, height = _float_array(size, (2,), f"{name} image_size")
        if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or not width >= 1 or not height >= 1:
            raise PlanError(f"{name}: intris_mat / image_size are not a valid camera")
        cameras.append(CameraView(str(view), K, pose[:3, :3], pose[:3, 3], int(width), int(height)))
    return cameras


def _object(folder: DatasetFolder, name: str) -> tuple[trimesh.Trimesh, np.ndarray]:
    data, where = _read(folder, "meta", "object_vtemplates", name, "mesh.obj")
    try:
        mesh = trimesh.load(io.BytesIO(data), file_type="obj", process=False, force="mesh")
    except Exception as exc:  # trimesh raises many types for a bad file
        raise PlanError(f"{where}: not a readable OBJ mesh ({type(exc).__name__}: {exc})") from None
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0 or not np.isfinite(mesh.vertices).all():
        raise PlanError(f"{where}: empty mesh or non-finite vertices")
    mesh.vertices = np.asarray(mesh.vertices) * MILLIMETRE
    data, where = _read(folder, "meta", "object_vtemplates", name, "parts.json")
    try:
        labels = np.asarray(json.loads(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanError(f"{where}: not valid JSON ({exc})") from None
    if labels.shape != (len(mesh.vertices),) or not np.isin(labels, (0, 1)).all():
        raise PlanError(f"{where}: expected one 0/1 label per mesh vertex ({len(mesh.vertices)}), got shape "
                        f"{labels.shape}")
    return mesh, labels == MOVING_PART_LABEL


def _views(folder: DatasetFolder, subject: str, sequence: str, cameras, images: bool) -> list[int]:
    if cameras is None:
        present = [v for v in ALLOCENTRIC_VIEWS if folder.exists("images", subject, sequence, str(v))]
        if images and not present:
            raise PlanError(f"{folder.path('images', subject, sequence)} has no view folders 1-8 (read poses only "
                            "with images=False)")
        return present if images else list(ALLOCENTRIC_VIEWS)
    views = []
    for camera in cameras:
        view = int(camera) if str(camera).isdigit() else -1
        if view == EGOCENTRIC_VIEW:
            raise PlanError("ARCTIC view 0 is the egocentric camera, which moves every frame; a Sequence holds static "
                            "cameras: use views 1-8")
        if view not in ALLOCENTRIC_VIEWS:
            raise PlanError(f"unknown ARCTIC camera {camera!r}: the allocentric views are 1-8")
        views.append(view)
    return views


def _frame(index: int, hands: dict, objects: np.ndarray) -> Frame:
    """The poses of mocap frame `index`; BadFrame when a value is not finite."""
    poses = {}
    for side in HAND_SIDES:
        values = {name: hands[side][name][index] for name in (*MANO_FIELDS, "shape")}
        if not all(np.isfinite(v).all() for v in values.values()):
            raise BadFrame("non-finite values", f"{side} hand MANO parameters of frame {index}")
        poses[side] = HandPose(global_orient=values["rot"].copy(), hand_pose=values["pose"].copy(),
                               betas=values["shape"].copy(), transl=values["trans"].copy())
    pose = objects[index]
    if not np.isfinite(pose).all():
        raise BadFrame("non-finite values", f"object pose of frame {index}")
    return Frame(index=index, hands=poses, object_rotation=axis_angle_to_matrix(pose[1:4]),
                 object_translation=pose[4:7] * MILLIMETRE, articulation=float(pose[0]))


def read_arctic(root: str, subject: str, sequence: str, cameras=None, frames=None, *, images: bool = True,
                image_scale: int = 1, rejects: list[FrameReject] | None = None,
                storage_options: StorageOptions | None = None) -> Sequence:
    """One ARCTIC sequence (e.g. subject "s01", sequence "box_grab_01") as a Sequence.

    cameras: allocentric views (1-8, as ints or strings); default: every view with an image folder (all 8 with
    images=False). frames: mocap frame indices; default: all. images=False reads poses and cameras only.
    image_scale: shrink images (and intrinsics) by this integer factor (2 gives the paper's 1400x1000).
    Skipped frames are appended to `rejects` when given. storage_options: fsspec options for `root`'s URL."""
    folder = DatasetFolder(root, storage_options)
    hands = _mano(folder, subject, sequence)
    data, where = _read(folder, "raw_seqs", subject, f"{sequence}.object.npy")
    objects = _float_array(load_npy(data, where), (-1, 7), where)
    count = len(hands["right"]["rot"])
    if len(objects) != count:
        raise PlanError(f"{where}: {len(objects)} frames, the MANO file has {count}")
    selected = list(range(count)) if frames is None else [int(f) for f in frames]
    outside = [f for f in selected if not 0 <= f < count]
    if outside:
        raise PlanError(f"frames {outside} are outside {subject}/{sequence}'s {count} frames")
    views = _views(folder, subject, sequence, cameras, images)
    meta, where = _subject_meta(folder, subject)
    full_size = _cameras(meta, where, views)
    scaled = [downscaled_camera(c, image_scale) for c in full_size]
    if not isinstance(meta["ioi_offset"], int):
        raise PlanError(f"{where}: subject {subject!r} ioi_offset {meta['ioi_offset']!r} is not an integer")
    object_name = sequence.split("_")[0]
    mesh, moving = _object(folder, object_name)

    kept = []
    for index in selected:
        try:
            frame = _frame(index, hands, objects)
            for camera in full_size if images else ():
                parts = ("images", subject, sequence, camera.name, f"{index + meta['ioi_offset']:05d}.jpg")
                frame.images[camera.name] = read_image(folder, parts, camera, image_scale)
        except BadFrame as bad:
            if rejects is not None:
                rejects.append(FrameReject(index, bad.reason, bad.detail))
            continue
        kept.append(frame)
    return Sequence(id=f"arctic/{subject}/{sequence}", object_name=object_name, object_mesh=mesh,
                    cameras=scaled, frames=kept, object_part=moving, articulation_axis=ARTICULATION_AXIS)
