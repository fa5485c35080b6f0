"""A STAND-IN COCO-EFT test set: procedural CHORUS scenes written as COCO images, annotations and EFT fits.

The files have the real formats (COCO instances + person_keypoints JSON, EFT `{"data": [...]}`), so the
adapter in tasks/chorus/coco_eft.py reads them exactly as it reads the real ones. Like EFT, the camera is a
weak-perspective camera of a 224 px crop, here fitted by least squares to the person's projected joints, so
the adapter's conversion back to a perspective camera is checked against the scene's true camera.

`violations` stages what the official test-set rules must drop: a second person annotation, a second object
annotation of the category, an object box away from the person's, and an EFT body shape (a strong second
beta) that the mean-shape body cannot reproduce through any perspective camera.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.spatial.transform import Rotation
from skimage import measure

from models.body.smpl import load_body_model
from models.render.camera import project
from tasks.chorus.lexicon import CATEGORIES, COCO_CATEGORIES
from tasks.chorus.scenes import render_scene

PERSON_CATEGORY_ID = 1
VIOLATIONS = ("second_person", "second_object", "boxes_apart", "body_shape")


def polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons ([x0, y0, x1, y1, ...] in pixel coordinates) tracing a boolean mask."""
    padded = np.pad(mask, 1).astype(float)
    return [np.flip(contour - 1, axis=1).reshape(-1).round(2).tolist()
            for contour in measure.find_contours(padded, 0.5) if len(contour) >= 3]


def weak_perspective_fit(points: np.ndarray, pixels: np.ndarray, center: np.ndarray,
                         box: float) -> list[float]:
    """[s, tx, ty] with crop coordinates (pixels - center) / (box / 2) ~ s * (points_xy + t_xy), least squares."""
    normalized = (pixels - center) / (box / 2)
    n = len(points)
    design = np.zeros((2 * n, 3))
    design[:n, 0], design[:n, 1] = points[:, 0], 1
    design[n:, 0], design[n:, 2] = points[:, 1], 1
    (scale, a, b), *_ = np.linalg.lstsq(design, np.concatenate([normalized[:, 0], normalized[:, 1]]), rcond=None)
    return [float(scale), float(a / scale), float(b / scale)]


def _box(mask: np.ndarray) -> list[float]:
    """COCO [x, y, width, height] of a mask (all zero when the mask is: an object hidden behind the person)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def _corner_away(box: list[float], size: int, side: int = 8) -> np.ndarray:
    """A side x side mask in the image corner farthest from the box's centre."""
    centre_x, centre_y = box[0] + box[2] / 2, box[1] + box[3] / 2
    x = 0 if centre_x > size / 2 else size - side
    y = 0 if centre_y > size / 2 else size - side
    mask = np.zeros((size, size), dtype=bool)
    mask[y:y + side, x:x + side] = True
    return mask


def write_coco_eft(folder: Path, categories: list[str], count: int, seed: int = 0, image_size: int = 256,
                   jitter: float = 0.25, violations: dict[int, str] | None = None) -> dict:
    """`count` scenes per category -> folder/{images/, instances.json, person_keypoints.json, eft.json};
    `violations` maps an image's number (0, 1, ... over all categories) to one of VIOLATIONS staged in it.

    Returns the adapter's inputs (`eft`, `annotations`, `images`) and, per EFT annotId, the true R, t and the
    staged violation ("" for none).
    """
    violations = violations or {}
    unknown = set(violations.values()) - set(VIOLATIONS)
    if unknown:
        raise ValueError(f"unknown violations {sorted(unknown)}; choose from {VIOLATIONS}")
    body = load_body_model("standin")
    category_ids = {name: i + 1 for i, name in enumerate(COCO_CATEGORIES)}
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, objects, people, fits, truth = [], [], [], [], {}
    rng = np.random.default_rng(seed)
    for category in categories:
        verbs = list(CATEGORIES[category].interactions)
        for _ in range(count):
            image_id = len(images) + 1
            scene = render_scene(body, category, verbs[rng.integers(len(verbs))], int(rng.integers(2**31)),
                                 image_size, jitter)
            name = f"{image_id:06d}.jpg"
            Image.fromarray(scene.image).save(folder / "images" / name, quality=95)
            images.append({"id": image_id, "file_name": name, "width": image_size, "height": image_size})
            person = next(i for i in scene.instances if i.label == "person")
            target = next(i for i in scene.instances if i.label == category)
            person_id, object_id = 2 * image_id, 2 * image_id + 1
            violation = violations.get(image_id - 1, "")
            bbox = _box(person.mask)
            object_mask = _corner_away(bbox, image_size) if violation == "boxes_apart" else target.mask
            keypoints = np.concatenate([person.keypoints[:, :2], 2 * (person.keypoints[:, 2:] > 0)], 1)
            people.append({"id": person_id, "image_id": image_id, "category_id": PERSON_CATEGORY_ID, "iscrowd": 0,
                           "bbox": bbox, "area": float(person.mask.sum()), "segmentation": polygons(person.mask),
                           "keypoints": keypoints.reshape(-1).round(2).tolist(),
                           "num_keypoints": int((keypoints[:, 2] > 0).sum())})
            objects.append({"id": object_id, "image_id": image_id, "category_id": category_ids[category],
                            "iscrowd": 0, "bbox": _box(object_mask), "area": float(object_mask.sum()),
                            "segmentation": polygons(object_mask)})
            if violation in ("second_person", "second_object"):  # a copy under a fresh id (ids above 2 * images)
                copy = objects[-1] if violation == "second_object" else {
                    k: v for k, v in people[-1].items() if k not in ("keypoints", "num_keypoints")}
                objects.append({**copy, "id": 10**6 + image_id})

            posed = body.pose(torch.from_numpy(scene.body_pose).float()[None])
            joints = torch.cat([posed.joints[0], posed.keypoints[0]]).numpy()
            center = np.array([bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2])
            box = 1.2 * max(bbox[2], bbox[3])
            smpl_frame = joints @ scene.R.T + body.rest_pelvis  # EFT's frame: rotated, root joint at its rest place
            rotations = np.concatenate([scene.R[None],
                                        Rotation.from_rotvec(scene.body_pose.reshape(-1, 3)).as_matrix()])
            shape = [0.0, 3.0 if violation == "body_shape" else 0.0] + [0.0] * 8
            fits.append({"annotId": person_id, "imageName": name, "parm_pose": rotations.round(6).tolist(),
                         "parm_shape": shape, "bbox_center": center.tolist(), "bbox_scale": box / 200,
                         "parm_cam": weak_perspective_fit(smpl_frame, project(joints, scene.K, scene.R, scene.t)[:, :2],
                                                          center, box)})
            truth[person_id] = {"R": scene.R, "t": scene.t, "violation": violation}
    categories_json = [{"id": PERSON_CATEGORY_ID, "name": "person"}] + [
        {"id": category_ids[c], "name": c} for c in categories]
    # Like COCO: object masks in the instances file, keypoints in a second file that repeats the people.
    instances = {"images": images, "annotations": objects + [{k: v for k, v in p.items() if k != "keypoints"}
                                                             for p in people], "categories": categories_json}
    person_keypoints = {"images": images, "annotations": people, "categories": categories_json[:1]}
    for file_name, data in (("instances.json", instances), ("person_keypoints.json", person_keypoints),
                            ("eft.json", {"ver": "standin", "data": fits})):
        (folder / file_name).write_text(json.dumps(data))
    return {"eft": str(folder / "eft.json"), "images": str(folder / "images"),
            "annotations": [str(folder / "instances.json"), str(folder / "person_keypoints.json")], "truth": truth}

