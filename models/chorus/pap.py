"""Projective Average Precision (CHORUS Sec. 4.2): how well a posed occupancy field, projected into an
image, predicts the object's pixels.

Per image: occupancy values are projected (max per pixel) at short side 32 px; at each threshold
0.01..0.99 pixel precision and recall against the true object mask are taken, plus a sentinel level
where nothing is predicted. AP = sum over levels in ascending order of
(recall_prev - recall) * running-max precision. An empty prediction has precision 1 (vanilla) or
0 (strict). The occlusion-aware variant ignores pixels inside the projected human. PAP is the mean AP
over images.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)
EVAL_SHORT_SIDE = 32


def precision_recall(scores: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None,
                     strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel precision and recall at each threshold (and the empty sentinel level last)."""
    keep = np.ones_like(truth, dtype=bool) if ignore is None else ~ignore
    scores, truth = scores[keep], truth[keep].astype(bool)
    predicted = scores[None, :] >= THRESHOLDS[:, None]
    predicted = np.concatenate([predicted, np.zeros((1, len(scores)), dtype=bool)])
    true_positive = (predicted & truth[None]).sum(1)
    count = predicted.sum(1)
    empty_precision = 0.0 if strict else 1.0
    precision = np.where(count > 0, true_positive / np.maximum(count, 1), empty_precision)
    recall = true_positive / max(truth.sum(), 1)
    return precision, recall


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    ap, running_max, recall_prev = 0.0, 0.0, recall[0]
    for p, r in zip(precision, recall):
        running_max = max(running_max, p)
        ap += (recall_prev - r) * running_max
        recall_prev = r
    return float(ap)


def image_ap(scores: np.ndarray, truth: np.ndarray, human: np.ndarray | None = None) -> dict[str, float]:
    """AP of one image in the three variants."""
    return {
        "ap": average_precision(*precision_recall(scores, truth)),
        "ap_strict": average_precision(*precision_recall(scores, truth, strict=True)),
        "ap_occlusion_aware": average_precision(*precision_recall(scores, truth, ignore=human)),
    }


def project_max(points: np.ndarray, values: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray,
                width: int, height: int) -> np.ndarray:
    """Render a point-sampled field: per pixel, the largest value among the points that project into it."""
    cam = points @ R.T + t
    front = cam[:, 2] > 1e-6
    pixels = cam[front] @ K.T
    u = np.floor(pixels[:, 0] / pixels[:, 2]).astype(np.int64)
    v = np.floor(pixels[:, 1] / pixels[:, 2]).astype(np.int64)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    image = np.zeros(height * width)
    np.maximum.at(image, v[inside] * width + u[inside], values[front][inside])
    return image.reshape(height, width)


def eval_size(width: int, height: int) -> tuple[int, int]:
    scale = EVAL_SHORT_SIDE / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))
