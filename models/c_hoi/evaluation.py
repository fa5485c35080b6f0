"""V-COCO role AP (mAP_role) by the rules of the official `vsrl_eval.py` (s-gupta/v-coco, `_do_role_eval`;
`_do_agent_eval` matches people the same way), and its result format, so that script can score our predictions.

Rules, per verb (a verb is one V-COCO action-role, e.g. `eat_instr` in the public conversions, or a HICO-DET
verb), over the detections and ground-truth persons of every image:
- The ground truth is persons, not pairs: every person of the image, with the object of each verb it does (None:
  the role has no object, e.g. occluded or out of frame). A person marked `ignore` has no action annotations.
- In each image, detections are taken by decreasing score. Each one is matched to the ground-truth person its
  human box overlaps most: all persons count, whatever they do, and ties go to the first. If that person is
  ignored, the detection is left out (neither a true nor a false positive). Otherwise it is a true positive when
  the person does the verb, the overlap is >= 0.5, the role matches and no earlier detection has covered the
  person yet; this detection then covers the person. Anything else is a false positive: a duplicate does not
  fall back to the next person.
- The role matches when the detected object overlaps the person's object by >= 0.5. When the person's role has
  no object, it matches in scenario 1 only if the detection has no object either, and in scenario 2 whatever
  the detected object is.
- Overlap is vsrl_eval's IoU on inclusive pixel boxes (width x1 - x0 + 1), in float32 like its arrays.
- npos = the persons doing the verb (ignored ones excluded), whether or not their role has an object.
- AP = vsrl_eval's `voc_ap`, the PASCAL VOC 2010+ all-points AP, not the 11-point VOC 2007 one. Detections of
  all images are sorted by score (ties in numpy argsort's order, as vsrl_eval); recall = TP / npos; precision
  is made monotone from the right and summed over each recall step. NaN scores are skipped, as vsrl_eval does.
- mAP_role = the mean over the verbs with ground truth (vsrl_eval's nanmean). A verb that no ground-truth
  person does is not measured: NaN, never 0 or 1.
Where vsrl_eval would stop with an error, we do this instead: no detections give AP 0, and detections in an
image without ground-truth persons are false positives.

On HICO-DET data, these are per-verb role APs, NOT HICO-DET's mAP. HICO-DET's official mAP is over its 600
<verb, object category> classes, with the Full / Rare / Non-rare split taken from training-set counts; that is
not computed here: `to_hico_det` writes the detections in the result format of the public HICO-DET evaluations
(PPDM / QPIC `hico_eval`, the same JSON layout as the annotations `tasks/c_hoi/annotations.py` reads), which
score them. A HICO-DET person doing one verb with several objects keeps the first object (V-COCO has one object
per person and role).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLD = 0.5
SCENARIOS = (1, 2)
ROLE_SUFFIXES = ("_obj", "_instr")  # V-COCO's role names after the action: `eat_obj`, `eat_instr`
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class Triplet:
    """A detection: one verb of one detected person, with the object it predicts for that role."""

    image_id: str
    verb: str
    human: Box
    object: Box | None  # None: the detection says the role has no object
    score: float
    object_label: str | None = None  # the detected object's category (needed by the HICO-DET format only)


@dataclass(frozen=True)
class Person:
    """A ground-truth person: the object of each verb it does (None: the role has no object)."""

    image_id: str
    box: Box
    roles: dict[str, Box | None] = field(default_factory=dict)
    ignore: bool = False  # no action annotations: a detection it takes is not counted at all


def overlaps(boxes, box) -> np.ndarray:
    """IoU of each of `boxes` with `box`, as vsrl_eval's `get_overlap` computes it (inclusive pixel boxes, +1 on
    each side: hand-written because torchvision.ops.box_iou's exclusive boxes would move every score)."""
    boxes, box = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(box, np.float32)
    width = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1, 0)
    height = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1, 0)
    inter = width * height
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    return inter / (area + (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1) - inter)


