"""The HO3Pairs pipeline: hand–object images -> hands segmented and inpainted away -> pixel-aligned pairs.

Stages: load (folder / HOI4D / video) -> hand masks -> object-centric square crop -> layout -> inpainting ->
SDEdit -> measure (hand residue, seam, quality vs. the true object-only view when known) -> sanity filter ->
encode. One work item per image (or sampled video frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator
from scipy import ndimage

from hoi_factory.codec import decode_image, decode_mask, encode_png
from hoi_factory.columns import column
from hoi_factory.config import ExecutionConfig, RunConfig, Variant
from hoi_factory.context import StageContext
from hoi_factory.parents import ReadParentRows
from hoi_factory.pipeline import Pipeline
from hoi_factory.report import stacked_rows
from hoi_factory.stage import MapStage, Row
from models.affordance.layout import LAYOUT_DESCRIPTION, LAYOUT_FRAME, LAYOUT_SIZE, MIN_SPLAT_IOU, splat_mask
from models.diffusion import Sampling
from tasks.ho3pairs.checks import HandRemoved, MeasureObjectImage
from tasks.ho3pairs.crop import HAND_BOX_SOURCES, PADDING, CropAroundInteraction, ExtractLayout
from tasks.ho3pairs.hands import SegmentHands
from tasks.ho3pairs.inpaint import NO_MODEL, InpaintHands, SDEdit
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

SD_INPAINTING = "stable-diffusion-v1-5/stable-diffusion-inpainting"
QUALITY_COLUMNS = ("psnr", "ssim", "psnr_inpainted", "psnr_sdedit", "hand_residue", "seam_score")


class FolderSource(Variant):
    """`images/`, with optional `hand_masks/`, `object_masks/`, `object_only/`, `classes.json`, `hand_boxes.json`."""

    kind: Literal["folder"] = "folder"
    object_class: str = Field("object", description="class (the inpainting prompt) of images classes.json does "
                              "not name")


class HOI4DSource(Variant):
    """HOI4D's `align_rgb/` frames and `2Dseg/mask/` colour masks; the class comes from the `C<k>` folder."""

    kind: Literal["hoi4d"] = "hoi4d"
    hand_colours: list[tuple[int, int, int]] = Field(
        default_factory=list, description="RGB colours of hand pixels in 2Dseg masks (your release's palette)")


class VideoSource(Variant):
    """Video files: no masks, so hands come from a detector."""

    kind: Literal["video"] = "video"
    frame_rate: float = Field(1.0, gt=0, le=120, description="frames sampled per second")
    object_class: str = Field("object", description="class (the inpainting prompt) of every frame")


class HOGSASource(Variant):
    """A `hogsa` dataset (`inputs` = name[/version]): exact masks and the true object-only view."""

    kind: Literal["hogsa"] = "hogsa"


class ProvidedMasks(Variant):
    """The masks that came with the input."""

    kind: Literal["provided"] = "provided"


class MediaPipeLandmarker(Variant):
    kind: Literal["mediapipe"] = "mediapipe"
    model: str = Field(..., description="path of a MediaPipe hand_landmarker.task file")


class Detectron2Segmenter(Variant):
    kind: Literal["detectron2"] = "detectron2"
    model: str = Field(..., description="folder with config.yaml and model.safetensors of a detectron2 Mask "
                       "R-CNN hand detector (models/hand_detection.py): hand masks, and boxes where the input has none")


class DiffusersInpainter(Variant):
    kind: Literal["diffusers"] = "diffusers"
    model: str = Field(SD_INPAINTING, description="a latent inpainting pipeline: hub id, folder or 'tiny'")


class RePaintInpainter(Variant):
    """RePaint resampling, as FusionNet inpaints."""

    kind: Literal["repaint"] = "repaint"
    model: str = Field(..., description="an unconditional pixel-space DDPM (DDPMPipeline layout): hub id, folder "
                       "or 'tiny'")
    jump_length: int = Field(10, ge=1, le=100, description="steps taken back per jump")
    resamples: int = Field(10, ge=1, le=100, description="times each jump is resampled")


class BiharmonicInpainter(Variant):
    """scikit-image's smooth fill: no model."""

    kind: Literal["biharmonic"] = "biharmonic"


class DiffusersSDEdit(Variant):
    kind: Literal["diffusers"] = "diffusers"
    model: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                       description="an image-to-image pipeline: hub id, folder or 'tiny'")
    strength: float = Field(0.05, ge=0.001, le=1, description="share of the diffusion process SDEdit noises to "
                            "(at least one of Stable Diffusion's 1000 training steps)")


class NoSDEdit(Variant):
    kind: Literal["none"] = "none"


