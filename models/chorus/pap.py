"""Projective Average Precision (CHORUS Sec. 4.2), as the official `utils/evaluation.py` computes it.

Per test image: the posed occupancy field is projected into the image at short side 32 px (a pixel is predicted
at level `l` when a grid point with value >= l projects into it), for the 99 levels 0.01..0.99 in ascending
order. Pixel precision and recall against the object mask give, level by level,
    AP = sum_i (recall_{i-1} - recall_i) * max_{j < i} precision_j
- the running maximum covers the *previous* levels only and there is no sentinel level: a perfect binary
  field (every level predicts the mask) scores 0, a uniform field scores the mask's share of the image.
- "strict" gives no credit for a step into an empty prediction.
- "occlusion-aware" (the paper's human-occlusion-aware variant) ANDs prediction and target with the complement
  of the human region: the pixels the posed body's vertices project into.
A category's PAP is the mean over its test images whose target is not empty (the occlusion-aware means over those
whose target outside the human is not empty); how many images each mean covers is reported beside it (the paper
evaluates categories with >= 30 test images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)
EVAL_SHORT_SIDE = 32
VARIANTS = ("pap", "pap_strict", "pap_occlusion_aware", "pap_strict_occlusion_aware")


@dataclass(frozen=True)
class ImageAP:
    """One test image's AP in the four variants, and its target areas (0: the image does not count)."""

    ap: float
    ap_strict: float
    ap_occlusion_aware: float
    ap_strict_occlusion_aware: float
    target_area: int
    target_area_occlusion_aware: int


def level_masks(scores: np.ndarray) -> np.ndarray:
    """(levels, H, W): the pixels predicted at each level."""
    return scores[None] >= THRESHOLDS[:, None, None]


def precision_recall(predicted: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per level: precision and recall (0 over an empty denominator, as the official max(1, .)) and the
    predicted area."""
    area = predicted.sum((1, 2))
    hits = (predicted & target[None]).sum((1, 2))
    return hits / np.maximum(area, 1), hits / max(int(target.sum()), 1), area


def average_precision(precision: np.ndarray, recall: np.ndarray, predicted_area: np.ndarray) -> tuple[float, float]:
    """(vanilla, strict) AP over levels in ascending order; recall never grows from one level to the next."""
    previous_best = np.maximum.accumulate(precision)[:-1]  # max over the levels before each step
    width = recall[:-1] - recall[1:]
    steps = width * previous_best
    return float(steps.sum()), float(steps[predicted_area[1:] > 0].sum())


def image_ap(scores: np.ndarray, target: np.ndarray, human: np.ndarray) -> ImageAP:
    """AP of one image: `scores` (H, W) the projected field, `target` the object mask, `human` the human region."""
    target, outside = target.astype(bool), ~human.astype(bool)
    predicted = level_masks(scores)
    ap, ap_strict = average_precision(*precision_recall(predicted, target))
    hoa, hoa_strict = average_precision(*precision_recall(predicted & outside[None], target & outside))
    return ImageAP(ap, ap_strict, hoa, hoa_strict, int(target.sum()), int((target & outside).sum()))


def mean_pap(images: list[ImageAP]) -> dict[str, float | int]:
    """The four means over the images that count, with `num_images` / `num_images_occlusion_aware` behind them;
    NaN where no image counts (not measured)."""
    counted = [r for r in images if r.target_area > 0]
    counted_hoa = [r for r in counted if r.target_area_occlusion_aware > 0]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else math.nan

    return {"pap": mean([r.ap for r in counted]), "pap_strict": mean([r.ap_strict for r in counted]),
            "pap_occlusion_aware": mean([r.ap_occlusion_aware for r in counted_hoa]),
            "pap_strict_occlusion_aware": mean([r.ap_strict_occlusion_aware for r in counted_hoa]),
            "num_images": len(counted), "num_images_occlusion_aware": len(counted_hoa)}


def project_hits(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, width: int, height: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(flat pixel index, index into `points`) of the points in front of the camera that land in the image."""
    cam = points @ R.T + t
    front = np.flatnonzero(cam[:, 2] > 1e-6)
    pixels = cam[front] @ K.T
    u = np.floor(pixels[:, 0] / pixels[:, 2]).astype(np.int64)
    v = np.floor(pixels[:, 1] / pixels[:, 2]).astype(np.int64)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return v[inside] * width + u[inside], front[inside]


def project_max(points: np.ndarray, values: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray,
                width: int, height: int) -> np.ndarray:
    """Render a point-sampled field: per pixel, the largest value among the points that project into it."""
    pixel, index = project_hits(points, K, R, t, width, height)
    image = np.zeros(height * width)
    np.maximum.at(image, pixel, values[index])
    return image.reshape(height, width)


def project_region(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, width: int, height: int
                   ) -> np.ndarray:
    """The pixels any of `points` projects into (the human region: the posed body's vertices)."""
    image = np.zeros(height * width, dtype=bool)
    image[project_hits(points, K, R, t, width, height)[0]] = True
    return image.reshape(height, width)


def eval_size(width: int, height: int) -> tuple[int, int, float]:
    """(width, height, scale) of the evaluation image: short side 32 px, the long side truncated, as the official
    code; the camera's K scales by `scale` on both axes."""
    scale = EVAL_SHORT_SIDE / min(width, height)
    return (int(width * scale) if width > height else EVAL_SHORT_SIDE,
            int(height * scale) if height > width else EVAL_SHORT_SIDE, scale)
