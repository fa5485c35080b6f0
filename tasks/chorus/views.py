"""The CHORUS views pipeline: prompts -> images -> perception -> the paper's filter -> calibration.

One work item per (prompt, image number). Image sources: `diffusers` (text-to-image, the paper's SD v1.4
setting by default; then a learned perception backend) or `procedural` (stand-in scenes with exact masks,
keypoints and camera). Every later stage runs the same code whichever source made the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from hoi_factory.config import ExecutionConfig, RunConfig
from hoi_factory.context import StageContext
from hoi_factory.parents import PARENT_KEYS, ReadParentRows, items_from_dataset
from hoi_factory.pipeline import Pipeline
from hoi_factory.stage import MapStage, Reject, Resources, Row, Stage
from models.body.smpl import load_body_model
from models.diffusion import SD14, Sampling, generate, load_diffusion
from tasks.chorus import lexicon
from tasks.chorus.calibration import Calibrate
from tasks.chorus.perception import InteractionFilter, KeepInteraction, Perceive
from tasks.chorus.scenes import DEFECTS, png, render_scene

f32 = pa.list_(pa.float32())


class ViewsConfig(RunConfig):
    prompts: str = Field("chorus-prompts", description="prompts dataset: name (latest) or name/version")
    images_per_prompt: int = Field(4, ge=1, le=100_000)
    source: Literal["procedural", "diffusers"] = Field("procedural", description="image source")
    text_to_image: str = Field("CompVis/stable-diffusion-v1-4", description="diffusers: hub id, local folder "
                               "or 'tiny' (random weights, for tests)")
    steps: int = Field(SD14.steps, ge=1, le=1000, description="diffusers: denoising steps")
    guidance_scale: float = Field(SD14.guidance_scale, ge=0, le=50, description="diffusers: classifier-free guidance")
    text_to_image_gpus: float = Field(0.0, ge=0, le=8, description="diffusers: GPUs per worker")
    image_size: int | None = Field(None, ge=32, le=2048, description="pixels; default 128 procedural, 512 diffusers")
    pose_jitter: float = Field(0.25, ge=0, le=1.5, description="procedural: pose noise (radians) per joint axis")
    defect_rate: float = Field(0.0, ge=0, le=1, description="procedural: share of scenes staged as bad samples")
    perception: Literal["ground_truth", "torchvision"] = Field(
        "ground_truth", description="exact instances of procedural scenes, or Mask/Keypoint R-CNN")
    perception_weights: str = Field("torchvision", description="'torchvision' (its COCO weights) or a folder "
                                    "with mask_rcnn.safetensors and keypoint_rcnn.safetensors")
    perception_image_size: int = Field(800, ge=32, le=4096, description="shorter side the R-CNNs see (800 as trained)")
    perception_gpus: float = Field(0.0, ge=0, le=8, description="GPUs per perception worker (fractions share one)")
    calibration: Literal["fit", "given"] = Field("fit", description="fit SMPL to keypoints, or the true pose")
    body_model: str = Field("standin", description="'standin' or a path to an SMPL .npz")
    fit_steps: int = Field(200, ge=1, le=5000)
    max_reprojection_error_px: float = Field(6.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ViewsConfig:
        if self.source == "diffusers" and (self.perception == "ground_truth" or self.calibration == "given"):
            raise ValueError("generated images carry no ground truth: use perception=torchvision and "
                             "calibration=fit with source=diffusers")
        return self

    @property
    def size(self) -> int:
        return self.image_size or (SD14.size if self.source == "diffusers" else 128)


class TextToImage(Stage):
    """Generates each row's prompt with a diffusers pipeline, seeded per sample."""

    batch_size = 8
    needs = frozenset({"prompt", "seed"})
    makes = frozenset({"image_array", "staged_defect"})

    def __init__(self, config: ViewsConfig):
        self.source = config.text_to_image
        self.sampling = Sampling(config.steps, config.guidance_scale, config.size)
        self.resources = Resources(num_cpus=1.0, num_gpus=config.text_to_image_gpus)

    def setup(self, context: StageContext) -> None:
        self.pipeline = load_diffusion(self.source, "text-to-image", context.device, context.settings.cache_dir)

    def process(self, batch: list[Row]) -> list[Row]:
        images = generate(self.pipeline, [row["prompt"] for row in batch], [row["seed"] for row in batch],
                          self.sampling)
        return [{**row, "image_array": image, "staged_defect": ""} for row, image in zip(batch, images)]