class PairsConfig(RunConfig):
    source: FolderSource | HOI4DSource | VideoSource | HOGSASource = Field(
        default_factory=FolderSource, discriminator="kind", description="input layout (tasks/ho3pairs/sources.py)")
    inputs: str = Field(..., description="input folder (a path or s3:// URL); hogsa: the dataset (name[/version])")
    hands: ProvidedMasks | MediaPipeLandmarker | Detectron2Segmenter = Field(
        default_factory=ProvidedMasks, discriminator="kind",
        description="masks from the input, MediaPipe's hand landmarker, or a detectron2 segmenter")
    size: int = Field(256, ge=32, le=2048, description="side of the square crops, pixels")
    crop_padding: float = Field(PADDING, ge=0, le=5, description="crop side = (1 + 2 x padding) x the object "
                                "box's longer side, kept inside the frame")
    inpainter: DiffusersInpainter | RePaintInpainter | BiharmonicInpainter = Field(
        default_factory=DiffusersInpainter, discriminator="kind")
    sdedit: DiffusersSDEdit | NoSDEdit = Field(default_factory=DiffusersSDEdit, discriminator="kind")
    steps: int = Field(50, ge=1, le=1000, description="denoising steps (SDEdit runs them all below t = strength x T)")
    guidance_scale: float = Field(7.5, ge=0, le=50)
    gpus: float = Field(0.0, ge=0, le=8, description="GPUs per inpainting / SDEdit (and detectron2) worker")
    min_layout_iou: float = Field(MIN_SPLAT_IOU, ge=0, le=1, description="reject layouts whose splat overlaps "
                                  "the hand mask less (the paper: 0.5; MANO hands without forearm fit worse)")
    max_hand_residue: float = Field(0.5, ge=0, le=1, description="sanity filter: repainted pixels still hand-like")
    max_seam_score: float = Field(3.0, gt=0, description="sanity filter: boundary gradient / gradient elsewhere")

    @model_validator(mode="after")
    def _hands_for_the_source(self) -> PairsConfig:
        """Provided masks only exist where the source has them."""
        if isinstance(self.hands, ProvidedMasks):
            if isinstance(self.source, VideoSource):
                raise ValueError("videos carry no hand masks: use hands=mediapipe or hands=detectron2 with "
                                 "source=video")
            if isinstance(self.source, HOI4DSource) and not self.source.hand_colours:
                raise ValueError("source=hoi4d needs source.hand_colours: the RGB colours of hands in its 2Dseg "
                                 "masks")
        return self


def _png_or_null(array: np.ndarray | None) -> bytes | None:
    return None if array is None else encode_png(array)


class EncodePair(MapStage):
    batch_size = 32
    needs = frozenset({"image_array", "object_array", "hand_mask_array", "inpaint_mask_array"})
    makes = frozenset({"hoi_image", "object_image", "sdedit_image", "hand_mask", "inpaint_mask", "object_mask",
                       "true_object_image", "size"})

    def process_row(self, row: Row) -> Row:
        return {**row, "hoi_image": encode_png(row["image_array"]), "object_image": encode_png(row["object_array"]),
                "sdedit_image": _png_or_null(row.get("sdedit_array")),
                "hand_mask": encode_png(row["hand_mask_array"]),
                "inpaint_mask": encode_png(row["inpaint_mask_array"]),
                "object_mask": _png_or_null(row.get("object_mask_array")),
                "true_object_image": _png_or_null(row.get("object_only_array")),
                "size": row["image_array"].shape[0]}


def pair_strip(row: dict) -> bytes:
    """HOI | hand mask with the layout's splat outlined | object-only | SDEdit | truth (when there)."""
    hoi = decode_image(row["hoi_image"], "RGB")
    size = hoi.shape[0]
    mask = decode_mask(row["hand_mask"])
    splat = splat_mask(np.asarray(row["layout"]), size)
    overlay = hoi // 3
    overlay[mask] = [255, 255, 255]
    overlay[splat & ~ndimage.binary_erosion(splat)] = [255, 40, 40]
    panels = [hoi, overlay, decode_image(row["object_image"], "RGB")]
    panels += [decode_image(row[key], "RGB") for key in ("sdedit_image", "true_object_image") if row[key]]
    return encode_png(np.concatenate(panels, 1))


