"""The `hogsa` pipeline: fitted HOGS models -> augmented bimanual hand-object images with full annotations
(HOGSA section 3.1).

A work item is (sequence model, sample k). The worker picks a source frame of the sequence, perturbs and
re-optimizes both hands onto the fixed object (POM, models/hogsa/pose_optimization.py), draws a novel camera
around the object, renders hands + object and the object alone with the sequence's HOGS, super-resolves the
renders (SRM, when a model is given), composites them onto a background photo and crops `crop_size` pixels
around the hands. Annotations follow the crop: its camera (K, R, t), MANO parameters per hand (world frame),
3D joints and mesh vertices (camera frame), the joints' 2D projections in the crop, the per-vertex hand-object
contact map, the object's pose and articulation, its 3D bounding box (camera frame, and projected) and 2D box, visible
masks per hand and for the object, and the object-only image of the same view (HO3Pairs' ground truth). Each
column's shape, unit and frame: `SCHEMA` (hoi_factory.columns: Arrow field metadata, in the dataset card); a hand
the sample lacks has null columns.

Stains (issue 19): where the model row gives the object's true vertex colours (the stand-ins), every sample's
object-only render is scored against the exact render of the object mesh in the same view (`object_only_error`,
mean |colour| inside the object's mask) and a sample above `max_object_only_error` is rejected ("stained
object-only view"); the dataset metrics give the mean. Real captures have no such truth (null).

Not from the paper (which lists no annotation format): the hand mesh of the vertex and contact columns is
`hand_mesh` (default "mano-hd", the mesh HOGSA's hand Gaussians live on; models/hand/mano_hd.py), whose first 778
vertices are MANO's own. POM works on MANO's 778 vertices whatever `hand_mesh` says (the paper's POM optimizes MANO,
with GraspTTA's ContactNet on MANO's vertices), so its 5 mm penetration guarantee holds for those; a new vertex
sits off its posed edge midpoint by the skinning difference (at most 2.2 mm on the stand-in's grasp-like poses,
tests/hogsa/test_hand_model.py).
Contact is a vertex within `CONTACT_DISTANCE` (5 mm) of the object's surface or inside it, the distance POM's own
contact figures use; HOGSA defines none (its contact maps come from ContactNet).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field
from scipy import ndimage

from hoi_factory.codec import decode_image, encode_png, open_image
from hoi_factory.columns import column
from hoi_factory.config import ExecutionConfig, RunConfig
from hoi_factory.context import StageContext
from hoi_factory.parents import PARENT_KEYS, ReadParentRows, items_from_dataset
from hoi_factory.pipeline import Pipeline
from hoi_factory.stage import MapStage, Reject, Resources, Row
from models.hand import MANO, MANO_HD, load_hands
from models.hogsa import pose_optimization as pom
from models.hogsa.hogs import ACTORS, HANDS, HOGS
from models.hogsa.sdf import MeshDistance
from models.render.camera import intrinsics, look_at, project
from tasks.hogsa.composite import (
    PROCEDURAL,
    BadBackground,
    alpha_blend,
    crop_around,
    list_backgrounds,
    load_background,
    procedural_background,
)
from tasks.hogsa.posing import camera_of, frame_from_json, hand_output, scene_pose
from tasks.hogsa.sequence import CameraView, Frame, HandPose
from tasks.hogsa.standin_sequences import render_scene

f32 = pa.float32()
POM_COLUMNS = ("penetration_before", "penetration_after", "contact_before", "contact_after")
MODEL_COLUMNS = ["sequence", "object_name", "hogs", "frames", "hand_model", "flat_hand_mean", "object_colours"]
RENDER_COLUMNS = frozenset({"render", "alpha", "coverage", "object_render", "object_alpha", "camera"})
HAND_COLUMNS = ("mano", "joints_3d", "joints_2d", "vertices", "contact")
OBJECT_BOX_COLUMNS = ("object_box_3d", "object_box_3d_2d", "object_box_2d")
CONTACT_DISTANCE = pom.CONTACT_DISTANCE  # metres (5 mm): a hand vertex this close to the surface, or inside, touches
# The box corners' order: corner i takes the object frame's x maximum when bit 0 of i is set, y when bit 1, z bit 2.
BOX_CORNER_BITS = np.array([[(i >> axis) & 1 for axis in range(3)] for i in range(8)], dtype=bool)
CAMERA = "crop camera (OpenCV: x right, y down, z forward; x_cam = R x_world + t)"
# Per-sample object-only colour error above which a sample counts as stained. Measured on the four stand-in grasps
# (48 px, 6 cameras x 2 frames, 100 fitting steps; 6 samples each): object colours learning from every pixel (before
# issue 19's fix) 0.055-0.193, median 0.155; from the object's own pixels 0.032-0.105, median 0.057; the demo's
# 0.031-0.071. 0.1 rejects 19 of the 24 former samples and 1 of the 24 latter.
MAX_OBJECT_ONLY_ERROR = 0.1
PIXELS = "crop pixels (x right, y down, origin at the top-left corner)"


def hand_columns(side: str) -> list[pa.Field]:
    """The annotation columns of one hand; null where the sample has no such hand."""
    return [
        column(f"{side}_mano", f32, f"{side} hand MANO parameters: global_orient (3, axis-angle), hand_pose (45, "
               "axis-angle, relative to the model's hands_mean unless the hogsa-models row says flat_hand_mean), "
               "betas (10), transl (3, metres)", shape=(61,), frame="world"),
        column(f"{side}_joints_3d", f32, f"{side} hand joints, OpenPose hand order (MANO's 16 and 5 fingertips)",
               shape=(21, 3), unit="m", frame=CAMERA),
        column(f"{side}_joints_2d", f32, f"{side} hand joints projected by K (may lie outside the crop)",
               shape=(21, 2), unit="px", frame=PIXELS),
        column(f"{side}_vertices", f32, f"{side} hand mesh vertices (hand_mesh: 3093 for mano-hd, whose first 778 "
               "are MANO's; 778 for mano)", shape=(None, 3), unit="m", frame=CAMERA),
        column(f"{side}_contact", pa.bool_(), f"per {side} hand vertex (as {side}_vertices): within "
               f"{1000 * CONTACT_DISTANCE:g} mm of the object's surface or inside it", shape=(None,)),
    ]


SCHEMA = pa.schema([
    column("sequence", pa.string(), "the source sequence (hogsa-models row)"),
    column("object_name", pa.string(), "the object's name (class)"),
    column("source_frame", pa.int32(), "index of the sequence frame the novel pose starts from"),
    column("image", pa.binary(), "the augmented image: hands and object composited on a background, cropped "
           "around the hands (crop_size square, RGB)", encoding="png"),
    column("object_only_image", pa.binary(), "the same view without hands (HO3Pairs' inpainting truth; "
           "crop_size square, RGB)", encoding="png"),
    *(column(f"{actor}_mask", pa.binary(), f"the {actor}'s visible pixels in the image", encoding="png-mask")
      for actor in ACTORS),
    column("K", f32, "intrinsics of the crop", shape=(3, 3), unit="px", frame=PIXELS),
    column("R", f32, "rotation world -> camera", shape=(3, 3), frame=CAMERA),
    column("t", f32, "translation world -> camera", shape=(3,), unit="m", frame=CAMERA),
    *(field for side in HANDS for field in hand_columns(side)),
    column("object_rotation", f32, "object -> world rotation", shape=(3, 3), frame="world"),
    column("object_translation", f32, "object -> world translation", shape=(3,), unit="m", frame="world"),
    column("articulation", f32, "the articulated part's angle (0 for rigid objects)", unit="rad"),
    column("object_box_3d", f32, "corners of the object's box, axis-aligned in the object's frame around its "
           "(articulated) mesh; corner i at the maximum x if bit 0 of i is set, y if bit 1, z if bit 2, else at "
           "the minimum", shape=(8, 3), unit="m", frame=CAMERA),
    column("object_box_3d_2d", f32, "object_box_3d's corners projected by K", shape=(8, 2), unit="px",
           frame=PIXELS),
    column("object_box_2d", f32, "x0, y0, x1, y1 of the projected object mesh, occluded and out-of-crop parts "
           "included (not clipped to the crop)", shape=(4,), unit="px", frame=PIXELS),
    column("super_resolved", pa.bool_(), "whether the renders went through the SRM"),
    column("penetration_before", f32, "POM: the deepest hand vertex inside the object at the perturbed start, "
           "over both hands (null without POM)", unit="m"),
    column("penetration_after", f32, "POM: the same after the fit", unit="m"),
    column("contact_before", f32, "POM: the fraction of the contact prior's vertices within 5 mm of the object's "
           "surface at the perturbed start, mean over the hands (null without POM or prior)"),
    column("contact_after", f32, "POM: the same after the fit"),
    column("object_only_error", f32, "mean absolute colour error (0-1) of the object rendered alone against its "
           "exact render, inside the object's mask, before super-resolution (stand-ins; null for real captures)"),
])


class AugmentConfig(RunConfig):
    models: str = Field("hogsa-models", description="the hogsa-models dataset: name or name/version")
    samples_per_sequence: int = Field(8, ge=1, le=1_000_000)
    pose_optimization: bool = Field(True, description="perturb and re-fit both hands (POM); off: dataset poses")
    pom_iterations: int = Field(200, ge=1, le=10_000, description="POM steps per hand (the paper: 200)")
    render_size: int = Field(256, ge=32, le=4096, description="side of the square novel-view render, pixels")
    fov_degrees: float = Field(50.0, gt=5, lt=150)
    camera_distance: tuple[float, float] = Field((0.35, 0.6), description="metres from the object, min and max")
    camera_elevation: tuple[float, float] = Field((-10.0, 60.0), description="degrees, min and max")
    super_resolution: str | None = Field(None, description="SRM model: name[/version] in the model store, or a "
                                         "folder / URL; none: renders are composited as they are")
    backgrounds: str = Field(PROCEDURAL, description="a folder of photos (e.g. COCO train2017) or 'procedural'")
    crop_size: int = Field(224, ge=32, le=2048)
    hand_mesh: Literal["mano-hd", "mano"] = Field(MANO_HD, description="hand mesh of the vertex and contact "
                                                  "columns: 'mano-hd' (MANO subdivided once, 3093 vertices, the "
                                                  "first 778 MANO's) or 'mano' (778); POM always uses MANO's")
    max_object_only_error: float | None = Field(MAX_OBJECT_ONLY_ERROR, gt=0, le=1, description="stand-ins: "
                                                "reject a sample whose object-only render errs more (mean "
                                                "|colour|, 0-1, inside the object's mask); none: keep all")
    gpus: float = Field(0.0, ge=0, le=8)


def novel_camera(centre: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> CameraView:
    """A camera on a sphere around `centre` (world +y up), distance and elevation drawn in the configured ranges."""
    azimuth = rng.uniform(0, 2 * np.pi)
    elevation = np.radians(rng.uniform(*config.camera_elevation))
    eye = centre + rng.uniform(*config.camera_distance) * np.array(
        [np.sin(azimuth) * np.cos(elevation), np.sin(elevation), np.cos(azimuth) * np.cos(elevation)])
    R, t = look_at(eye, centre)
    size = config.render_size
    return CameraView("novel", intrinsics(size, size, config.fov_degrees), R, t, size, size)


def _f32(array) -> np.ndarray:
    """A float32 array of a column's declared shape (the dataset writer nests it as the schema says)."""
    return np.asarray(array, dtype=np.float32)


