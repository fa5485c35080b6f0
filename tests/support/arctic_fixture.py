"""Procedural STAND-IN ARCTIC data: a tiny sequence written in ARCTIC's released file formats (see
tasks/hogsa/arctic.py for the formats), together with the Sequence it encodes, so tests can check that the adapter
recovers exactly what was written.

The object is a box with a door (the door's vertices are the moving part, labelled 0 in parts.json as ARCTIC's code
reads them, hinged on the z axis through the object origin); the hands carry small random MANO parameters; the
images are the object rendered by the calibrated cameras (flat, on one colour), or, given hand models, the hands
and the shaded object on a background that may be cluttered (a different busy picture per camera, the same in
every frame: what a real capture's room is to the fit). Units are converted on writing as ARCTIC stores them
(object translation and mesh in millimetres), and the MANO dicts are written by np.save, as ARCTIC's were.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from models.hand import HandModel
from models.render.camera import intrinsics, orbit_camera
from models.render.raster import rasterize
from tasks.hogsa.arctic import ALLOCENTRIC_VIEWS, ARTICULATION_AXIS, MOVING_PART_LABEL
from tasks.hogsa.sequence import (
    HAND_SIDES,
    CameraView,
    Frame,
    HandPose,
    Sequence,
    axis_angle_to_matrix,
    posed_object_vertices,
)
from tasks.hogsa.standin_sequences import render_frame

OBJECT_COLOUR = np.array([200, 120, 60], dtype=np.uint8)
BACKGROUND = np.array([30, 40, 50], dtype=np.uint8)
JPEG_QUALITY = 95


def door_box() -> tuple[trimesh.Trimesh, np.ndarray]:
    """Metres, object frame: a box x in [0, 0.12], y in [-0.08, 0], z in [-0.04, 0.04] and a door plate in front of
    it (y in [0, 0.01]) hinged on the z axis; also the (V,) mask of the door's vertices."""
    body = trimesh.creation.box((0.12, 0.08, 0.08))
    body.apply_translation((0.06, -0.04, 0.0))
    door = trimesh.creation.box((0.12, 0.01, 0.08))
    door.apply_translation((0.06, 0.005, 0.0))
    mesh = trimesh.util.concatenate([body, door])
    moving = np.arange(len(mesh.vertices)) >= len(body.vertices)
    return mesh, moving


def _cameras(width: int, height: int, fov_degrees: float) -> list[CameraView]:
    """The eight allocentric views around the object, at 45 degree steps."""
    K = intrinsics(width, height, fov_degrees=fov_degrees)
    target = np.array([0.06, -0.03, 0.0])
    return [CameraView(str(view), K, *orbit_camera(45.0 * (view - 1), 20.0, 0.45, target), width, height)
            for view in ALLOCENTRIC_VIEWS]


def _render(sequence: Sequence, frame: Frame, camera: CameraView) -> np.ndarray:
    vertices = posed_object_vertices(sequence, frame) @ camera.R.T + camera.t
    _, face_index = rasterize(vertices, np.asarray(sequence.object_mesh.faces), camera.K, camera.width, camera.height)
    image = np.broadcast_to(BACKGROUND, (camera.height, camera.width, 3)).copy()
    image[face_index >= 0] = OBJECT_COLOUR
    return image


