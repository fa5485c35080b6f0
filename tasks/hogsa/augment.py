"""The `hogsa` pipeline: fitted HOGS models -> augmented bimanual hand-object images with full annotations
(HOGSA section 3.1).

A work item is (sequence model, sample k). The worker picks a source frame of the sequence, perturbs and
re-optimizes both hands onto the fixed object (POM, models/hogsa/pose_optimization.py), draws a novel camera
around the object, renders hands + object and the object alone with the sequence's HOGS, super-resolves the
renders (SRM, when a model is given), composites them onto a background photo and crops `crop_size` pixels
around the hands. Annotations follow the crop: its camera (K, R, t), MANO parameters per hand (world frame),
3D joints (camera frame) and their 2D projections in the crop, the object's pose and articulation, visible masks
per hand and for the object, and the object-only image of the same view (HO3Pairs' ground truth).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from hoi_factory.codec import decode_image, encode_png, open_image
from hoi_factory.config import ExecutionConfig, RunConfig
from hoi_factory.context import StageContext
from hoi_factory.parents import PARENT_KEYS, ReadParentRows, items_from_dataset
from hoi_factory.pipeline import Pipeline
from hoi_factory.stage import MapStage, Reject, Resources, Row
from models.hand import load_hands
from models.hogsa import pose_optimization as pom
from models.hogsa.hogs import ACTORS, HANDS, HOGS
from models.render.camera import intrinsics, look_at
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

f32 = pa.list_(pa.float32())
POM_COLUMNS = ("penetration_before", "penetration_after", "contact_before", "contact_after")
MODEL_COLUMNS = ["sequence", "object_name", "hogs", "frames", "hand_model", "flat_hand_mean"]
RENDER_COLUMNS = frozenset({"render", "alpha", "coverage", "object_render", "object_alpha", "camera"})


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


def _params(pose: HandPose) -> dict[str, np.ndarray]:
    return {k: np.asarray(getattr(pose, k), dtype=np.float64) for k in pom.PARAMETERS}


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

    def hands(self, row: Row) -> dict:
        key = (row["hand_model"], bool(row["flat_hand_mean"]))
        if key not in self._hands:
            self._hands[key] = load_hands(*key)
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
        figures = dict.fromkeys(POM_COLUMNS, math.nan)
        novel = source
        if self.config.pose_optimization:
            novel, figures = self.optimize(row, source, rng)
        return {**row, "hand_models": self.hands(row), "hogs_model": self.model(row), "source_frame": source.index,
                "novel_frame": novel, **figures}

    def optimize(self, row: Row, source: Frame, rng: np.random.Generator) -> tuple[Frame, dict[str, float]]:
        hands, model = self.hands(row), self.model(row)
        faces = model.actors["object"].faces.cpu().numpy()

        def object_world(frame: Frame) -> np.ndarray:
            with torch.no_grad():
                return model.posed_vertices("object", scene_pose(hands, frame)).cpu().double().numpy()

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
                   "contact_before": float(np.nanmean([r.contact_before for r in reports.values()])),
                   "contact_after": float(np.nanmean([r.contact_after for r in reports.values()]))}
        return novel, figures


class RenderNovelView(MapStage):
    """A novel camera around the object; the HOGS render of hands + object (with per-actor coverage) and of the
    object alone. The last user of the HOGS model: the row goes on without it, as numpy arrays."""

    batch_size = 1
    needs = frozenset({"hogs_model", "novel_frame", "hand_models"})
    makes = RENDER_COLUMNS

    def __init__(self, config: AugmentConfig):
        self.config = config
        self.resources = model_resources(config)

    @torch.no_grad()
    def process_row(self, row: Row) -> Row:
        model, frame = row["hogs_model"], row["novel_frame"]
        pose = scene_pose(row["hand_models"], frame)
        centre = model.posed_vertices("object", pose).mean(0).cpu().double().numpy()
        camera = novel_camera(centre, self.config, np.random.default_rng(row["seed"] + 1))
        view = camera_of(camera)
        scene = model.render(view, pose, labels=True)
        alone = model.render(view, pose, actors=("object",))
        arrays = {key: value.clamp(0, 1).cpu().numpy() for key, value in (
            ("render", scene["image"]), ("alpha", scene["alpha"]), ("coverage", scene["coverage"]),
            ("object_render", alone["image"]), ("object_alpha", alone["alpha"]))}
        # The model (maybe on a GPU) stays in this worker: rows cross to other stage groups pickled.
        return {**{k: v for k, v in row.items() if k != "hogs_model"}, **arrays, "camera": camera}


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
    needs = RENDER_COLUMNS | {"novel_frame", "hand_models"}
    makes = frozenset({
        "image", "object_only_image", *(f"{actor}_mask" for actor in ACTORS), "K", "R", "t",
        *(f"{side}_{kind}" for side in HANDS for kind in ("mano", "joints_3d", "joints_2d")),
        "object_rotation", "object_translation", "articulation", "super_resolved"})

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
        annotations = {}
        for side in HANDS:
            pose = frame.hands.get(side)
            if pose is None:
                annotations.update({f"{side}_mano": [], f"{side}_joints_3d": [], f"{side}_joints_2d": []})
                continue
            joints = hand_output(row["hand_models"][side], pose).joints[0].double().numpy()
            in_camera = joints @ camera.R.T + camera.t
            pixels = in_camera @ K.T
            annotations.update({
                f"{side}_mano": np.concatenate([_params(pose)[k] for k in pom.PARAMETERS]).tolist(),
                f"{side}_joints_3d": in_camera.reshape(-1).tolist(),
                f"{side}_joints_2d": (pixels[:, :2] / pixels[:, 2:]).reshape(-1).tolist()})
        return {**row, **annotations, "image": encode_png(crop.apply(image)),
                "object_only_image": encode_png(crop.apply(object_only)),
                **{f"{actor}_mask": encode_png(crop.apply(masks[actor])) for actor in ACTORS},
                "K": K.reshape(-1).tolist(), "R": np.asarray(camera.R).reshape(-1).tolist(),
                "t": np.asarray(camera.t).tolist(),
                "object_rotation": np.asarray(frame.object_rotation).reshape(-1).tolist(),
                "object_translation": np.asarray(frame.object_translation).tolist(),
                "articulation": float(frame.articulation), "super_resolved": self.config.super_resolution is not None}


def annotated(row: dict) -> np.ndarray:
    """The crop with the 2D joints drawn (left red, right blue)."""
    from PIL import ImageDraw

    image = open_image(row["image"], "RGB")
    draw = ImageDraw.Draw(image)
    for side, colour in (("left", (255, 60, 60)), ("right", (60, 140, 255))):
        joints = np.asarray(row[f"{side}_joints_2d"]).reshape(-1, 2)
        for x, y in joints:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    return np.asarray(image)


class AugmentPipeline(Pipeline[AugmentConfig]):
    name = "hogsa"
    description = "HOGSA: HOGS models -> POM-optimized bimanual poses, novel views, super-resolved composites " \
                  "cropped around the hands, with MANO, joints, object pose, camera and masks"
    config_class = AugmentConfig
    schema = pa.schema([
        ("sequence", pa.string()), ("object_name", pa.string()), ("source_frame", pa.int32()),
        ("image", pa.binary()), ("object_only_image", pa.binary()), ("left_mask", pa.binary()),
        ("right_mask", pa.binary()), ("object_mask", pa.binary()),
        ("K", f32), ("R", f32), ("t", f32),
        ("left_mano", f32), ("right_mano", f32), ("left_joints_3d", f32), ("right_joints_3d", f32),
        ("left_joints_2d", f32), ("right_joints_2d", f32),
        ("object_rotation", f32), ("object_translation", f32), ("articulation", pa.float32()),
        ("super_resolved", pa.bool_()), *[(column, pa.float32()) for column in POM_COLUMNS],
    ])
    item_keys = frozenset({"input_id"}) | PARENT_KEYS
    preview_column = "image"
    allow_non_finite = frozenset(POM_COLUMNS)  # NaN without pose optimization

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
        return version.column_means(list(POM_COLUMNS))

    def report_pictures(self, version) -> dict[str, bytes]:
        columns = ["image", "object_only_image", "left_joints_2d", "right_joints_2d"]
        rows = version.read_shard(0, columns).to_pylist()[:8] if version.shards else []
        if not rows:
            return {}
        from hoi_factory.report import stacked_rows

        strips = [encode_png(np.concatenate([annotated(row), decode_image(row["object_only_image"], "RGB")], 1))
                  for row in rows]
        return {"annotations": stacked_rows(strips)}
