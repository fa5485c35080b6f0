"""The CHORUS views pipeline: prompts -> images -> perception -> the paper's filter -> calibration.

One work item per (prompt, image number). Image sources: `diffusers` (text-to-image, the paper's SD v1.4
setting by default; then a learned perception backend) or `procedural` (stand-in scenes with exact masks,
keypoints and camera). Every later stage runs the same code whichever source made the image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from hoi_factory.codec import encode_png
from hoi_factory.columns import column
from hoi_factory.config import ExecutionConfig, RunConfig, Variant
from hoi_factory.context import StageContext
from hoi_factory.parents import PARENT_KEYS, ReadParentRows, items_from_dataset
from hoi_factory.pipeline import Pipeline
from hoi_factory.stage import MapStage, Reject, Resources, Row, Stage
from models.body.smpl import NUM_BODY_JOINTS, load_body_model
from models.diffusion import SD14, Sampling, generate, load_diffusion
from tasks.chorus import lexicon
from tasks.chorus.calibration import Calibrate
from tasks.chorus.perception import InteractionFilter, KeepInteraction, Perceive
from tasks.chorus.scenes import DEFECTS, render_scene

CAMERA_FRAME = ("person-centric camera: x_cam = R x + t, x in the body frame (SMPL, pelvis at the origin, y up, "
                "metres); OpenCV image axes (x right, y down, looking down +z)")
NUM_KEYPOINTS = 17  # COCO order


class ProceduralImages(Variant):
    """Stand-in scenes (tasks/chorus/scenes.py) with exact masks, keypoints and camera."""

    kind: Literal["procedural"] = "procedural"
    size: int = Field(128, ge=32, le=2048, description="image side, pixels")
    pose_jitter: float = Field(0.25, ge=0, le=1.5, description="pose noise (radians) per joint axis")
    defect_rate: float = Field(0.0, ge=0, le=1, description="share of scenes staged as bad samples")


class DiffusersImages(Variant):
    """Text-to-image generation, the paper's SD v1.4 setting by default."""

    kind: Literal["diffusers"] = "diffusers"
    model: str = Field("CompVis/stable-diffusion-v1-4", description="hub id, local folder or 'tiny' (random "
                       "weights, for tests)")
    steps: int = Field(SD14.steps, ge=1, le=1000, description="denoising steps")
    guidance_scale: float = Field(SD14.guidance_scale, ge=0, le=50, description="classifier-free guidance")
    size: int = Field(SD14.size, ge=32, le=2048, description="image side, pixels")
    gpus: float = Field(0.0, ge=0, le=8, description="GPUs per worker")


class GroundTruthPerception(Variant):
    """The exact instances of procedural scenes."""

    kind: Literal["ground_truth"] = "ground_truth"


class TorchvisionPerception(Variant):
    """Mask R-CNN + Keypoint R-CNN."""

    kind: Literal["torchvision"] = "torchvision"
    weights: str = Field("torchvision", description="'torchvision' (its COCO weights) or a folder with "
                         "mask_rcnn.safetensors and keypoint_rcnn.safetensors")
    image_size: int = Field(800, ge=32, le=4096, description="shorter side the R-CNNs see (800 as trained)")
    gpus: float = Field(0.0, ge=0, le=8, description="GPUs per perception worker (fractions share one)")


class Detectron2Perception(Variant):
    """detectron2's PointRend (the official code's segmenter) + Keypoint R-CNN."""

    kind: Literal["detectron2"] = "detectron2"
    weights: str = Field(..., description="a folder with pointrend.yaml, pointrend.safetensors, keypoint_rcnn.yaml "
                         "and keypoint_rcnn.safetensors")
    image_size: int = Field(800, ge=32, le=4096, description="shorter side the models see (800 as trained)")
    gpus: float = Field(0.0, ge=0, le=8, description="GPUs per perception worker (fractions share one)")


LearnedPerception = TorchvisionPerception | Detectron2Perception


class FitCalibration(Variant):
    """SMPL pose and camera fitted to the keypoints (tasks/chorus/calibration.py)."""

    kind: Literal["fit"] = "fit"
    steps: int = Field(10, ge=1, le=500, description="Levenberg-Marquardt iterations per fitting stage")
    pose_prior: str = Field("procedural", description="'procedural' (the stand-in generator's pose distribution) "
                            "or a GMM .npz with means, covars, weights (e.g. SMPLify's gmm_08 converted)")
    max_reprojection_error_px: float = Field(6.0, gt=0, description="worse fits are rejected")


class GivenCalibration(Variant):
    """The procedural scene's true pose and camera."""

    kind: Literal["given"] = "given"