def clutter(width: int, height: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8: a busy stand-in room: blocks of random colour at two scales and diagonal stripes."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3))
    for block in (12, 5):
        cells = rng.uniform(0, 255, (height // block + 1, width // block + 1, 3))
        image += 0.5 * cells.repeat(block, 0).repeat(block, 1)[:height, :width]
    rows, cols = np.mgrid[:height, :width]
    image *= 0.6 + 0.4 * (np.sin((rows + cols) * 0.9) > 0)[..., None]
    return image.clip(0, 255).astype(np.uint8)


def _render_with_hands(sequence: Sequence, frame: Frame, camera: CameraView, hand_models: dict[str, HandModel],
                       background: str, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Hands and object (shaded, OBJECT_COLOUR) over `background`; also the visible masks."""
    view = render_frame(sequence, frame, camera, hand_models)
    backdrop = {"plain": np.broadcast_to(BACKGROUND, view.image.shape), "black": np.zeros_like(view.image),
                "cluttered": clutter(camera.width, camera.height, seed * 100 + int(camera.name))}[background]
    foreground = np.logical_or.reduce(list(view.masks.values()))
    return np.where(foreground[..., None], view.image, backdrop), view.masks


def _write_obj(path: Path, mesh: trimesh.Trimesh, scale: float) -> None:
    lines = [f"v {x!r} {y!r} {z!r}" for x, y, z in (np.asarray(mesh.vertices) * scale).tolist()]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces]
    path.write_text("\n".join(lines) + "\n")


def write_arctic_fixture(root: str | Path, subject: str = "s01", sequence: str = "box_grab_01",
                         views: tuple[int, ...] = (1, 2), num_frames: int = 3, width: int = 64, height: int = 48,
                         ioi_offset: int = 2, seed: int = 0, hand_models: dict[str, HandModel] | None = None,
                         background: str = "plain", fov_degrees: float = 50.0) -> Sequence:
    """Writes the ARCTIC layout under `root` (= arctic_data/data): raw_seqs, meta/misc.json (all 8 views calibrated),
    the object template and the images of `views`; returns the Sequence those files encode (images as rendered,
    before JPEG). With `hand_models` the images show the hands too, over `background` ("plain", "black" or
    "cluttered"), and the frames carry the exact visible masks."""
    root, rng = Path(root), np.random.default_rng(seed)
    if hand_models is None and background != "plain":
        raise ValueError("a background other than 'plain' needs hand_models (the object-only images are flat)")
    mesh, moving = door_box()
    cameras = _cameras(width, height, fov_degrees)
    shape = {side: rng.normal(0, 0.5, 10) for side in HAND_SIDES}  # ARCTIC: one shape per sequence
    truth = Sequence(id=f"arctic/{subject}/{sequence}", object_name=sequence.split("_")[0], object_mesh=mesh,
                     cameras=[c for c in cameras if int(c.name) in views], frames=[], object_part=moving,
                     articulation_axis=ARTICULATION_AXIS)
    shaded = Sequence(**{**vars(truth), "object_mesh": mesh.copy()})  # the hands' renderer shades vertex colours
    shaded.object_mesh.visual.vertex_colors = np.append(OBJECT_COLOUR, 255)
    object_params = np.zeros((num_frames, 7))
    for index in range(num_frames):
        object_params[index] = [rng.uniform(0, 1.2), *rng.normal(0, 0.2, 3), *rng.normal(0, 0.01, 3)]
        hands = {side: HandPose(global_orient=rng.normal(0, 0.3, 3), hand_pose=rng.normal(0, 0.05, 45),
                                betas=shape[side], transl=rng.normal(0, 0.1, 3)) for side in HAND_SIDES}
        frame = Frame(index=index, hands=hands, object_rotation=axis_angle_to_matrix(object_params[index, 1:4]),
                      object_translation=object_params[index, 4:7].copy(), articulation=object_params[index, 0])
        if hand_models is None:
            frame.images = {camera.name: _render(truth, frame, camera) for camera in truth.cameras}
        else:
            for camera in truth.cameras:
                frame.images[camera.name], frame.masks[camera.name] = _render_with_hands(
                    shaded, frame, camera, hand_models, background, seed)
        truth.frames.append(frame)

    seqs = root / "raw_seqs" / subject
    seqs.mkdir(parents=True, exist_ok=True)
    mano = {side: {"rot": np.stack([f.hands[side].global_orient for f in truth.frames]),
                   "pose": np.stack([f.hands[side].hand_pose for f in truth.frames]),
                   "trans": np.stack([f.hands[side].transl for f in truth.frames]),
                   "shape": shape[side], "fitting_err": np.zeros(num_frames)} for side in HAND_SIDES}
    np.save(seqs / f"{sequence}.mano.npy", mano)  # a pickled dict, as ARCTIC ships it
    stored = object_params.copy()
    stored[:, 4:7] *= 1000  # ARCTIC stores the object translation in millimetres
    np.save(seqs / f"{sequence}.object.npy", stored)

    meta = root / "meta"
    template = meta / "object_vtemplates" / truth.object_name
    template.mkdir(parents=True, exist_ok=True)
    _write_obj(template / "mesh.obj", mesh, 1000)  # millimetres
    labels = np.where(moving, MOVING_PART_LABEL, 1 - MOVING_PART_LABEL)
    (template / "parts.json").write_text(json.dumps(labels.tolist()))
    world2cam = [np.vstack([np.hstack([c.R, c.t[:, None]]), [0, 0, 0, 1]]).tolist() for c in cameras]
    misc = {subject: {"gender": "female", "ioi_offset": ioi_offset, "world2cam": world2cam,
                      "intris_mat": [c.K.tolist() for c in cameras],
                      "image_size": [[width, height]] * (len(ALLOCENTRIC_VIEWS) + 1)}}
    (meta / "misc.json").write_text(json.dumps(misc))

    for camera in truth.cameras:
        folder = root / "images" / subject / sequence / camera.name
        folder.mkdir(parents=True, exist_ok=True)
        for frame in truth.frames:
            Image.fromarray(frame.images[camera.name]).save(folder / f"{frame.index + ioi_offset:05d}.jpg",
                                                            quality=JPEG_QUALITY)
    return truth