def _mean_of_known(values: list[float]) -> float | None:
    """The mean of the finite values, None when there is none (a hand without contact prior reports NaN)."""
    known = [v for v in values if math.isfinite(v)]
    return float(np.mean(known)) if known else None


def _params(pose: HandPose) -> dict[str, np.ndarray]:
    return {k: np.asarray(getattr(pose, k), dtype=np.float64) for k in pom.PARAMETERS}


def object_box(object_vertices: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(8, 3) world corners (order: BOX_CORNER_BITS) of the box around the object's world vertices that is
    axis-aligned in the object's frame (object -> world: rotation @ p + translation)."""
    local = (object_vertices - translation) @ rotation
    corners = np.where(BOX_CORNER_BITS, local.max(0), local.min(0))
    return corners @ rotation.T + translation


def contact_map(hand_vertices: np.ndarray, object_distance: MeshDistance) -> np.ndarray:
    """(V,) bool: the hand vertices (world) within CONTACT_DISTANCE of the object's surface or inside it."""
    signed, _, _ = object_distance.query(hand_vertices)
    return signed < CONTACT_DISTANCE


def object_only_error(render: np.ndarray, camera: CameraView, object_vertices: np.ndarray, faces: np.ndarray,
                      colours: np.ndarray) -> float | None:
    """Mean absolute colour error (0-1) of an (H, W, 3) object-only HOGS render (on black) against the exact render
    of the object mesh with its true vertex colours, inside the exact object mask less its outline (HOGS edges are
    soft, the z-buffer's hard); None when the object shows no inner pixel. Stains (Gaussians that took the hands'
    colour) raise it; a clean fit errs by its shading and texture detail (tests/hogsa/test_augment.py)."""
    exact, masks, _ = render_scene(camera, [(object_vertices, faces, colours, "object")])
    inside = ndimage.binary_erosion(masks["object"])
    return float(np.abs(render - exact / 255)[inside].mean()) if inside.any() else None


def model_resources(config: AugmentConfig) -> Resources:
    """The workers of the stages that hold the HOGS model: one pool, so the model (on its device) never leaves it."""
    return Resources(num_cpus=1, num_gpus=config.gpus)


class NovelPose(MapStage):
    """Source frame -> a novel frame: POM's perturbation and fit for both hands, the object moved and (when
    articulated) opened or closed as the perturbation says; the POM figures per sample."""

    batch_size = 1
    needs = frozenset({"hogs", "frames", "hand_model", "flat_hand_mean"})
    makes = frozenset({"hand_models", "hogs_model", "source_frame", "novel_frame", *POM_COLUMNS})

    def __init__(self, config: AugmentConfig):
        self.config = config
        self.resources = model_resources(config)
        self._hands: dict[tuple[str, bool], dict] = {}
        self._model: tuple[str, HOGS] | None = None

    def setup(self, context: StageContext) -> None:
        self.device = context.device

    def hands(self, row: Row, mesh: str) -> dict:
        key = (row["hand_model"], bool(row["flat_hand_mean"]), mesh)
        if key not in self._hands:
            self._hands[key] = load_hands(row["hand_model"], bool(row["flat_hand_mean"]), mesh=mesh)
        return self._hands[key]

    def model(self, row: Row) -> HOGS:
        if self._model is None or self._model[0] != row["input_id"]:  # items of one sequence come together
            self._model = (row["input_id"], HOGS.from_bytes(row["hogs"]).to(self.device))
        return self._model[1]

    def process_row(self, row: Row) -> Row | Reject:
        rng = np.random.default_rng(row["seed"])
        frames = [frame_from_json(f) for f in json.loads(row["frames"])]
        if not frames:
            return Reject.of(row, "no frames in the sequence", str(row.get("sequence", "")))
        source = frames[rng.integers(len(frames))]
        if not source.hands:
            return Reject.of(row, "no hands in the source frame", f"frame {source.index}")
        if not all(np.isfinite(value).all() for pose in source.hands.values() for value in _params(pose).values()):
            return Reject.of(row, "non-finite source pose", f"frame {source.index}")
        figures = dict.fromkeys(POM_COLUMNS)
        novel = source
        if self.config.pose_optimization:
            novel, figures = self.optimize(row, source, rng)
        return {**row, "hand_models": self.hands(row, self.config.hand_mesh), "hogs_model": self.model(row),
                "source_frame": source.index, "novel_frame": novel, **figures}

    def optimize(self, row: Row, source: Frame, rng: np.random.Generator) -> tuple[Frame, dict[str, float]]:
        hands, model = self.hands(row, MANO), self.model(row)  # POM on MANO's vertices, as ContactNet's
        faces = model.actors["object"].faces.cpu().numpy()

        def object_world(frame: Frame) -> np.ndarray:
            with torch.no_grad():  # the input mesh: closed and unfolded, as exact distances need
                return model.posed_vertices("object", scene_pose(hands, frame), refined=False).cpu().double().numpy()

        start = {side: _params(pose) for side, pose in source.hands.items()}
        before = object_world(source)
        priors = {s: pom.contact_prior(hands[s], start[s], before, faces) for s in start}
        articulated = bool(model.object_part.any())
        moved = pom.perturb(hands, start, before.mean(0), rng,
                            articulation=source.articulation if articulated else None)
        novel = Frame(source.index, {}, source.object_rotation, source.object_translation + moved.object_offset,
                      source.articulation + moved.articulation_delta)
        fitted, reports = pom.optimize_hands(hands, moved.hands, object_world(novel), faces, priors,
                                             self.config.pom_iterations)
        novel.hands = {side: HandPose(**{k: fitted[side][k] for k in pom.PARAMETERS}) for side in fitted}
        figures = {"penetration_before": max(r.penetration_max_before for r in reports.values()),
                   "penetration_after": max(r.penetration_max_after for r in reports.values()),
                   **{key: _mean_of_known([getattr(r, key) for r in reports.values()])
                      for key in ("contact_before", "contact_after")}}
        return novel, figures


class RenderNovelView(MapStage):
    """A novel camera around the object; the HOGS render of hands + object (with per-actor coverage) and of the
    object alone. The last user of the HOGS model: the row goes on without it, as numpy arrays (with the posed
    object mesh, world frame, for the annotations). Where the model row gives the object's true colours (stand-ins),
    the object-only render is scored against the exact one (`object_only_error`) and a stained one rejected."""

    batch_size = 1
    needs = frozenset({"hogs_model", "novel_frame", "hand_models", "object_colours"})
    makes = RENDER_COLUMNS | {"object_vertices", "object_faces", "object_only_error"}

    def __init__(self, config: AugmentConfig):
        self.config = config
        self.resources = model_resources(config)

    @torch.no_grad()
    def process_row(self, row: Row) -> Row | Reject:
        model, frame = row["hogs_model"], row["novel_frame"]
        pose = scene_pose(row["hand_models"], frame)
        # the input mesh (the fitted one can fold small faces over): contact, boxes and the exact object-only view
        object_vertices = model.posed_vertices("object", pose, refined=False).cpu().double().numpy()
        centre = object_vertices.mean(0)
        camera = novel_camera(centre, self.config, np.random.default_rng(row["seed"] + 1))
        view = camera_of(camera)
        scene = model.render(view, pose, labels=True)
        alone = model.render(view, pose, actors=("object",))
        arrays = {key: value.clamp(0, 1).cpu().numpy() for key, value in (
            ("render", scene["image"]), ("alpha", scene["alpha"]), ("coverage", scene["coverage"]),
            ("object_render", alone["image"]), ("object_alpha", alone["alpha"]))}
        faces = model.actors["object"].faces.cpu().numpy()
        error = None
        if row["object_colours"] is not None:
            colours = np.asarray(row["object_colours"], dtype=np.float64)
            if colours.shape != object_vertices.shape:
                raise ValueError(f"{row['input_id']}: object_colours {colours.shape} do not match the HOGS object's "
                                 f"{len(object_vertices)} vertices")
            error = object_only_error(arrays["object_render"], camera, object_vertices, faces, colours)
            limit = self.config.max_object_only_error
            if error is not None and limit is not None and error > limit:
                return Reject.of(row, "stained object-only view", f"object-only colour error {error:.3f} > "
                                 f"max_object_only_error {limit}")
        # The model (maybe on a GPU) stays in this worker: rows cross to other stage groups pickled.
        return {**{k: v for k, v in row.items() if k != "hogs_model"}, **arrays, "camera": camera,
                "object_vertices": object_vertices, "object_faces": faces, "object_only_error": error}


class SuperResolve(MapStage):
    """SRM on the renders (premultiplied colour), alpha and coverage upsampled to match; the camera follows."""

    batch_size = 4
    needs = RENDER_COLUMNS
    makes = RENDER_COLUMNS

    def __init__(self, config: AugmentConfig):
        self.config = config
        self.resources = model_resources(config)

    def setup(self, context: StageContext) -> None:
        from models.hogsa.super_resolution import SuperResolution

        ref = self.config.super_resolution
        url = ref if "://" in ref or Path(ref).exists() else context.models.open_ref(ref).url
        self.model = SuperResolution.from_pretrained(url, context.device, **context.storage_options(url))
        if self.model.config.input_size != self.config.render_size:
            raise ValueError(f"super_resolution model {ref!r} takes {self.model.config.input_size} px renders; set "
                             f"render_size={self.model.config.input_size}")

    def process_row(self, row: Row) -> Row:
        scale = self.model.config.scale

        def up(image: np.ndarray) -> np.ndarray:
            return self.model.upscale_images((image[None] * 255).round().astype(np.uint8))[0] / 255.0

        def nearest(array: np.ndarray) -> np.ndarray:
            return array.repeat(scale, 0).repeat(scale, 1)

        camera = row["camera"]
        K = camera.K.copy()
        K[:2] *= scale
        return {**row, "render": up(row["render"]), "object_render": up(row["object_render"]),
                "alpha": nearest(row["alpha"]), "object_alpha": nearest(row["object_alpha"]),
                "coverage": nearest(row["coverage"]),
                "camera": CameraView(camera.name, K, camera.R, camera.t, camera.width * scale, camera.height * scale)}


class CompositeAndAnnotate(MapStage):
    """Background + renders, the crop around the visible hands, and every annotation in the crop's frame."""

    batch_size = 4
    needs = RENDER_COLUMNS | {"novel_frame", "hand_models", "object_vertices", "object_faces"}
    makes = frozenset({
        "image", "object_only_image", *(f"{actor}_mask" for actor in ACTORS), "K", "R", "t",
        *(f"{side}_{kind}" for side in HANDS for kind in HAND_COLUMNS),
        "object_rotation", "object_translation", "articulation", *OBJECT_BOX_COLUMNS, "super_resolved"})

    def __init__(self, config: AugmentConfig):
        self.config = config

    def setup(self, context: StageContext) -> None:
        self.photos = None if self.config.backgrounds == PROCEDURAL else list_backgrounds(self.config.backgrounds)

    def background(self, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
        """BadBackground when the drawn photo cannot be read."""
        if self.photos is None:
            return procedural_background(width, height, rng)
        return load_background(self.photos[rng.integers(len(self.photos))], width, height)

    def process_row(self, row: Row) -> Row | Reject:
        camera, frame = row["camera"], row["novel_frame"]
        visible = row["alpha"] > 0.5
        owner = row["coverage"].argmax(-1)
        masks = {actor: visible & (owner == i) for i, actor in enumerate(ACTORS)}
        crop = crop_around(masks["left"] | masks["right"], self.config.crop_size)
        if crop is None:
            return Reject.of(row, "no hand visible in the novel view")
        try:
            background = self.background(camera.width, camera.height, np.random.default_rng(row["seed"] + 2))
        except BadBackground as exc:
            return Reject.of(row, "unreadable background", str(exc))
        image = alpha_blend(row["render"], row["alpha"], background)
        object_only = alpha_blend(row["object_render"], row["object_alpha"], background)
        K = crop.intrinsics(camera.K)
        return {**row, **self.hand_annotations(row, K), **self.object_annotations(row, K),
                "image": encode_png(crop.apply(image)),
                "object_only_image": encode_png(crop.apply(object_only)),
                **{f"{actor}_mask": encode_png(crop.apply(masks[actor])) for actor in ACTORS},
                "K": _f32(K), "R": _f32(camera.R), "t": _f32(camera.t),
                "object_rotation": _f32(frame.object_rotation), "object_translation": _f32(frame.object_translation),
                "articulation": float(frame.articulation), "super_resolved": self.config.super_resolution is not None}

    @staticmethod
    def hand_annotations(row: Row, K: np.ndarray) -> dict:
        """Per hand: MANO parameters, joints (camera frame and crop pixels), vertices (camera frame) and contact
        map; None for each where the frame has no such hand."""
        camera, frame = row["camera"], row["novel_frame"]
        object_distance = MeshDistance(row["object_vertices"], row["object_faces"])
        annotations = {}
        for side in HANDS:
            pose = frame.hands.get(side)
            if pose is None:
                annotations.update({f"{side}_{kind}": None for kind in HAND_COLUMNS})
                continue
            out = hand_output(row["hand_models"][side], pose)
            joints, vertices = (x[0].double().numpy() for x in (out.joints, out.vertices))
            annotations.update({
                f"{side}_mano": _f32(np.concatenate([_params(pose)[k] for k in pom.PARAMETERS])),
                f"{side}_joints_3d": _f32(joints @ camera.R.T + camera.t),
                f"{side}_joints_2d": _f32(project(joints, K, camera.R, camera.t)[:, :2]),
                f"{side}_vertices": _f32(vertices @ camera.R.T + camera.t),
                f"{side}_contact": contact_map(vertices, object_distance)})
        return annotations

    @staticmethod
    def object_annotations(row: Row, K: np.ndarray) -> dict:
        """The object's 3D box (camera frame), its corners in crop pixels, and the 2D box of the projected mesh."""
        camera, frame = row["camera"], row["novel_frame"]
        corners = object_box(row["object_vertices"], np.asarray(frame.object_rotation),
                             np.asarray(frame.object_translation))
        pixels = project(row["object_vertices"], K, camera.R, camera.t)[:, :2]
        return {"object_box_3d": _f32(corners @ camera.R.T + camera.t),
                "object_box_3d_2d": _f32(project(corners, K, camera.R, camera.t)[:, :2]),
                "object_box_2d": _f32(np.concatenate([pixels.min(0), pixels.max(0)]))}


def annotated(row: dict) -> np.ndarray:
    """The crop with the 2D joints drawn (left red, right blue)."""
    from PIL import ImageDraw

    image = open_image(row["image"], "RGB")
    draw = ImageDraw.Draw(image)
    for side, colour in (("left", (255, 60, 60)), ("right", (60, 140, 255))):
        joints = np.asarray(row[f"{side}_joints_2d"] or [], dtype=float).reshape(-1, 2)
        for x, y in joints:  # no joints: None -> an empty (0, 2) array
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    return np.asarray(image)


class AugmentPipeline(Pipeline[AugmentConfig]):
    name = "hogsa"
    description = "HOGSA: HOGS models -> POM-optimized bimanual poses, novel views, super-resolved composites " \
                  "cropped around the hands, with MANO, joints, hand vertices, contact maps, object pose and " \
                  "boxes, camera and masks"
    config_class = AugmentConfig
    schema = SCHEMA
    item_keys = frozenset({"input_id"}) | PARENT_KEYS
    preview_column = "image"

    def plan(self, config: AugmentConfig, context: StageContext) -> list[dict]:
        models = context.datasets.open_ref(config.models)
        if config.backgrounds != PROCEDURAL:
            list_backgrounds(config.backgrounds)  # fails the plan, naming the folder, when it holds no photos
        return [{**item, "index": k} for item in items_from_dataset(models) for k in range(config.samples_per_sequence)]

    def stages(self, config: AugmentConfig):
        stages = [ReadParentRows(MODEL_COLUMNS), NovelPose(config), RenderNovelView(config)]
        if config.super_resolution:
            stages.append(SuperResolve(config))
        return [*stages, CompositeAndAnnotate(config)]

    def demo_config(self, inputs: Path, execution: ExecutionConfig) -> AugmentConfig:
        return AugmentConfig(models="demo-hogsa-models", samples_per_sequence=12, pom_iterations=60, render_size=96,
                             crop_size=96, execution=execution, output={"dataset": "demo-hogsa"})

    def dataset_metrics(self, version) -> dict[str, float]:
        return version.column_means([*POM_COLUMNS, "object_only_error"])

    def report_pictures(self, version) -> dict[str, bytes]:
        columns = ["image", "object_only_image", "left_joints_2d", "right_joints_2d"]
        rows = version.read_shard(0, columns).to_pylist()[:8] if version.shards else []
        if not rows:
            return {}
        from hoi_factory.report import stacked_rows

        strips = [encode_png(np.concatenate([annotated(row), decode_image(row["object_only_image"], "RGB")], 1))
                  for row in rows]
        return {"annotations": stacked_rows(strips)}
