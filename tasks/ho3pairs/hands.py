"""Hand segmentation behind one interface (models/hand_detection.py `HandDetector`): `hands(image)` -> per
hand its mask (hand + forearm) and its box (the hand alone: the layout's palm); `masks(image)` the masks alone.

Backends:
- `provided`: the masks that came with the input (folders, HOI4D, HOGSA renders); never guesses.
- `mediapipe`: MediaPipe Tasks' hand landmarker with the user's `.task` file; the 21 landmarks become a
  hand + forearm mask (`mask_from_landmarks`) and their box (`keypoint_box`, as the official code boxes hand
  keypoints).
- `detectron2`: a detectron2 Mask R-CNN of hands (models/hand_detection.py: the 100DOH-style config, a folder
  holding `config.yaml` and `model.safetensors`); each hand instance's mask and box. Weights load through
  safetensors, never detectron2's pickle-based checkpointer.
Where the input gives no hand box, `SegmentHands` takes the box of the largest hand found (most mask pixels, as
the HOGSA loader picks its hand); where it gives one, that box stays. The same segmenter doubles as the sanity
filter's hand detector on the object-only image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hoi_factory.context import StageContext
from hoi_factory.optional import require
from hoi_factory.stage import MapStage, Reject, Resources, Row
from models.hand_detection import DetectedHand, Detectron2HandDetector, HandDetector, keypoint_box

WRIST, MIDDLE_MCP = 0, 9
FOREARM_LENGTH = 2.5  # in wrist-to-middle-knuckle lengths, pointing away from the fingers
FOREARM_WIDTH = 0.9  # same unit


def mask_from_landmarks(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """21 hand landmarks (pixels, MediaPipe order) -> a hand + forearm mask: the landmarks' convex hull,
    grown by a finger's width, plus a forearm quad from the wrist away from the middle knuckle."""
    points = np.asarray(landmarks, dtype=float)[:, :2]
    palm = points[MIDDLE_MCP] - points[WRIST]
    length = float(np.linalg.norm(palm))
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if length < 1e-6:
        return np.zeros((height, width), dtype=bool)
    from scipy.spatial import ConvexHull

    hull = points[ConvexHull(points).vertices]
    draw.polygon([tuple(p) for p in hull], fill=255)
    finger = max(1, round(0.25 * length))
    for p in hull:  # round the outline out by about a finger's width
        draw.ellipse((p[0] - finger, p[1] - finger, p[0] + finger, p[1] + finger), fill=255)
    along, across = -palm / length, np.array([palm[1], -palm[0]]) / length
    half = 0.5 * FOREARM_WIDTH * length * across
    start, end = points[WRIST], points[WRIST] + FOREARM_LENGTH * length * along
    draw.polygon([tuple(start + half), tuple(end + half), tuple(end - half), tuple(start - half)], fill=255)
    return np.asarray(canvas) > 0


def hand_from_landmarks(landmarks: np.ndarray, width: int, height: int) -> DetectedHand:
    """21 hand landmarks (pixels, MediaPipe order) -> the hand + forearm mask and the landmarks' box, as the
    official code boxes hand keypoints."""
    points = np.asarray(landmarks, dtype=float)[:, :2]
    return DetectedHand(mask_from_landmarks(points, width, height), keypoint_box(points))


class MediaPipeHands(HandDetector):
    """MediaPipe Tasks hand landmarker (IMAGE mode) from a `.task` model file the user supplies."""

    box_source = "landmarks"

    def __init__(self, model_path: str, max_hands: int = 2):
        if not model_path:
            raise ValueError("hands=mediapipe needs hands.model: the path of a MediaPipe hand_landmarker.task file")
        if not Path(model_path).is_file():
            raise ValueError(f"hands.model: the MediaPipe hand_landmarker {model_path!r} is not a file")
        mediapipe = require("mediapipe", "hands", "MediaPipe hand segmentation")
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.HandLandmarkerOptions(base_options=BaseOptions(model_asset_path=model_path),
                                               num_hands=max_hands, running_mode=vision.RunningMode.IMAGE)
        self.landmarker = vision.HandLandmarker.create_from_options(options)
        self.mediapipe = mediapipe

    def hands(self, image: np.ndarray) -> list[DetectedHand]:
        height, width = image.shape[:2]
        found = self.landmarker.detect(self.mediapipe.Image(image_format=self.mediapipe.ImageFormat.SRGB,
                                                            data=np.ascontiguousarray(image)))
        return [hand_from_landmarks(np.array([[p.x * width, p.y * height] for p in hand]), width, height)
                for hand in found.hand_landmarks]


def make_segmenter(backend: str, model: str | None, device: str = "cpu") -> HandDetector | None:
    """None for `provided`; `model` is the mediapipe `.task` file or the detectron2 folder, which runs on
    `device` (MediaPipe picks its own)."""
    if backend == "provided":
        return None
    if backend == "mediapipe":
        return MediaPipeHands(model or "")
    if backend == "detectron2":
        return Detectron2HandDetector.from_pretrained(model or "", device)
    raise ValueError(f"unknown hand segmentation backend {backend!r} (provided, mediapipe, detectron2)")


def segmenter_resources(backend: str, gpus: float) -> Resources:
    """detectron2 runs on the GPUs it is given; `provided` and MediaPipe need none."""
    return Resources(num_cpus=1.0, num_gpus=gpus if backend == "detectron2" else 0.0)


class SegmentHands(MapStage):
    """`hand_mask_array`: the provided mask, or the union of the hands the segmenter finds; a segmenter also
    gives the rows without a hand box one (`hand_box`, `hand_box_source`: its detector's name)."""

    batch_size = 8

    def __init__(self, backend: str, model: str | None, gpus: float = 0.0):
        self.backend, self.model = backend, model
        self.resources = segmenter_resources(backend, gpus)
        # `provided` only checks the loader's mask is there; a segmenter replaces it.
        self.needs = frozenset({"hand_mask_array"} if backend == "provided" else {"image_array"})
        self.makes = frozenset() if backend == "provided" else \
            frozenset({"hand_mask_array", "hand_box", "hand_box_source"})

    def setup(self, context: StageContext) -> None:
        self.segmenter = make_segmenter(self.backend, self.model, context.device)

    def process_row(self, row: Row) -> Row | Reject:
        if self.segmenter is None:
            if row["hand_mask_array"] is None:
                return Reject.of(row, "no hand mask provided")
            return row
        hands = self.segmenter.hands(row["image_array"])
        if not hands:
            return Reject.of(row, "no hand found")
        found = {"hand_mask_array": np.logical_or.reduce([hand.mask for hand in hands])}
        if row.get("hand_box") is None:
            largest = max(hands, key=lambda hand: hand.mask.sum())
            found |= {"hand_box": list(largest.box), "hand_box_source": self.segmenter.box_source}
        return {**row, **found}