def _role_matches(detected: Box | None, truth: Box | None, scenario: int) -> bool:
    if truth is None:
        return scenario == 2 or detected is None
    return detected is not None and overlaps(truth, detected)[0] >= IOU_THRESHOLD


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """vsrl_eval's `voc_ap`: the precision envelope summed over every step of recall."""
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def role_ap(detections: list[Triplet], persons: list[Person], verb: str, scenario: int = 1) -> float:
    """AP of one verb (only this verb's detections are used; all persons are needed for the matching).
    Returns NaN when no ground-truth person does the verb."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, not {scenario!r}")
    npos = sum(verb in person.roles and not person.ignore for person in persons)
    if not npos:
        return float("nan")
    people: dict[str, list[Person]] = defaultdict(list)
    for person in persons:
        people[person.image_id].append(person)
    found: dict[str, list[Triplet]] = defaultdict(list)
    for detection in detections:
        if detection.verb == verb and not math.isnan(detection.score):
            found[detection.image_id].append(detection)
    scores, hits = [], []
    for image_id in dict.fromkeys([p.image_id for p in persons] + list(found)):  # vsrl_eval: image by image
        image_people, covered = people.get(image_id, []), set()
        image_detections = found.get(image_id, [])
        for index in np.argsort(np.float32([d.score for d in image_detections]))[::-1]:
            detection, hit = image_detections[index], False
            if image_people:
                ious = overlaps([p.box for p in image_people], detection.human)
                best = int(ious.argmax())
                person = image_people[best]
                if person.ignore:
                    continue
                hit = (verb in person.roles and ious[best] >= IOU_THRESHOLD and best not in covered
                       and _role_matches(detection.object, person.roles[verb], scenario))
                if hit:
                    covered.add(best)
            scores.append(detection.score)
            hits.append(hit)
    order = np.argsort(np.float32(scores))[::-1]
    true_positives = np.cumsum(np.asarray(hits, dtype=float)[order])
    precision = true_positives / np.arange(1, len(order) + 1)
    return average_precision(true_positives / npos, precision)


def map_role(detections: list[Triplet], persons: list[Person], scenario: int = 1) -> tuple[float, dict[str, float]]:
    """(mAP_role, AP per verb) for every verb of the ground truth or the detections; NaN = not measured."""
    verbs = sorted({verb for person in persons for verb in person.roles} | {d.verb for d in detections})
    per_verb = {verb: role_ap(detections, persons, verb, scenario) for verb in verbs}
    measured = [ap for ap in per_verb.values() if not math.isnan(ap)]
    return (float(np.mean(measured)) if measured else float("nan")), per_verb


def image_persons(image_id: str, boxes, triplets: Iterable[tuple[int, int, str]],
                  persons: Iterable[int] = ()) -> list[Person]:
    """One image's ground-truth persons. The inputs are its boxes and its (subject, object index or -1, verb)
    triplets, plus `persons`: indices of the other person boxes. A person who does nothing must still be
    there, because it takes the detections that overlap it most."""
    roles: dict[int, dict[str, Box | None]] = {int(index): {} for index in persons}
    for subject, obj, verb in triplets:
        roles.setdefault(subject, {}).setdefault(verb, tuple(boxes[obj]) if obj >= 0 else None)
    return [Person(image_id, tuple(boxes[index]), verbs) for index, verbs in sorted(roles.items())]


def _action(verb: str) -> str:
    return next((verb[: -len(suffix)] for suffix in ROLE_SUFFIXES if verb.endswith(suffix)), verb)


def to_vcoco(detections: list[Triplet], verbs: Iterable[str] = ()) -> list[dict]:
    """Detections as the V-COCO result records that vsrl_eval reads: `pickle.dump(records, file)`, then
    `VCOCOeval._do_eval(file)`. There is one record per detected person box. A record holds `image_id` (an int
    when the id is digits, as COCO ids are), `person_box`, `<verb>` = [x0, y0, x1, y1, score] (a NaN box means
    no object) and `<action>_agent`. Every verb of `verbs` and of the detections has its keys, NaN when unused,
    because vsrl_eval looks every key up. When one person box has several detections of a verb, record k holds
    the k-th best of each verb. The agent score is the best role score of the action in the first record and
    NaN in the others, so the agent AP sees each person once."""
    names = sorted(set(verbs) | {d.verb for d in detections})
    groups: dict[tuple[str, Box], dict[str, list[Triplet]]] = defaultdict(lambda: defaultdict(list))
    for detection in detections:
        groups[detection.image_id, detection.human][detection.verb].append(detection)
    records = []
    for (image_id, human), by_verb in groups.items():
        ranked = {verb: sorted(found, key=lambda d: -d.score) for verb, found in by_verb.items()}
        for k in range(max(len(found) for found in ranked.values())):
            record = {"image_id": int(image_id) if image_id.isdigit() else image_id, "person_box": list(human),
                      **{verb: [math.nan] * 5 for verb in names}, **{f"{_action(v)}_agent": math.nan for v in names}}
            for verb, found in ranked.items():
                if k < len(found):
                    record[verb] = [*(found[k].object or (math.nan,) * 4), found[k].score]
                    if k == 0:
                        agent = f"{_action(verb)}_agent"
                        record[agent] = float(np.fmax(record[agent], found[k].score))
            records.append(record)
    return records


def from_vcoco(records: Iterable[dict]) -> list[Triplet]:
    """The role detections of V-COCO result records, from `to_vcoco` or from any other model. Agent scores are
    not role detections, and NaN scores are skipped. A box that is all NaN or all 0 means no object, which is
    how vsrl_eval's scenario 1 reads it."""
    detections = []
    for record in records:
        human = tuple(float(v) for v in record["person_box"])
        for key, value in record.items():
            if key in ("image_id", "person_box") or key.endswith("_agent"):
                continue
            *box, score = (float(v) for v in value)
            if not math.isnan(score):
                no_object = all(math.isnan(v) for v in box) or not any(box)
                detections.append(Triplet(str(record["image_id"]), key, human, None if no_object else tuple(box),
                                          score))
    return detections


