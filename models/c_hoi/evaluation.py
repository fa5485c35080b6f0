"""mAP_role (V-COCO) = mAP_rel (HOIW): a detected <human, verb, object> is a true positive when the verb is
right and both the human and the object box overlap an unmatched ground-truth pair with IoU >= 0.5; a
ground truth without a role object (occluded, out of frame) is matched by a detection without one. AP per verb
is the area under the VOC all-points interpolated precision-recall curve; mAP_role averages the verbs that
have ground truth."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLD = 0.5
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class Triplet:
    image_id: str
    verb: str
    human: Box
    object: Box | None  # None: the role has no object
    score: float = 1.0  # detections only


def box_iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _role_matches(detected: Box | None, truth: Box | None) -> bool:
    if truth is None or detected is None:
        return truth is None and detected is None
    return box_iou(detected, truth) >= IOU_THRESHOLD


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-points AP: precision made monotone from the right, integrated over recall."""
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def role_ap(detections: list[Triplet], truths: list[Triplet]) -> float:
    """AP of one verb: detections and ground truths of that verb only."""
    if not truths:
        return float("nan")
    by_image: dict[str, list[Triplet]] = defaultdict(list)
    for truth in truths:
        by_image[truth.image_id].append(truth)
    matched: set[int] = set()
    hits = []
    for detection in sorted(detections, key=lambda d: -d.score):
        best, best_iou = None, IOU_THRESHOLD
        for truth in by_image.get(detection.image_id, []):
            human_iou = box_iou(detection.human, truth.human)
            if id(truth) not in matched and human_iou >= best_iou and _role_matches(detection.object, truth.object):
                best, best_iou = truth, human_iou
        if best is not None:
            matched.add(id(best))
        hits.append(best is not None)
    hits = np.array(hits, dtype=float)
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, len(hits) + 1) if len(hits) else np.zeros(0)
    return average_precision(true_positives / len(truths), precision)


def map_role(detections: list[Triplet], truths: list[Triplet]) -> tuple[float, dict[str, float]]:
    """(mAP_role, AP per verb) over the verbs that have ground truth."""
    verbs = sorted({t.verb for t in truths})
    per_verb = {verb: role_ap([d for d in detections if d.verb == verb], [t for t in truths if t.verb == verb])
                for verb in verbs}
    return (float(np.mean(list(per_verb.values()))) if per_verb else float("nan")), per_verb