class ViewsConfig(RunConfig):
    prompts: str = Field("chorus-prompts", description="prompts dataset: name (latest) or name/version")
    images_per_prompt: int = Field(4, ge=1, le=100_000)
    source: ProceduralImages | DiffusersImages = Field(default_factory=ProceduralImages, discriminator="kind",
                                                       description="image source")
    perception: GroundTruthPerception | TorchvisionPerception | Detectron2Perception = Field(
        default_factory=GroundTruthPerception, discriminator="kind")
    calibration: FitCalibration | GivenCalibration = Field(default_factory=FitCalibration, discriminator="kind")
    body_model: str = Field("standin", description="'standin' or a path to an SMPL .npz")

    @model_validator(mode="after")
    def _truth_for_the_source(self) -> ViewsConfig:
        """Only procedural scenes carry true instances and poses."""
        if isinstance(self.source, DiffusersImages) and not (
                isinstance(self.perception, LearnedPerception) and isinstance(self.calibration, FitCalibration)):
            raise ValueError("generated images carry no ground truth: use perception=torchvision (or detectron2) "
                             "and calibration=fit with source=diffusers")
        return self


class TextToImage(Stage):
    """Generates each row's prompt with a diffusers pipeline, seeded per sample."""

    batch_size = 8
    needs = frozenset({"prompt", "seed"})
    makes = frozenset({"image_array", "staged_defect"})

    def __init__(self, source: DiffusersImages):
        self.model = source.model
        self.sampling = Sampling(source.steps, source.guidance_scale, source.size)
        self.resources = Resources(num_cpus=1.0, num_gpus=source.gpus)

    def setup(self, context: StageContext) -> None:
        self.pipeline = load_diffusion(self.model, "text-to-image", context.device, context.settings.cache_dir)

    def process(self, batch: list[Row]) -> list[Row]:
        images = generate(self.pipeline, [row["prompt"] for row in batch], [row["seed"] for row in batch],
                          self.sampling)
        return [{**row, "image_array": image, "staged_defect": None} for row, image in zip(batch, images)]


class ProceduralImage(MapStage):
    """Renders the stand-in scene of a prompt: the lexicon verb decides the object's placement."""

    batch_size = 32
    needs = frozenset({"category", "verb", "base_prompt", "seed"})
    makes = frozenset({"image_array", "instances", "true_pose", "true_R", "true_t", "staged_defect"})

    def __init__(self, source: ProceduralImages, body_model: str):
        self.source, self.body_model = source, body_model

    def setup(self, context: StageContext) -> None:
        self.body = load_body_model(self.body_model)

    def process_row(self, row: Row) -> Row | Reject:
        category, verb = row["category"], row["verb"]
        if category not in lexicon.CATEGORIES or verb not in lexicon.CATEGORIES[category].interactions:
            return Reject.of(row, "no procedural placement for this prompt", row["base_prompt"])
        rng = np.random.default_rng(row["seed"])
        defect = DEFECTS[rng.integers(len(DEFECTS))] if rng.random() < self.source.defect_rate else None
        scene = render_scene(self.body, category, verb, int(rng.integers(2**31)), self.source.size,
                             self.source.pose_jitter, defect)
        return {**row, "image_array": scene.image, "instances": scene.instances, "true_pose": scene.body_pose,
                "true_R": scene.R, "true_t": scene.t, "staged_defect": defect}


class EncodeView(MapStage):
    """The view's arrays as the schema stores them: PNGs, and float32 arrays of their declared shapes."""

    batch_size = 64
    needs = frozenset({"image_array", "person_mask_array", "object_mask_array", "keypoints", "body_pose", "K", "R",
                       "t"})
    makes = frozenset({"image", "person_mask", "object_mask", "width", "height", "keypoints", "body_pose", "K", "R",
                       "t"})

    def process_row(self, row: Row) -> Row:
        height, width = row["image_array"].shape[:2]
        return {**row, "image": encode_png(row["image_array"]), "person_mask": encode_png(row["person_mask_array"]),
                "object_mask": encode_png(row["object_mask_array"]), "width": width, "height": height,
                "body_pose": np.reshape(row["body_pose"], (NUM_BODY_JOINTS, 3)),
                **{key: np.asarray(row[key], dtype=np.float32) for key in ("keypoints", "K", "R", "t")}}