class ProceduralImage(MapStage):
    """Renders the stand-in scene of a prompt: the lexicon verb decides the object's placement."""

    batch_size = 32
    needs = frozenset({"category", "verb", "base_prompt", "seed"})
    makes = frozenset({"image_array", "instances", "true_pose", "true_R", "true_t", "staged_defect"})

    def __init__(self, config: ViewsConfig):
        self.config = config

    def setup(self, context: StageContext) -> None:
        self.body = load_body_model(self.config.body_model)

    def process_row(self, row: Row) -> Row | Reject:
        category, verb = row["category"], row["verb"]
        if category not in lexicon.CATEGORIES or verb not in lexicon.CATEGORIES[category].interactions:
            return Reject.of(row, "no procedural placement for this prompt", row["base_prompt"])
        rng = np.random.default_rng(row["seed"])
        defect = DEFECTS[rng.integers(len(DEFECTS))] if rng.random() < self.config.defect_rate else None
        scene = render_scene(self.body, category, verb, int(rng.integers(2**31)), self.config.size,
                             self.config.pose_jitter, defect)
        return {**row, "image_array": scene.image, "instances": scene.instances, "true_pose": scene.body_pose,
                "true_R": scene.R, "true_t": scene.t, "staged_defect": defect or ""}


class EncodeView(MapStage):
    """The view's arrays as the schema stores them: PNGs and flat float lists."""

    batch_size = 64
    needs = frozenset({"image_array", "person_mask_array", "object_mask_array", "keypoints", "body_pose", "K", "R",
                       "t"})
    makes = frozenset({"image", "person_mask", "object_mask", "width", "height", "keypoints", "body_pose", "K", "R",
                       "t"})

    def process_row(self, row: Row) -> Row:
        height, width = row["image_array"].shape[:2]
        return {**row, "image": png(row["image_array"]), "person_mask": png(row["person_mask_array"]),
                "object_mask": png(row["object_mask_array"]), "width": width, "height": height,
                **{key: np.asarray(row[key], dtype=np.float32).reshape(-1).tolist()
                   for key in ("keypoints", "body_pose", "K", "R", "t")}}


class ViewsPipeline(Pipeline[ViewsConfig]):
    name = "chorus-views"
    description = "CHORUS: prompts -> images -> filtered, calibrated views (masks, keypoints, SMPL, camera)"
    config_class = ViewsConfig
    schema = pa.schema([
        ("category", pa.string()), ("prompt", pa.string()), ("base_prompt", pa.string()), ("verb", pa.string()),
        ("augmentation", pa.string()), ("image", pa.binary()), ("person_mask", pa.binary()),
        ("object_mask", pa.binary()), ("width", pa.int32()), ("height", pa.int32()), ("keypoints", f32),
        ("body_pose", f32), ("K", f32), ("R", f32), ("t", f32), ("azimuth", pa.float32()),
        ("calibration", pa.string()), ("reprojection_error", pa.float32()), ("staged_defect", pa.string()),
    ])
    item_keys = frozenset({"input_id", "index", *PARENT_KEYS})
    preview_column = "image"

    def plan(self, config: ViewsConfig, context: StageContext) -> list[dict]:
        prompts = context.datasets.open_ref(config.prompts)
        return [{**item, "index": i} for item in items_from_dataset(prompts) for i in range(config.images_per_prompt)]

    def stages(self, config: ViewsConfig):
        return [
            ReadParentRows(["category", "prompt", "base_prompt", "verb", "augmentation"]),
            TextToImage(config) if config.source == "diffusers" else ProceduralImage(config),
            Perceive(config.perception, config.perception_weights, config.perception_image_size,
                     config.perception_gpus),
            InteractionFilter(),
            KeepInteraction(),
            Calibrate(config.calibration, config.body_model, config.max_reprojection_error_px, config.fit_steps),
            EncodeView(),
        ]

    def demo_config(self, inputs: Path, execution: ExecutionConfig) -> ViewsConfig:
        return ViewsConfig(prompts="demo-chorus-prompts", images_per_prompt=1, defect_rate=0.15,
                           execution=execution, output={"dataset": "demo-chorus-views"})
