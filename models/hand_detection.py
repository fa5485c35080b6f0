"""Hand boxes and masks from a detector: what gives the Affordance Diffusion layout its palm when the input
carries no hand box.

- `keypoint_box`: the box of 2D hand keypoints, as the official preprocessing boxes HOI4D's hand keypoints
  (NVlabs/affordance_diffusion preprocess/generate_data.py `make_bbox`: min and max of `kps2D`, no padding; it
  truncates the corners to integers, here they stay sub-pixel). MediaPipe's 21 landmarks and HOGSA's projected
  MANO joints are boxed by it.
- `Detectron2HandDetector`: a detectron2 Mask R-CNN hand detector; each hand instance gives its mask and its box.
  `hand_detector_config` builds its config in code: the 100DOH hand detector (Shan et al. 2020; the detectron2
  port ddshan/hand_detector.d2, `faster_rcnn_X_101_32x8d_FPN_3x_100DOH.yaml`, whose model keys are those of the
  model zoo's COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml) with the zoo's Mask R-CNN head
  (COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml): the pipeline needs a hand mask as well as a
  box, and 100DOH itself has boxes only, so such weights are the user's (trained on hand masks). As in that
  port, ROI_HEADS.NUM_CLASSES stays at detectron2's default and the hand is class 0; hands score at least its
  demo's threshold, 0.7.
  Weights: a folder with `config.yaml` (a detectron2 config, read by detectron2's safe YAML loader) and
  `model.safetensors` (a state dict); detectron2's pickle checkpointer is never used (convert a trusted checkpoint
  once: load it into a model built from the config yourself and call `save_pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hoi_factory.optional import require

Box = tuple[float, float, float, float]
HAND_DETECTOR_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml"
HAND_CLASS = 0  # ddshan/hand_detector.d2 registers its hand-only 100DOH sets: the hand is the first class
MIN_SCORE = 0.7  # ddshan/hand_detector.d2 demo.py: ROI_HEADS.SCORE_THRESH_TEST = 0.7
PURPOSE = "detectron2 hand detection (the wheel from ../shared/wheels: `make install`)"


def keypoint_box(points: np.ndarray) -> Box:
    """(x0, y0, x1, y1): the box of (N, 2) keypoints (pixels), unpadded as the official code boxes them."""
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2 or not len(points):
        raise ValueError(f"keypoints must have shape (N, 2) with N > 0, got {points.shape}")
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    return (float(x0), float(y0), float(x1), float(y1))


@dataclass(frozen=True)
class DetectedHand:
    mask: np.ndarray  # (H, W) bool: the hand (+ forearm)
    box: Box  # x0, y0, x1, y1 (pixels): the hand, the layout's palm


class HandDetector:
    """Finds hands in an RGB uint8 image; `box_source` names its boxes in the rows (`hand_box_source`)."""

    box_source: str

    def hands(self, image: np.ndarray) -> list[DetectedHand]:
        raise NotImplementedError

    def masks(self, image: np.ndarray) -> list[np.ndarray]:
        return [hand.mask for hand in self.hands(image)]


def hand_detector_config(device: str = "cpu"):
    """The 100DOH-style Mask R-CNN X101-FPN hand detector's detectron2 config (see the module docstring), its
    models built on `device`."""
    require("detectron2", "detectron2", PURPOSE)
    from detectron2 import model_zoo

    cfg = model_zoo.get_config(HAND_DETECTOR_CONFIG)
    cfg.MODEL.WEIGHTS = ""  # an ImageNet backbone there: weights load apart, from safetensors
    cfg.MODEL.DEVICE = device
    return cfg


class Detectron2HandDetector(HandDetector):
    """The instances of class `hand_class` scoring at least `min_score`."""

    box_source = "detector"

    def __init__(self, cfg, model: torch.nn.Module, hand_class: int = HAND_CLASS, min_score: float = MIN_SCORE):
        if not cfg.MODEL.MASK_ON:
            raise ValueError("hands.model: its config.yaml is a box-only detector (MODEL.MASK_ON false); the hand "
                             "stage needs hand masks: a Mask R-CNN")
        self.cfg, self.model, self.hand_class, self.min_score = cfg, model.eval(), hand_class, min_score

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "cpu") -> Detectron2HandDetector:
        root = Path(folder or "")
        for name in ("config.yaml", "model.safetensors"):
            if not (root / name).is_file():
                raise ValueError(f"hands=detectron2 needs hands.model: a folder with config.yaml and "
                                 f"model.safetensors; {str(root / name)!r} is not a file")
        require("detectron2", "detectron2", PURPOSE)
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        try:
            weights = load_file(str(root / "model.safetensors"), device=device)
        except Exception as exc:  # safetensors raises its own error type for a damaged file
            raise ValueError(f"hands.model: {str(root / 'model.safetensors')!r} is not a readable safetensors "
                             f"file ({exc})") from None
        cfg = get_cfg()
        cfg.merge_from_file(str(root / "config.yaml"), allow_unsafe=False)  # detectron2's default would unsafe_load
        cfg.MODEL.DEVICE = device
        model = build_model(cfg)
        model.load_state_dict(weights)
        return cls(cfg, model)

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(self.cfg.dump())
        save_file({k: v.contiguous().cpu() for k, v in self.model.state_dict().items()}, folder / "model.safetensors")

    @torch.no_grad()
    def hands(self, image: np.ndarray) -> list[DetectedHand]:
        from models.detectron2_perception import Detectron2Perception

        inputs = Detectron2Perception._inputs(self.cfg, [image])  # DefaultPredictor's resize and channel order
        instances = self.model(inputs)[0]["instances"].to("cpu")
        keep = (instances.pred_classes == self.hand_class) & (instances.scores >= self.min_score)
        return [DetectedHand(mask, tuple(float(v) for v in box))
                for mask, box in zip(instances.pred_masks[keep].numpy(), instances.pred_boxes.tensor[keep].numpy())]