class ViewsPipeline(Pipeline[ViewsConfig]):
    name = "chorus-views"
    description = "CHORUS: prompts -> images -> filtered, calibrated views (masks, keypoints, SMPL, camera)"
    config_class = ViewsConfig
    schema = pa.schema([
        column("category", pa.string(), "the object category (COCO name)"),
        column("prompt", pa.string(), "the text-to-image prompt, viewpoint phrase included (empty: a photo)"),
        column("base_prompt", pa.string(), "the prompt without its viewpoint phrase: the semantic cluster's key"),
        column("verb", pa.string(), "the interaction verb the lexicon reads in the prompt (empty: none known)"),
        column("augmentation", pa.string(), "the viewpoint phrase added to the base prompt (empty: none)"),
        column("image", pa.binary(), "the RGB image", encoding="png"),
        column("person_mask", pa.binary(), "the person's instance mask (0/255)", encoding="png-mask"),
        column("object_mask", pa.binary(), "the object's instance mask (0/255)", encoding="png-mask"),
        column("width", pa.int32(), "image width", unit="pixels"),
        column("height", pa.int32(), "image height", unit="pixels"),
        column("keypoints", pa.float32(), "the person's 17 COCO keypoints: x, y, confidence (0-1)",
               shape=(NUM_KEYPOINTS, 3), unit="pixels (x, y)", frame="image (origin top left, y down)"),
        column("body_pose", pa.float32(), "SMPL body pose: axis-angle of the 23 body joints relative to their "
               "parents (the global orientation is in R)", shape=(NUM_BODY_JOINTS, 3), unit="radians",
               frame="SMPL joint frames"),
        column("K", pa.float32(), "camera intrinsics", shape=(3, 3), unit="pixels", frame=CAMERA_FRAME),
        column("R", pa.float32(), "camera rotation: body frame -> camera frame", shape=(3, 3), frame=CAMERA_FRAME),
        column("t", pa.float32(), "camera translation: body frame -> camera frame", shape=(3,), unit="metres",
               frame=CAMERA_FRAME),
        column("azimuth", pa.float32(), "azimuth of the camera centre around the body's vertical axis (0..360)",
               unit="degrees", frame="body (SMPL, y up)"),
        column("calibration", pa.string(), "how the pose and camera were found: fit, given (the procedural truth) "
               "or eft"),
        column("reprojection_error", pa.float32(), "mean distance of the fitted body's keypoints to the detected "
               "ones (NaN: no keypoint to compare with)", unit="pixels"),
        column("staged_defect", pa.string(), "the defect a procedural scene was staged with (null: none)"),
        column("mpjpe", pa.float32(), "error of the fitted 24 SMPL joints against the truth, pelvis aligned "
               "(NaN: no truth)", unit="metres", frame="camera"),
        column("azimuth_error", pa.float32(), "error of the fitted camera azimuth against the truth (NaN: no truth)",
               unit="degrees"),
    ])
    allow_non_finite = frozenset({"mpjpe", "azimuth_error"})  # NaN: the image has no true pose
    item_keys = frozenset({"input_id", "index", *PARENT_KEYS})
    preview_column = "image"

    def plan(self, config: ViewsConfig, context: StageContext) -> list[dict]:
        prompts = context.datasets.open_ref(config.prompts)
        return [{**item, "index": i} for item in items_from_dataset(prompts) for i in range(config.images_per_prompt)]

    def stages(self, config: ViewsConfig):
        source, perception, calibration = config.source, config.perception, config.calibration
        images = (TextToImage(source) if isinstance(source, DiffusersImages)
                  else ProceduralImage(source, config.body_model))
        perceive = (Perceive(perception.kind, perception.weights, perception.image_size, perception.gpus)
                    if isinstance(perception, LearnedPerception) else Perceive("ground_truth"))
        # The procedural prior follows the scenes' jitter when the scenes are procedural.
        jitter = source.pose_jitter if isinstance(source, ProceduralImages) else ProceduralImages().pose_jitter
        calibrate = (Calibrate("fit", config.body_model, calibration.max_reprojection_error_px, calibration.steps,
                               calibration.pose_prior, jitter)
                     if isinstance(calibration, FitCalibration)
                     else Calibrate("given", config.body_model, math.inf))  # the truth: no error to bound
        return [
            ReadParentRows(["category", "prompt", "base_prompt", "verb", "augmentation"]),
            images,
            perceive,
            InteractionFilter(),
            KeepInteraction(),
            calibrate,
            EncodeView(),
        ]

    def dataset_metrics(self, version) -> dict[str, float]:
        """Calibration accuracy where the truth is known (procedural scenes): median MPJPE (metres) and azimuth
        error (degrees) over those views, and their count."""
        table = version.to_arrow(["mpjpe", "azimuth_error"]).to_pydict()
        known = np.isfinite(np.asarray(table["mpjpe"], dtype=float))
        if not known.any():
            return {}
        return {"median_mpjpe": float(np.median(np.asarray(table["mpjpe"], dtype=float)[known])),
                "median_azimuth_error": float(np.median(np.asarray(table["azimuth_error"], dtype=float)[known])),
                "views_with_truth": float(known.sum())}

    def demo_config(self, inputs: Path, execution: ExecutionConfig) -> ViewsConfig:
        return ViewsConfig(prompts="demo-chorus-prompts", images_per_prompt=1,
                           source=ProceduralImages(defect_rate=0.15), execution=execution,
                           output={"dataset": "demo-chorus-views"})
