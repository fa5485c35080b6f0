"""Hand segmentation behind one interface: `HandSegmenter.masks(image) -> list of hand (+ forearm) masks`.

Backends:
- `provided`: the masks that came with the input (folders, HOI4D, HOGSA renders); never guesses.
- `mediapipe`: MediaPipe Tasks' hand landmarker with the user's `.task` file; the 21 landmarks become a
  hand + forearm mask (`mask_from_landmarks`).
- `detectron2`: any detectron2 instance-segmentation model of hands (e.g. a Mask R-CNN trained on EgoHands or
  100DOH) from a folder holding its `config.yaml` and `model.safetensors`; detectron2 has no wheels for current
  torch (build it: infra/Dockerfile WITH_DETECTRON2=true). Weights load through safetensors, never detectron2's
  pickle-based checkpointer.
The same segmenter doubles as the sanity filter's hand detector on the object-only image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hoi_factory.context import StageContext
from hoi_factory.optional import require
from hoi_factory.stage import MapStage, Reject, Resources, Row

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


class MediaPipeHands:
    """MediaPipe Tasks hand landmarker (IMAGE mode) from a `.task` model file the user supplies."""

    def __init__(self, model_path: str, max_hands: int = 2):
        if not model_path:
            raise ValueError("hand_segmentation=mediapipe needs hand_landmarker: the path of a MediaPipe "
                             "hand_landmarker.task file")
        if not Path(model_path).is_file():
            raise ValueError(f"hand_landmarker {model_path!r} is not a file")
        mediapipe = require("mediapipe", "hands", "MediaPipe hand segmentation")
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.HandLandmarkerOptions(base_options=BaseOptions(model_asset_path=model_path),
                                               num_hands=max_hands, running_mode=vision.RunningMode.IMAGE)
        self.landmarker = vision.HandLandmarker.create_from_options(options)
        self.mediapipe = mediapipe

    def masks(self, image: np.ndarray) -> list[np.ndarray]:
        height, width = image.shape[:2]
        found = self.landmarker.detect(self.mediapipe.Image(image_format=self.mediapipe.ImageFormat.SRGB,
                                                            data=np.ascontiguousarray(image)))
        return [mask_from_landmarks(np.array([[p.x * width, p.y * height] for p in hand]), width, height)
                for hand in found.hand_landmarks]


class Detectron2Hands:
    """A detectron2 hand segmenter: the instances of class `hand_class` scoring at least `min_score`."""

    def __init__(self, folder: str, device: str = "cpu", hand_class: int = 0, min_score: float = 0.5):
        root = Path(folder or "")
        for name in ("config.yaml", "model.safetensors"):
            if not (root / name).is_file():
                raise ValueError(f"hands=detectron2 needs hands.model: a folder with config.yaml and "
                                 f"model.safetensors; {str(root / name)!r} is not a file")
        require("detectron2", "detectron2", "detectron2 hand segmentation (build it: infra/Dockerfile "
                "WITH_DETECTRON2=true)")
        import safetensors.torch
        import torch
        from detectron2.config import get_cfg
        from detectron2.data import transforms
        from detectron2.modeling import build_model

        cfg = get_cfg()
        cfg.merge_from_file(str(root / "config.yaml"))
        cfg.MODEL.DEVICE = device
        self.model = build_model(cfg).eval()
        try:
            weights = safetensors.torch.load_file(str(root / "model.safetensors"), device=cfg.MODEL.DEVICE)
        except Exception as exc:  # safetensors raises its own error type for a damaged file
            raise ValueError(f"hands.model: {str(root / 'model.safetensors')!r} is not a readable safetensors "
                             f"file ({exc})") from None
        self.model.load_state_dict(weights)
        self.resize = transforms.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.bgr = cfg.INPUT.FORMAT == "BGR"
        self.hand_class, self.min_score, self.torch = hand_class, min_score, torch

    def masks(self, image: np.ndarray) -> list[np.ndarray]:
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image[:, :, ::-1] if self.bgr else image)
        tensor = self.torch.as_tensor(np.ascontiguousarray(resized).transpose(2, 0, 1).astype("float32"))
        with self.torch.no_grad():
            instances = self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"].to("cpu")
        keep = (instances.pred_classes == self.hand_class) & (instances.scores >= self.min_score)
        return list(instances.pred_masks[keep].numpy())


def make_segmenter(backend: str, model: str | None, device: str = "cpu"):
    """None for `provided`; `model` is the mediapipe `.task` file or the detectron2 folder, which runs on
    `device` (MediaPipe picks its own)."""
    if backend == "provided":
        return None
    if backend == "mediapipe":
        return MediaPipeHands(model or "")
    if backend == "detectron2":
        return Detectron2Hands(model or "", device)
    raise ValueError(f"unknown hand segmentation backend {backend!r} (provided, mediapipe, detectron2)")


def segmenter_resources(backend: str, gpus: float) -> Resources:
    """detectron2 runs on the GPUs it is given; `provided` and MediaPipe need none."""
    return Resources(num_cpus=1.0, num_gpus=gpus if backend == "detectron2" else 0.0)


class SegmentHands(MapStage):
    """`hand_mask_array`: the provided mask, or the union of the hands the segmenter finds."""

    batch_size = 8

    def __init__(self, backend: str, model: str | None, gpus: float = 0.0):
        self.backend, self.model = backend, model
        self.resources = segmenter_resources(backend, gpus)
        # `provided` only checks the loader's mask is there; a segmenter replaces it.
        self.needs = frozenset({"hand_mask_array"} if backend == "provided" else {"image_array"})
        self.makes = frozenset() if backend == "provided" else frozenset({"hand_mask_array"})

    def setup(self, context: StageContext) -> None:
        self.segmenter = make_segmenter(self.backend, self.model, context.device)

    def process_row(self, row: Row) -> Row | Reject:
        if self.segmenter is None:
            if row["hand_mask_array"] is None:
                return Reject.of(row, "no hand mask provided")
            return row
        masks = self.segmenter.masks(row["image_array"])
        if not masks:
            return Reject.of(row, "no hand found")
        return {**row, "hand_mask_array": np.logical_or.reduce(masks)}