def to_hico_det(detections: list[Triplet], object_ids: Mapping[str, int], verb_ids: Mapping[str, int],
                person_id: int = 1) -> list[dict]:
    """Detections as the per-image result records of the public HICO-DET evaluations (PPDM / QPIC):
    {"image_id", "predictions": [{"bbox", "category_id"}], "hoi_prediction": [{"subject_id", "object_id",
    "category_id", "score"}]}, where `subject_id` / `object_id` index `predictions`, object category ids come
    from `object_ids` (the person box gets `person_id`, COCO's) and verb ids from `verb_ids`. A box used by
    several triplets is listed once. Triplets without an object have no HICO-DET form and are left out."""
    images: dict[str, tuple[dict, dict]] = {}  # image id -> (record, its box positions)
    for detection in detections:
        if detection.object is None:
            continue
        if detection.verb not in verb_ids:
            raise ValueError(f"verb {detection.verb!r} has no HICO-DET id in verb_ids")
        if detection.object_label not in object_ids:
            raise ValueError(f"object category {detection.object_label!r} has no HICO-DET id in object_ids")
        record, positions = images.setdefault(
            detection.image_id, ({"image_id": detection.image_id, "predictions": [], "hoi_prediction": []}, {}))
        subject = _listed(record["predictions"], positions, detection.human, person_id)
        obj = _listed(record["predictions"], positions, detection.object, object_ids[detection.object_label])
        record["hoi_prediction"].append({"subject_id": subject, "object_id": obj,
                                         "category_id": verb_ids[detection.verb], "score": float(detection.score)})
    return [record for record, _ in images.values()]


def _listed(predictions: list[dict], positions: dict, box: Box, category: int) -> int:
    """Where (box, category) is in an image's `predictions`, added on first use."""
    key = (tuple(float(v) for v in box), category)
    if key not in positions:
        positions[key] = len(predictions)
        predictions.append({"bbox": list(key[0]), "category_id": category})
    return positions[key]


def from_hico_det(records: Iterable[dict], object_names: Mapping[int, str], verb_names: Mapping[int, str]
                  ) -> list[Triplet]:
    """The triplets of HICO-DET result records (from `to_hico_det` or any model that writes them)."""
    detections = []
    for record in records:
        boxes = record["predictions"]
        for hoi in record["hoi_prediction"]:
            obj = boxes[hoi["object_id"]]
            detections.append(Triplet(str(record["image_id"]), verb_names[hoi["category_id"]],
                                      tuple(float(v) for v in boxes[hoi["subject_id"]]["bbox"]),
                                      tuple(float(v) for v in obj["bbox"]), float(hoi["score"]),
                                      object_names[obj["category_id"]]))
    return detections
