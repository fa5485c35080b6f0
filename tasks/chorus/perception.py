"""Perception for CHORUS: instance segmentation + 2D person keypoints behind one interface, and the
paper's filter rules (CHORUS Sec. 3.2), each rejection with its reason.

Backends: `ground_truth` reads the exact instances a procedural scene carries; `torchvision` runs Mask R-CNN
and Keypoint R-CNN (models/perception.py), `detectron2` PointRend and Keypoint R-CNN (models/detectron2_perception.py),
on any image, on a GPU when its workers are given one (`perception.gpus`).
"""

from __future__ import annotations

import numpy as np

from hoi_factory.context import StageContext
from hoi_factory.stage import Filter, MapStage, Resources, Row, Stage
from models.detectron2_perception import Detectron2Perception
from models.perception import Detection, RCNNPerception

LEARNED = {"torchvision": RCNNPerception, "detectron2": Detectron2Perception}
BACKENDS = ("ground_truth", *LEARNED)

MIN_SCORE = 0.8
MIN_KEYPOINT_CONFIDENCE = 0.7
MIN_OVERLAP = 0.1  # |person box ∩ object box| / |object box|
SHOULDERS, HIPS = (5, 6), (11, 12)  # COCO keypoint indices


def box_overlap_of_object(person: Detection, target: Detection) -> float:
    px0, py0, px1, py1 = person.box
    ox0, oy0, ox1, oy1 = target.box
    inter = max(0.0, min(px1, ox1) - max(px0, ox0)) * max(0.0, min(py1, oy1) - max(py0, oy0))
    area = (ox1 - ox0) * (oy1 - oy0)
    return inter / area if area > 0 else 0.0


def has_torso(person: Detection, width: int, height: int) -> bool:
    """At least one shoulder and one hip detected with confidence inside the image."""
    kp = person.keypoints
    if kp is None:
        return False

    def seen(i: int) -> bool:
        x, y, confidence = kp[i]
        return confidence >= MIN_KEYPOINT_CONFIDENCE and 0 <= x < width and 0 <= y < height

    return any(seen(i) for i in SHOULDERS) and any(seen(i) for i in HIPS)


def reason_to_reject(detections: list[Detection], category: str, width: int, height: int) -> str | None:
    """The paper's filter, in its order; None keeps the image."""
    confident = [d for d in detections if d.score >= MIN_SCORE and d.mask.any()]
    people = [d for d in confident if d.label == "person"]
    targets = [d for d in confident if d.label == category]
    if not people:
        return "no person"
    if len(people) > 1:
        return "more than one person"
    if not targets:
        return "no target object"
    if len(targets) > 1:
        return "more than one target object"
    if box_overlap_of_object(people[0], targets[0]) <= MIN_OVERLAP:
        return "person and object boxes far apart"
    if not has_torso(people[0], width, height):
        return "no shoulder and hip keypoints"
    return None


class Perceive(Stage):
    """Adds `detections` to each row. `ground_truth` needs rows from the procedural source."""

    batch_size = 8
    makes = frozenset({"detections"})

    def __init__(self, backend: str = "ground_truth", weights: str = "torchvision", image_size: int = 800,
                 gpus: float = 0.0):
        if backend not in BACKENDS:
            raise ValueError(f"perception backend {backend!r} is not available; choose one of {BACKENDS}")
        self.backend, self.weights, self.image_size = backend, weights, image_size
        self.resources = Resources(num_cpus=1.0, num_gpus=gpus)
        # The exact instances exist only in procedural rows: the column check refuses other sources.
        self.needs = frozenset({"image_array"} if backend in LEARNED else {"instances"})

    def setup(self, context: StageContext) -> None:
        if self.backend in LEARNED:
            self.model = LEARNED[self.backend].from_pretrained(self.weights, context.device, self.image_size)

    def process(self, batch: list[Row]) -> list[Row]:
        if self.backend in LEARNED:
            found = self.model([row["image_array"] for row in batch])
        elif any("instances" not in row for row in batch):
            raise ValueError("the ground_truth backend needs procedural scenes (rows with exact instances)")
        else:
            found = [[Detection(i.label, 1.0, i.mask, i.keypoints) for i in row["instances"]] for row in batch]
        return [{**row, "detections": detections} for row, detections in zip(batch, found)]


class InteractionFilter(Filter):
    """Keeps images with exactly one person and one target object that overlap and show a torso."""

    needs = frozenset({"image_array", "detections", "category"})
    thumbnail_key = "image_array"

    def reason_to_drop(self, row: Row) -> str | None:
        height, width = row["image_array"].shape[:2]
        return reason_to_reject(row["detections"], row["category"], width, height)


class KeepInteraction(MapStage):
    """Reduces the detections of a kept image to the person's and the object's masks and keypoints."""

    needs = frozenset({"detections", "category"})
    makes = frozenset({"person_mask_array", "object_mask_array", "keypoints"})

    def process_row(self, row: Row) -> Row:
        confident = [d for d in row["detections"] if d.score >= MIN_SCORE]
        person = next(d for d in confident if d.label == "person")
        target = next(d for d in confident if d.label == row["category"])
        return {**row, "person_mask_array": person.mask, "object_mask_array": target.mask,
                "keypoints": person.keypoints.astype(np.float32)}
