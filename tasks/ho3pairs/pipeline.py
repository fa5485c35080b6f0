"""The HO3Pairs pipeline: hand–object images -> hands segmented and inpainted away -> pixel-aligned pairs.

Stages: load (folder / HOI4D / video) -> hand masks -> object-centric square crop -> layout -> inpainting ->
SDEdit -> measure (hand residue, seam, quality vs. the true object-only view when known) -> sanity filter ->
encode. One work item per image (or sampled video frame).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field, model_validator
from scipy import ndimage

from hoi_factory.config import ExecutionConfig, RunConfig
from hoi_factory.context import StageContext
from hoi_factory.parents import ReadParentRows
from hoi_factory.pipeline import Pipeline
from hoi_factory.report import stacked_rows
from hoi_factory.stage import MapStage, Row
from models.affordance.layout import MIN_SPLAT_IOU, splat_mask
from models.diffusion import Sampling
from tasks.ho3pairs.checks import HandRemoved, MeasureObjectImage
from tasks.ho3pairs.crop import PADDING, CropAroundInteraction, ExtractLayout
from tasks.ho3pairs.hands import SegmentHands
from tasks.ho3pairs.inpaint import InpaintHands, SDEdit
from tasks.ho3pairs.sources import (
    HOGSA_COLUMNS,
    SOURCE_ITEM_KEYS,
    LoadHOGSASample,
    LoadSample,
    plan_folder,
    plan_hogsa,
    plan_hoi4d,
    plan_video,
)
from tasks.images.stages import png_bytes

f32 = pa.list_(pa.float32())
SD_INPAINTING = "stable-diffusion-v1-5/stable-diffusion-inpainting"
QUALITY_COLUMNS = ("psnr", "ssim", "psnr_inpainted", "psnr_sdedit", "hand_residue", "seam_score")


class PairsConfig(RunConfig):
    source: Literal["folder", "hoi4d", "video", "hogsa"] = Field("folder", description="input layout "
                                                                  "(tasks/ho3pairs/sources.py)")
    inputs: str = Field(..., description="input folder (a path or s3:// URL); hogsa: the dataset (name[/version])")
    object_class: str = Field("object", description="class name (the inpainting prompt) when the input has none")
    frame_rate: float = Field(1.0, gt=0, le=120, description="video: frames sampled per second")
    hoi4d_hand_colours: list[tuple[int, int, int]] = Field(
        default_factory=list, description="hoi4d: RGB colours of hand pixels in 2Dseg masks (your release's palette)")
    hand_segmentation: Literal["provided", "mediapipe", "detectron2"] = Field(
        "provided", description="masks from the input, MediaPipe's hand landmarker, or a detectron2 segmenter")
    hand_landmarker: str | None = Field(None, description="mediapipe: path of a hand_landmarker.task file")
    detectron2_hand_model: str | None = Field(None, description="detectron2: folder with config.yaml and "
                                              "model.safetensors of a hand instance-segmentation model")
    size: int = Field(256, ge=32, le=2048, description="side of the square crops, pixels")
    crop_padding: float = Field(PADDING, ge=0, le=5, description="crop side = (1 + padding) x hand+object box")
    inpainter: Literal["diffusers", "repaint", "biharmonic"] = Field("diffusers")
    inpainting_model: str = Field(SD_INPAINTING, description="diffusers: an inpainting pipeline; repaint: an "
                                  "unconditional DDPM (DDPMPipeline layout); hub id, folder or 'tiny'")
    repaint_jump_length: int = Field(10, ge=1, le=100, description="repaint: steps taken back per jump")
    repaint_resamples: int = Field(10, ge=1, le=100, description="repaint: times each jump is resampled")
    sdedit_model: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                              description="diffusers image-to-image pipeline: hub id, folder, 'tiny' or 'none'")
    steps: int = Field(50, ge=1, le=1000, description="denoising steps (SDEdit runs strength x steps of them)")
    guidance_scale: float = Field(7.5, ge=0, le=50)
    sdedit_strength: float = Field(0.05, gt=0, le=1, description="share of the diffusion process SDEdit noises to")
    gpus: float = Field(0.0, ge=0, le=8, description="GPUs per inpainting / SDEdit (and detectron2) worker")
    min_layout_iou: float = Field(MIN_SPLAT_IOU, ge=0, le=1, description="reject layouts whose splat overlaps "
                                  "the hand mask less (the paper: 0.5; MANO hands without forearm fit worse)")
    max_hand_residue: float = Field(0.5, ge=0, le=1, description="sanity filter: repainted pixels still hand-like")
    max_seam_score: float = Field(3.0, gt=0, description="sanity filter: boundary gradient / gradient elsewhere")

    @property
    def segmenter_model(self) -> str | None:
        return self.detectron2_hand_model if self.hand_segmentation == "detectron2" else self.hand_landmarker

    @model_validator(mode="after")
    def _consistent(self) -> PairsConfig:
        if self.source == "video" and self.hand_segmentation == "provided":
            raise ValueError("videos carry no hand masks: use hand_segmentation=mediapipe or detectron2 with "
                             "source=video")
        if self.inpainter == "repaint" and self.inpainting_model == SD_INPAINTING:
            raise ValueError("inpainter=repaint needs inpainting_model: an unconditional pixel-space DDPM "
                             "(hub id or folder in the DDPMPipeline layout), not a latent inpainting pipeline")
        if self.source == "hoi4d" and self.hand_segmentation == "provided" and not self.hoi4d_hand_colours:
            raise ValueError("source=hoi4d needs hoi4d_hand_colours: the RGB colours of hands in its 2Dseg masks")
        return self


def _png_or_empty(array: np.ndarray | None) -> bytes:
    return b"" if array is None else png_bytes(array.astype(np.uint8) * 255 if array.dtype == bool else array)


class EncodePair(MapStage):
    batch_size = 32
    needs = frozenset({"image_array", "object_array", "hand_mask_array", "inpaint_mask_array"})
    makes = frozenset({"hoi_image", "object_image", "sdedit_image", "hand_mask", "inpaint_mask", "object_mask",
                       "true_object_image", "size"})

    def process_row(self, row: Row) -> Row:
        return {**row, "hoi_image": png_bytes(row["image_array"]), "object_image": png_bytes(row["object_array"]),
                "sdedit_image": _png_or_empty(row.get("sdedit_array")),
                "hand_mask": _png_or_empty(row["hand_mask_array"]),
                "inpaint_mask": _png_or_empty(row["inpaint_mask_array"]),
                "object_mask": _png_or_empty(row.get("object_mask_array")),
                "true_object_image": _png_or_empty(row.get("object_only_array")),
                "size": row["image_array"].shape[0]}


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def pair_strip(row: dict) -> bytes:
    """HOI | hand mask with the layout's splat outlined | object-only | SDEdit | truth (when there)."""
    hoi = _decode(row["hoi_image"])
    size = hoi.shape[0]
    mask = _decode(row["hand_mask"])[..., 0] > 127
    splat = splat_mask(np.asarray(row["layout"]), size)
    overlay = hoi // 3
    overlay[mask] = [255, 255, 255]
    overlay[splat & ~ndimage.binary_erosion(splat)] = [255, 40, 40]
    panels = [hoi, overlay, _decode(row["object_image"])]
    panels += [_decode(row[key]) for key in ("sdedit_image", "true_object_image") if row[key]]
    return png_bytes(np.concatenate(panels, 1))


