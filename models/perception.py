"""Instance segmentation + person keypoints: torchvision's Mask R-CNN and Keypoint R-CNN behind one call.

`RCNNPerception.from_pretrained(weights)` takes `"torchvision"` (torchvision's COCO weights, fetched once
into TORCH_HOME by torchvision) or a folder holding `mask_rcnn.safetensors` and `keypoint_rcnn.safetensors`
(state dicts of the two torchvision models; `save_pretrained` writes one). torchvision is optional:
`pip install 'hoi-factory[vision]'`. Not models/pretrained.py's mixin: the weights are torchvision's own state
dicts of two torchvision models, not one model of ours.

Keypoint confidences are on a 0-1 scale, as the paper's 0.7 threshold expects (CHORUS thresholds HRNet heatmap
maxima, about 0-1). Keypoint R-CNN's own `keypoints_scores` are raw heatmap logits, unbounded, so they are
replaced by a calibrated one: Keypoint R-CNN is trained with a softmax over each 56 x 56 heatmap, so the softmax
is its probability of where the keypoint lies, and the confidence is that probability's mass within 2 cells of
the peak (a 5 x 5 window, about the footprint of HRNet's sigma-2 target Gaussian): near 1 for a sharp peak,
at most 25 / 3136 = 0.008 for a flat heatmap. The logits are read by a forward hook on the keypoint predictor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hoi_factory.optional import require

MASK_FILE, KEYPOINT_FILE = "mask_rcnn.safetensors", "keypoint_rcnn.safetensors"
MASK_THRESHOLD = 0.5
PEAK_RADIUS = 2  # heatmap cells around the peak whose probability counts toward a keypoint's confidence


@dataclass
class Detection:
    label: str
    score: float
    mask: np.ndarray  # (H, W) bool
    keypoints: np.ndarray | None = None  # (17, 3): x, y, confidence (people only)

    @property
    def box(self) -> tuple[float, float, float, float]:
        ys, xs = np.nonzero(self.mask)
        if len(xs) == 0:
            return (0.0, 0.0, 0.0, 0.0)
        return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def peak_probability(logits: torch.Tensor, radius: int = PEAK_RADIUS) -> torch.Tensor:
    """(N, K, H, W) heatmap logits -> (N, K) spatial-softmax probability within `radius` cells of each peak."""
    n, k, height, width = logits.shape
    flat = logits.reshape(n * k, height * width)
    probability = flat.softmax(-1).reshape(n * k, 1, height, width)
    side = 2 * radius + 1
    window = F.avg_pool2d(probability, side, stride=1, padding=radius, count_include_pad=True) * side**2
    peak = flat.argmax(-1, keepdim=True)
    return window.reshape(n * k, height * width).gather(1, peak).reshape(n, k)


def detections_from_outputs(masks: dict, keypoints: dict, categories: list[str],
                            min_score: float = 0.05) -> list[Detection]:
    """One image's Mask R-CNN and Keypoint R-CNN outputs -> detections; each person mask takes the keypoints
    of the keypoint detection whose box overlaps it most (IoU >= 0.5), else none."""
    from torchvision.ops import box_iou

    to_numpy = {key: value.detach().cpu().numpy() for key, value in masks.items()}
    people = {key: value.detach().cpu().numpy() for key, value in keypoints.items()}
    overlaps = box_iou(masks["boxes"].detach().cpu().float(), keypoints["boxes"].detach().cpu().float()).numpy()
    detections = []
    for i in np.nonzero(to_numpy["scores"] >= min_score)[0]:
        label = categories[int(to_numpy["labels"][i])]
        mask = to_numpy["masks"][i, 0] >= MASK_THRESHOLD
        points = None
        if label == "person" and len(people["boxes"]):
            overlap = overlaps[i]
            best = int(overlap.argmax())
            if overlap[best] >= 0.5:
                points = np.concatenate([people["keypoints"][best, :, :2],
                                         people["keypoints_scores"][best, :, None]], 1).astype(np.float32)
        detections.append(Detection(label, float(to_numpy["scores"][i]), mask, points))
    return detections


class RCNNPerception:
    """`perception(images)` -> per image a list of `Detection` (COCO labels, masks, person keypoints)."""

    def __init__(self, mask_model: torch.nn.Module, keypoint_model: torch.nn.Module, device: str = "cpu"):
        detection = require("torchvision.models.detection", "vision", "the torchvision perception backend")
        self.categories = detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
        self.device = torch.device(device)
        self.mask_model = mask_model.eval().to(self.device)
        self.keypoint_model = keypoint_model.eval().to(self.device)
        self._heatmaps: list[torch.Tensor] = []
        self.keypoint_model.roi_heads.keypoint_predictor.register_forward_hook(
            lambda module, inputs, output: self._heatmaps.append(output))

    @staticmethod
    def architectures(pretrained: bool = False, min_size: int = 800) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The two torchvision models; images are resized to `min_size` on their shorter side (800 in training)."""
        detection = require("torchvision.models.detection", "vision", "the torchvision perception backend")
        if pretrained:
            return (detection.maskrcnn_resnet50_fpn(weights="COCO_V1", min_size=min_size),
                    detection.keypointrcnn_resnet50_fpn(weights="COCO_V1", min_size=min_size))
        return (detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                                min_size=min_size),
                detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2,
                                                    num_keypoints=17, min_size=min_size))

    @classmethod
    def from_pretrained(cls, weights: str, device: str = "cpu", min_size: int = 800) -> RCNNPerception:
        if weights == "torchvision":
            return cls(*cls.architectures(pretrained=True, min_size=min_size), device=device)
        folder = Path(weights)
        missing = [name for name in (MASK_FILE, KEYPOINT_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"perception weights {weights!r}: expected 'torchvision' or a folder with "
                                    f"{MASK_FILE} and {KEYPOINT_FILE}; missing {', '.join(missing)}")
        mask_model, keypoint_model = cls.architectures(min_size=min_size)
        mask_model.load_state_dict(load_file(folder / MASK_FILE))
        keypoint_model.load_state_dict(load_file(folder / KEYPOINT_FILE))
        return cls(mask_model, keypoint_model, device)

    def save_pretrained(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in self.mask_model.state_dict().items()}, folder / MASK_FILE)
        save_file({k: v.contiguous().cpu() for k, v in self.keypoint_model.state_dict().items()},
                  folder / KEYPOINT_FILE)

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[list[Detection]]:
        tensors = [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255).to(self.device)
                   for image in images]
        masks, keypoints = self.mask_model(tensors), self.keypoints(tensors)
        return [detections_from_outputs(m, k, self.categories) for m, k in zip(masks, keypoints)]

    @torch.no_grad()
    def keypoints(self, tensors: list[torch.Tensor]) -> list[dict]:
        """Keypoint R-CNN's outputs with `keypoints_scores` replaced by the calibrated peak probabilities."""
        self._heatmaps.clear()
        outputs = self.keypoint_model(tensors)
        # One heatmap row per kept box, images in order (torchvision's RoIHeads runs the predictor on them).
        confidences = peak_probability(self._heatmaps.pop()).split([len(o["boxes"]) for o in outputs])
        return [{**o, "keypoints_scores": c} for o, c in zip(outputs, confidences)]