class PairsPipeline(Pipeline[PairsConfig]):
    name = "ho3pairs"
    description = "HO3Pairs: hand–object images -> object-only / HOI pairs with hand masks and layouts"
    config_class = PairsConfig
    schema = pa.schema([
        column("source", pa.string(), "the input kind: folder, hoi4d, video or hogsa"),
        column("frame_time", pa.float32(), "the frame's time in its video or sequence (null: a still image)",
               unit="seconds"),
        column("object_class", pa.string(), "the object's class: the inpainting prompt"),
        column("hoi_image", pa.binary(), "the hand-object image, cropped square around the object", encoding="png"),
        column("object_image", pa.binary(), "the same crop with the hand inpainted away", encoding="png"),
        column("sdedit_image", pa.binary(), "the object image after SDEdit (null: SDEdit off)", encoding="png"),
        column("hand_mask", pa.binary(), "the hand (and forearm) pixels of the crop", encoding="png-mask"),
        column("inpaint_mask", pa.binary(), "the repainted region: the hand mask grown by 7x7", encoding="png-mask"),
        column("object_mask", pa.binary(), "the object's pixels (null: the source has no object mask)",
               encoding="png-mask"),
        column("true_object_image", pa.binary(), "the true object-only view of the crop (null: unknown)",
               encoding="png"),
        column("size", pa.int32(), "side of the square crops", unit="pixels"),
        column("layout", pa.float32(), f"the {LAYOUT_DESCRIPTION}, from the hand mask", shape=(LAYOUT_SIZE,),
               frame=LAYOUT_FRAME),
        column("layout_iou", pa.float32(), "IoU of the layout's splat with the hand mask"),
        column("hand_box_source", pa.string(), "where the layout's hand box came from: "
               + "; ".join(f"{kind}: {meaning}" for kind, meaning in HAND_BOX_SOURCES.items())),
        column("crop_box", pa.float32(), "the crop in the source image: x0, y0, x1, y1", shape=(4,), unit="pixels",
               frame="source image (origin top left, y down)"),
        column("hand_residue", pa.float32(), "share of the repainted hand pixels that still look like the hand "
               "(NaN: not measurable)"),
        column("seam_score", pa.float32(), "gradient on the repainted region's outline over the gradient just "
               "outside it (>> 1: a seam)"),
        column("hands_detected", pa.int32(), "hands the segmenter finds in the object image (null: not checked)"),
        column("psnr", pa.float32(), "PSNR of the object image against the true one (NaN: no truth)", unit="dB"),
        column("ssim", pa.float32(), "SSIM of the object image against the true one (NaN: no truth)"),
        column("psnr_inpainted", pa.float32(), "PSNR inside the repainted region (NaN: no truth)", unit="dB"),
        column("psnr_sdedit", pa.float32(), "PSNR of the SDEdit image against the truth (NaN: no truth or no "
               "SDEdit)", unit="dB"),
    ])
    preview_column = "hoi_image"
    allow_non_finite = frozenset(QUALITY_COLUMNS) | {"frame_time"}  # NaN: not measurable for that sample
    item_keys = frozenset.intersection(*SOURCE_ITEM_KEYS.values()) | {"source"}  # what every source's items carry

    def planned_keys(self, config: PairsConfig) -> frozenset[str]:
        """Hogsa items point at parent rows, the other sources' at files."""
        return SOURCE_ITEM_KEYS[config.source.kind] | {"source"}

    def plan(self, config: PairsConfig, context: StageContext) -> list[dict]:
        options = context.storage_options(config.inputs)
        match config.source:
            case HOGSASource():
                items = plan_hogsa(context.datasets, config.inputs)
            case FolderSource(object_class=object_class):
                items = plan_folder(config.inputs, object_class, options)
            case HOI4DSource():
                items = plan_hoi4d(config.inputs, options)
            case VideoSource(frame_rate=frame_rate, object_class=object_class):
                items = plan_video(config.inputs, frame_rate, object_class, options)
        return [{**item, "source": config.source.kind} for item in items]

    def stages(self, config: PairsConfig):
        sampling = Sampling(config.steps, config.guidance_scale, config.size)
        source, hands, inpainter, sdedit = config.source, config.hands, config.inpainter, config.sdedit
        load = ([ReadParentRows(HOGSA_COLUMNS), LoadHOGSASample()] if isinstance(source, HOGSASource)
                else [LoadSample(source.kind, source.hand_colours if isinstance(source, HOI4DSource) else [])])
        segmenter = hands.kind, None if isinstance(hands, ProvidedMasks) else hands.model
        match inpainter:
            case RePaintInpainter():
                inpaint = InpaintHands("repaint", inpainter.model, sampling, config.gpus, inpainter.jump_length,
                                       inpainter.resamples)
            case DiffusersInpainter():
                inpaint = InpaintHands("diffusers", inpainter.model, sampling, config.gpus)
            case BiharmonicInpainter():
                inpaint = InpaintHands("biharmonic", "", sampling, config.gpus)
        edit = sdedit if isinstance(sdedit, DiffusersSDEdit) else DiffusersSDEdit(model=NO_MODEL)  # rows pass on
        return [
            *load,
            SegmentHands(*segmenter, config.gpus),
            CropAroundInteraction(config.size, config.crop_padding),
            ExtractLayout(config.min_layout_iou),
            inpaint,
            SDEdit(edit.model, edit.strength, sampling, config.gpus),
            MeasureObjectImage(*segmenter, config.gpus),
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
        return PairsConfig(inputs=str(inputs), inpainter="biharmonic", sdedit="none", size=128,
                           execution=execution, output={"dataset": "demo-ho3pairs"})

    def dataset_metrics(self, version) -> dict[str, float]:
        return version.column_means(list(QUALITY_COLUMNS))

    def report_pictures(self, version) -> dict[str, bytes]:
        rows = version.read_shard(0, ["hoi_image", "hand_mask", "object_image", "sdedit_image", "true_object_image",
                                      "layout", "input_id"]).to_pylist()[:8] if version.shards else []
        if not rows:
            return {}
        return {"pairs": stacked_rows([pair_strip(row) for row in rows])}