class PairsPipeline(Pipeline[PairsConfig]):
    name = "ho3pairs"
    description = "HO3Pairs: hand–object images -> object-only / HOI pairs with hand masks and layouts"
    config_class = PairsConfig
    schema = pa.schema([
        ("source", pa.string()), ("frame_time", pa.float32()), ("object_class", pa.string()),
        ("hoi_image", pa.binary()), ("object_image", pa.binary()), ("sdedit_image", pa.binary()),
        ("hand_mask", pa.binary()), ("inpaint_mask", pa.binary()), ("object_mask", pa.binary()),
        ("true_object_image", pa.binary()), ("size", pa.int32()), ("layout", f32), ("layout_iou", pa.float32()),
        ("crop_box", f32), ("hand_residue", pa.float32()), ("seam_score", pa.float32()),
        ("hands_detected", pa.int32()), ("psnr", pa.float32()), ("ssim", pa.float32()),
        ("psnr_inpainted", pa.float32()), ("psnr_sdedit", pa.float32()),
    ])
    preview_column = "hoi_image"
    allow_non_finite = frozenset(QUALITY_COLUMNS) | {"frame_time"}  # NaN: not measurable for that sample
    item_keys = frozenset.intersection(*SOURCE_ITEM_KEYS.values()) | {"source"}  # what every source's items carry

    def planned_keys(self, config: PairsConfig) -> frozenset[str]:
        """Hogsa items point at parent rows, the other sources' at files."""
        return SOURCE_ITEM_KEYS[config.source] | {"source"}

    def plan(self, config: PairsConfig, context: StageContext) -> list[dict]:
        options = context.storage_options(config.inputs)
        if config.source == "hogsa":
            items = plan_hogsa(context.datasets, config.inputs)
        elif config.source == "folder":
            items = plan_folder(config.inputs, config.object_class, options)
        elif config.source == "hoi4d":
            items = plan_hoi4d(config.inputs, options)
        else:
            items = plan_video(config.inputs, config.frame_rate, config.object_class, options)
        return [{**item, "source": config.source} for item in items]

    def stages(self, config: PairsConfig):
        sampling = Sampling(config.steps, config.guidance_scale, config.size)
        load = ([ReadParentRows(HOGSA_COLUMNS), LoadHOGSASample()] if config.source == "hogsa"
                else [LoadSample(config.source, config.hoi4d_hand_colours)])
        return [
            *load,
            SegmentHands(config.hand_segmentation, config.segmenter_model, config.gpus),
            CropAroundInteraction(config.size, config.crop_padding),
            ExtractLayout(config.min_layout_iou),
            InpaintHands(config.inpainter, config.inpainting_model, sampling, config.gpus, config.repaint_jump_length,
                         config.repaint_resamples),
            SDEdit(config.sdedit_model, config.sdedit_strength, sampling, config.gpus),
            MeasureObjectImage(config.hand_segmentation, config.segmenter_model, config.gpus),
            HandRemoved(config.max_hand_residue, config.max_seam_score),
            EncodePair(),
        ]

    def demo_config(self, inputs: Path, execution: ExecutionConfig) -> PairsConfig:
        from tasks.procedural.hand_object import write_hand_object_folder

        # Stand-in single-hand scenes with a forearm, as the layout assumes, each with its true object-only view
        # (HOGSA's renders are bimanual MANO hands without forearms: `source=hogsa min_layout_iou=...`). No real
        # diffusion weights offline: the smooth biharmonic fill, and no SDEdit (the tiny random-weight models give
        # noise; the tests run them).
        write_hand_object_folder(inputs, count=24, seed=0)
        return PairsConfig(inputs=str(inputs), inpainter="biharmonic", sdedit_model="none", size=128,
                           execution=execution, output={"dataset": "demo-ho3pairs"})

    def dataset_metrics(self, version) -> dict[str, float]:
        return version.column_means(list(QUALITY_COLUMNS))

    def report_pictures(self, version) -> dict[str, bytes]:
        rows = version.read_shard(0, ["hoi_image", "hand_mask", "object_image", "sdedit_image", "true_object_image",
                                      "layout", "input_id"]).to_pylist()[:8] if version.manifest.shards else []
        if not rows:
            return {}
        return {"pairs": stacked_rows([pair_strip(row) for row in rows])}
