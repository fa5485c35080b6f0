"""The object-centric square crop, as the official Affordance Diffusion preprocessing cuts it, and the layout
extracted from it.

The official rule (NVlabs/affordance_diffusion preprocess/dataset.py): a square around the *object* mask's box,
its side (1 + 2 x 0.8) = 2.6 x the box's longer side; clipped to the frame; squared again around the clipped
box's centre (its longer side) and clipped again; then shrunk to its shorter side around its centre. So the crop
never reaches past the image (no black border): near an edge it moves inward and shrinks. Deviations: pixel
edges (a box spans [x0, x1), the frame [0, W]) where the official uses inclusive pixel indices (one pixel);
without an object mask (videos, folders without object_masks/) the hand mask's box stands in for the object's;
an object that no square inside the frame holds is rejected (the official crops it through).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from hoi_factory.stage import MapStage, Reject, Row
from models.affordance.layout import layout_from_mask

PADDING = 0.8  # the official pad: the square reaches 0.8 x the object box's longer side past it on each side
# Where a row's hand box (the layout's palm) came from: its `hand_box_source`.
HAND_BOX_SOURCES = {
    "provided": "the input folder's hand_boxes.json",
    "mask": "the box of HOI4D's hand-only mask (frames without hand keypoints)",
    "keypoints": "the box of 2D hand keypoints: HOI4D's kps2D (the official rule) or HOGSA's projected MANO joints",
    "landmarks": "the box of MediaPipe's 21 hand landmarks",
    "detector": "the detectron2 hand detector's box of the hand instance",
    "fallback": "no box: the palm found in the hand mask itself (models/affordance/layout.py)",
}

Box = tuple[float, float, float, float]


def mask_box(mask: np.ndarray) -> Box | None:
    """(x0, y0, x1, y1): the pixel-edge box of the mask's pixels; None when it is empty."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    return (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


def _square(box: Box, half: float) -> Box:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return (cx - half, cy - half, cx + half, cy + half)


def _clip(box: Box, width: int, height: int) -> Box:
    return (max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height)))


def object_crop_box(object_box: Box, width: int, height: int, padding: float = PADDING) -> Box:
    """The official square crop around `object_box` in a width x height frame (see the module docstring)."""
    longer = max(object_box[2] - object_box[0], object_box[3] - object_box[1])
    clipped = _clip(_square(object_box, (1 + 2 * padding) * longer / 2), width, height)
    halves = ((clipped[2] - clipped[0]) / 2, (clipped[3] - clipped[1]) / 2)
    clipped = _clip(_square(clipped, max(halves)), width, height)
    halves = ((clipped[2] - clipped[0]) / 2, (clipped[3] - clipped[1]) / 2)
    return _square(clipped, min(halves))


def holds(outer: Box, inner: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def crop_resize(array: np.ndarray, box: Box, size: int, nearest: bool) -> np.ndarray:
    """Cut `box` (inside the image) out of `array` and resize it to size x size."""
    image = Image.fromarray(array.astype(np.uint8) * (255 if array.dtype == bool else 1))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    cropped = np.asarray(image.resize((size, size), resample, box=box))
    return cropped > 127 if array.dtype == bool else cropped


class CropAroundInteraction(MapStage):
    """Crops the image, the masks and the true object-only view (if any) to the same square, the official
    crop around the object (the hand's box without an object mask)."""

    batch_size = 16
    needs = frozenset({"image_array", "hand_mask_array"})
    makes = frozenset({"image_array", "hand_mask_array", "crop_box", "hand_box_crop"})
    thumbnail_key = "image_array"

    def __init__(self, size: int, padding: float = PADDING):
        self.size, self.padding = size, padding

    def process_row(self, row: Row) -> Row | Reject:
        if mask_box(row["hand_mask_array"]) is None:
            return Reject.of(row, "empty hand mask")
        has_object = row.get("object_mask_array") is not None
        target = mask_box(row["object_mask_array"] if has_object else row["hand_mask_array"])
        if target is None:
            return Reject.of(row, "empty object mask")
        height, width = row["hand_mask_array"].shape
        box = object_crop_box(target, width, height, self.padding)
        if not holds(box, target):
            return Reject.of(row, "object does not fit a square crop inside the frame",
                             f"{'object' if has_object else 'hand'} box {target} in {width}x{height}")
        cropped = {"crop_box": list(box), "hand_box_crop": None}
        if row.get("hand_box"):
            scale = self.size / (box[2] - box[0])
            cropped["hand_box_crop"] = [(v - box[i % 2]) * scale for i, v in enumerate(row["hand_box"])]
        for key in ("image_array", "object_only_array"):
            if row.get(key) is not None:
                cropped[key] = crop_resize(row[key], box, self.size, nearest=False)
        for key in ("hand_mask_array", "object_mask_array"):
            if row.get(key) is not None:
                cropped[key] = crop_resize(row[key], box, self.size, nearest=True)
        return {**row, **cropped}


class ExtractLayout(MapStage):
    """The 5-parameter layout of the (cropped) hand mask and hand box (if known), and where that box came from
    (`hand_box_source`: `fallback` without one); no layout (too few pixels, poor fit) rejects."""

    batch_size = 32
    needs = frozenset({"hand_mask_array"})
    makes = frozenset({"layout", "layout_iou", "hand_box_source"})

    def __init__(self, min_iou: float):
        self.min_iou = min_iou

    def process_row(self, row: Row) -> Row | Reject:
        extraction = layout_from_mask(row["hand_mask_array"], row.get("hand_box_crop"), self.min_iou,
                                      row.get("object_mask_array"))
        if extraction.layout is None:
            return Reject.of(row, extraction.reason, f"splat IoU {extraction.iou:.2f}")
        source = row.get("hand_box_source") if row.get("hand_box_crop") is not None else "fallback"
        return {**row, "layout": extraction.layout.tolist(), "layout_iou": extraction.iou, "hand_box_source": source}
