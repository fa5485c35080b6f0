"""The CHORUS test set: COCO images + COCO annotations + EFT pseudo-ground-truth SMPL fits -> held-out views.

Paper, Sec. 4 ("Extended COCO-EFT"), with the official rules (scripts/evaluation/extend_eft.py): keep an image
for a category when it has exactly one person annotation and exactly one annotation of the category (crowd
ones counted too), their COCO boxes' intersection over the smaller box is >= 0.5, and a perspective camera fits
EFT's weak-perspective crop camera with a reprojection error <= 1.0. That error is the official loss: the norm
of the 24 SMPL joints' pixel differences (the mean-shape body through the perspective camera vs the fit's own
shaped body through EFT's camera) divided by the joint count, minimized over rotation, translation and focal.
Since a far enough camera makes any weak-perspective picture of the same joints, what the rule catches is a
fitted body shape that the mean shape cannot reproduce. Each rule that fails is a reject with its reason.
The output has the `chorus-views` schema, so `chorus-occupancy test_views=...` reads it.

Deviations: the official minimizes with 3,000 Adam steps (lr 0.01, stopping below 0.5) and keeps that camera;
here a bounded least squares finds the minimum from the closed-form camera, the focal held to the range those
steps can reach (the start +- 30 image widths), and the view keeps that closed-form camera, which matches EFT's
at the root's depth with the CHORUS field of view (the stand-in's true cameras check it).

Inputs (any fsspec path):
- `eft`: an EFT fit file, `{"data": [{"annotId", "imageName", "parm_pose" (24x3x3 rotation matrices, SMPL
  joints, global orientation first, camera frame), "parm_shape" (10), "parm_cam" ([s, tx, ty] for a 224 px
  crop), "bbox_center" ([x, y] px), "bbox_scale" (crop side / 200 px)}, ...]}`;
- `annotations`: COCO JSON files (instances for the object masks, person_keypoints for the 17 keypoints),
  merged by annotation id;
- `images`: the folder the COCO `file_name`s are relative to.

A malformed file fails the plan with the file's name and what is wrong; a malformed entry (one fit, one
annotation) is rejected with its reason and the rest of the run goes on.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import fsspec
import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError, field_validator
from scipy.spatial.transform import Rotation

from hoi_factory.config import ExecutionConfig, RunConfig
from hoi_factory.context import StageContext
from hoi_factory.pipeline import Pipeline, PlanError
from hoi_factory.stage import MapStage, Reject, Row
from models.body.smpl import load_body_model
from models.perception import Detection
from models.render.camera import camera_azimuth, intrinsics, project
from tasks.chorus import lexicon
from tasks.chorus.perception import KeepInteraction
from tasks.chorus.standin_coco_eft import write_coco_eft
from tasks.chorus.views import EncodeView, ViewsPipeline
from tasks.images.stages import ReadImage

EFT_CROP_PX = 224  # EFT/SPIN regress the camera for a 224 x 224 crop ...
EFT_BOX_UNIT_PX = 200  # ... of a box whose side is bbox_scale * 200 px
MIN_BOX_OVERLAP = 0.5  # person and object COCO boxes: intersection over the smaller box
MAX_PERSPECTIVE_ERROR = 1.0  # |perspective - weak-perspective joint pixels| / number of joints
FOCAL_REACH = 30.0  # image widths: how far 3,000 Adam steps of lr 0.01 move the official's focal
StorageOptions = Callable[[str], dict[str, Any]]  # fsspec options for a URL (StageContext.storage_options)


class COCOEFTConfig(RunConfig):
    eft: str = Field(..., description="EFT fit file (JSON with a 'data' list)")
    annotations: list[str] = Field(..., min_length=1, description="COCO annotation JSON files, merged by id")
    images: str = Field(..., description="folder the COCO image file_names are relative to")
    categories: list[str] = Field(..., min_length=1, description="target object categories (COCO names)")
    body_model: str = Field("standin", description="'standin' or a path to an SMPL .npz")

    @field_validator("categories")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        lexicon.check_categories(names, procedural=False)
        return names


class EFTFit(BaseModel):
    """One EFT entry, checked before use: shapes, finite numbers, proper rotations, a positive scale."""

    annotId: int
    imageName: str
    parm_pose: list[list[list[float]]]
    parm_shape: list[float] = Field([0.0] * 10, min_length=10, max_length=10)
    parm_cam: list[float] = Field(..., min_length=3, max_length=3)
    bbox_center: list[float] = Field(..., min_length=2, max_length=2)
    bbox_scale: float = Field(..., gt=0)

    @field_validator("parm_pose")
    @classmethod
    def _rotations(cls, pose: list) -> list:
        matrices = np.asarray(pose, dtype=np.float64)
        if matrices.shape != (24, 3, 3):
            raise ValueError(f"expected 24 rotation matrices (24x3x3), got shape {matrices.shape}")
        if not np.isfinite(matrices).all():
            raise ValueError("holds NaN or inf")
        gram = matrices @ matrices.transpose(0, 2, 1)
        if np.abs(gram - np.eye(3)).max() > 1e-3 or (np.linalg.det(matrices) < 0).any():
            raise ValueError("holds matrices that are not rotations")
        return pose

    @field_validator("parm_cam", "parm_shape", "bbox_center", "bbox_scale")
    @classmethod
    def _finite(cls, value):
        if not np.isfinite(value).all():
            raise ValueError("holds NaN or inf")
        return value

    @field_validator("parm_cam")
    @classmethod
    def _positive_scale(cls, cam: list[float]) -> list[float]:
        if cam[0] <= 0:
            raise ValueError(f"weak-perspective scale must be positive, got {cam[0]}")
        return cam


def perspective_from_weak(cam: list[float], bbox_center: list[float], bbox_scale: float, K: np.ndarray,
                          pelvis_rest: np.ndarray, orient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R, t (pelvis-centred body -> camera) that project like EFT's weak-perspective crop camera.

    A crop pixel is 112 (1 + s (X + tx)) for a camera-frame point X of SMPL (root at its rest position), and
    an image pixel is bbox_center + (crop pixel - 112) * box / 224. A pinhole camera at depth T_z gives
    c + f (X + T) / T_z; matching the two: T_z = 2 f / (s box), T_xy = t_xy + (bbox_center - c) / (s box / 2).
    """
    scale, tx, ty = cam
    box = bbox_scale * EFT_BOX_UNIT_PX
    half_extent = scale * box / 2
    focal, principal = K[0, 0], K[:2, 2]
    translation = np.array([tx, ty, 0.0])
    translation[:2] += (np.asarray(bbox_center) - principal) / half_extent
    translation[2] = focal / half_extent
    # SMPL rotates about its root joint, which rests at pelvis_rest; our body has the pelvis at the origin.
    return orient, pelvis_rest + translation


def weak_perspective_pixels(points: np.ndarray, cam: list[float], bbox_center: list[float],
                            bbox_scale: float) -> np.ndarray:
    """EFT's image pixels of camera-frame SMPL points (root at its rest place): center + s box / 2 (X + t)_xy."""
    scale, tx, ty = cam
    return np.asarray(bbox_center) + scale * bbox_scale * EFT_BOX_UNIT_PX / 2 * (points[:, :2] + [tx, ty])


def perspective_fit_error(joints: np.ndarray, weak: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray,
                          width: int) -> float:
    """The official perspective-fit loss at its minimum: the norm of all joints' pixel differences together over
    the joint count (24 joints each off by e pixels score e / sqrt(24)), for pelvis-centred `joints` through the
    best camera (rotation, translation, focal; principal point fixed) against their `weak` pixels, starting
    from K, R, t."""
    from scipy.optimize import least_squares

    focal = K[0, 0] / width

    def residuals(x: np.ndarray) -> np.ndarray:
        fitted = K.copy()
        fitted[0, 0] = fitted[1, 1] = x[6] * width
        return (project(joints, fitted, Rotation.from_rotvec(x[:3]).as_matrix(), x[3:6])[:, :2] - weak).ravel()

    start = np.concatenate([Rotation.from_matrix(R).as_rotvec(), t, [focal]])
    lower = np.r_[np.full(6, -np.inf), max(focal - FOCAL_REACH, 1e-3)]
    upper = np.r_[np.full(6, np.inf), focal + FOCAL_REACH]
    return float(np.linalg.norm(least_squares(residuals, start, bounds=(lower, upper)).fun) / len(joints))


def intersection_over_smaller_box(a: list[float], b: list[float]) -> float:
    """For COCO [x, y, width, height] boxes; 0 when either is empty. Hand-written: the official rule divides by the
    smaller box, which no box library offers (torchvision.ops has IoU variants only)."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    smaller = min(a[2] * a[3], b[2] * b[3])
    return max(width, 0) * max(height, 0) / smaller if smaller > 0 else 0.0


def _read_json(url: str, role: str, options: dict[str, Any]) -> Any:
    try:
        with fsspec.open(url, "rt", encoding="utf-8", **options) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise PlanError(f"{role} file {url!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{role} file {url!r} is not valid JSON: {exc}") from None


def _coco_index(urls: list[str], storage_options: StorageOptions
                ) -> tuple[dict[int, dict], dict[int, list[dict]], dict[int, str]]:
    """images by id, annotations by image id (merged by annotation id), category names by id."""
    images: dict[int, dict] = {}
    annotations: dict[int, dict] = {}
    categories: dict[int, str] = {}
    for url in urls:
        data = _read_json(url, "COCO annotation", storage_options(url))
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                          "categories")):
            raise PlanError(f"COCO annotation file {url!r} must be an object with lists 'images', 'annotations' "
                            "and 'categories'")
        try:
            categories.update({int(c["id"]): str(c["name"]) for c in data["categories"]})
            images.update({int(i["id"]): i for i in data["images"]})
            for annotation in data["annotations"]:
                merged = annotations.setdefault(int(annotation["id"]), {})
                merged.update(annotation)
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"COCO annotation file {url!r}: an entry lacks a usable {exc}") from None
    by_image: dict[int, list[dict]] = defaultdict(list)
    for annotation in annotations.values():
        by_image[annotation.get("image_id")].append(annotation)
    return images, by_image, categories


def _safe_join(folder: str, name: str) -> str | None:
    """folder/name, or None when the name would leave the folder (absolute, `..`)."""
    normal = posixpath.normpath(name)
    if not name or posixpath.isabs(name) or normal.startswith("..") or "\\" in name or "\0" in name:
        return None
    return folder.rstrip("/") + "/" + normal


class ParseFit(MapStage):
    """Checks the EFT entry and the image it names; malformed ones are rejected with pydantic's reason."""

    needs = frozenset({"problem", "problem_detail", "fit", "image"})
    makes = frozenset({"fit", "path"})

    def __init__(self, images: str):
        self.images = images

    def process_row(self, row: Row) -> Row | Reject:
        if row["problem"]:
            return Reject.of(row, row["problem"], row["problem_detail"])
        try:
            fit = EFTFit.model_validate(row["fit"])
        except ValidationError as exc:
            first = exc.errors()[0]
            return Reject.of(row, "malformed EFT fit", f"{'.'.join(map(str, first['loc']))}: {first['msg']}")
        path = _safe_join(self.images, str(row["image"].get("file_name", "")))
        if path is None:
            return Reject.of(row, "unsafe image path", repr(row["image"].get("file_name")))
        return {**row, "fit": fit, "path": path}


class TestSetRules(MapStage):
    """The official COCO-EFT rules on the annotations: one person, the fitted one; one object of the category;
    boxes that overlap."""

    needs = frozenset({"annotations", "category", "fit"})
    makes = frozenset()

    def process_row(self, row: Row) -> Row | Reject:
        people = [a for a in row["annotations"] if a["label"] == "person"]
        targets = [a for a in row["annotations"] if a["label"] == row["category"]]
        if len(people) != 1:
            return Reject.of(row, "not exactly one person", f"{len(people)} person annotations")
        if people[0]["id"] != row["fit"].annotId:
            return Reject.of(row, "the fit is not the person's", f"annotId {row['fit'].annotId}")
        if len(targets) != 1:
            return Reject.of(row, "not exactly one target object", f"{len(targets)} {row['category']} annotations")
        try:
            boxes = [_numbers(a.get("bbox"), "bbox") for a in (people[0], targets[0])]
            if any(len(box) != 4 or (box[2:] < 0).any() for box in boxes):
                raise ValueError("bbox is not [x, y, width, height]")
        except ValueError as exc:
            return Reject.of(row, "malformed COCO annotation", str(exc))
        overlap = intersection_over_smaller_box(*boxes)
        if overlap < MIN_BOX_OVERLAP:
            return Reject.of(row, "person and object boxes overlap too little", f"{overlap:.2f} < {MIN_BOX_OVERLAP}")
        return row


def _numbers(values: Any, what: str) -> np.ndarray:
    """A list of finite numbers as float64, or ValueError saying what it is not."""
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in values):
        raise ValueError(f"{what} is not a list of numbers")
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or inf")
    return array


class COCODetections(MapStage):
    """COCO annotations of the image -> detections (score 1) for the paper's filter."""

    needs = frozenset({"pixels", "annotations", "fit"})
    makes = frozenset({"image_array", "detections"})

    def setup(self, context: StageContext) -> None:
        from pycocotools import mask as mask_utils

        self.mask_utils = mask_utils

    def _mask(self, segmentation: Any, height: int, width: int) -> np.ndarray:
        """Polygons or run-length encoding (counts listed or compressed) as a mask; ValueError for anything
        else, checked first: pycocotools raises bare Exceptions on some inputs and reads past others."""
        if isinstance(segmentation, list):
            polygons = [_numbers(p, "a polygon") for p in segmentation]
            polygons = [p.tolist() for p in polygons if len(p) >= 6]  # fewer than 3 points: no area
            if not polygons:
                return np.zeros((height, width), dtype=bool)
            rle = self.mask_utils.merge(self.mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict):
            if segmentation.get("size") != [height, width]:
                raise ValueError(f"RLE size {segmentation.get('size')!r} is not the image's [{height}, {width}]")
            counts = segmentation.get("counts")
            if isinstance(counts, str):
                rle = {"size": [height, width], "counts": counts.encode()}
            else:
                runs = _numbers(counts, "RLE counts")
                if (runs < 0).any() or (runs != np.round(runs)).any() or runs.sum() != height * width:
                    raise ValueError(f"RLE counts are not whole runs covering {height}x{width} pixels")
                rle = self.mask_utils.frPyObjects({"size": [height, width], "counts": runs.astype(int).tolist()},
                                                  height, width)
        else:
            raise ValueError(f"segmentation is a {type(segmentation).__name__}, not polygons or RLE")
        mask = self.mask_utils.decode(rle).astype(bool)
        if mask.shape != (height, width):
            raise ValueError(f"segmentation decodes to {mask.shape}, not the image's ({height}, {width})")
        return mask

    def process_row(self, row: Row) -> Row | Reject:
        pixels = row["pixels"]
        height, width = pixels.shape[:2]
        detections = []
        for annotation in row["annotations"]:
            fitted = annotation["id"] == row["fit"].annotId
            if fitted and "keypoints" not in annotation:
                return Reject.of(row, "no keypoints for the fitted person",
                                 f"annotation {annotation['id']}: add the person_keypoints JSON to `annotations`")
            try:
                mask = self._mask(annotation["segmentation"], height, width)
                keypoints = None
                if fitted:
                    raw = _numbers(annotation["keypoints"], "keypoints").astype(np.float32).reshape(17, 3)
                    keypoints = np.concatenate([raw[:, :2], (raw[:, 2:] > 0).astype(np.float32)], 1)
            except (KeyError, ValueError) as exc:  # what the annotation lacks or holds wrongly
                return Reject.of(row, "malformed COCO annotation",
                                 f"annotation {annotation.get('id')}: {type(exc).__name__}: {exc}")
            detections.append(Detection(annotation["label"], 1.0, mask, keypoints))
        rest = {key: value for key, value in row.items() if key != "pixels"}  # the input row stays intact for retries
        return {**rest, "image_array": pixels, "detections": detections}


class EFTCamera(MapStage):
    """The EFT fit as this project's calibration: body_pose, K (CHORUS FOV), R, t, azimuth, and the error of
    the body's keypoints against the annotated ones; a fit whose perspective camera departs from EFT's
    weak-perspective one by more than the official 1.0 is rejected."""

    needs = frozenset({"fit", "image_array", "keypoints"})
    makes = frozenset({"body_pose", "K", "R", "t", "azimuth", "reprojection_error", "calibration", "staged_defect",
                       "prompt", "base_prompt", "verb", "augmentation", "mpjpe", "azimuth_error"})

    def __init__(self, body_model: str):
        self.body_model = body_model

    def setup(self, context: StageContext) -> None:
        self.body = load_body_model(self.body_model)

    def process_row(self, row: Row) -> Row | Reject:
        fit: EFTFit = row["fit"]
        height, width = row["image_array"].shape[:2]
        K = intrinsics(width, height)
        rotations = np.asarray(fit.parm_pose)
        body_pose = Rotation.from_matrix(rotations[1:]).as_rotvec().reshape(-1).astype(np.float32)
        R, t = perspective_from_weak(fit.parm_cam, fit.bbox_center, fit.bbox_scale, K, self.body.rest_pelvis,
                                     rotations[0])
        posed = self.body.pose(torch.from_numpy(body_pose)[None])
        shaped = self.body.pose(torch.from_numpy(body_pose)[None], torch.tensor([fit.parm_shape])).joints[0].numpy()
        weak = weak_perspective_pixels(shaped @ R.T + self.body.rest_pelvis, fit.parm_cam, fit.bbox_center,
                                       fit.bbox_scale)
        departure = perspective_fit_error(posed.joints[0].numpy().astype(np.float64), weak, K, R, t, width)
        if departure > MAX_PERSPECTIVE_ERROR:
            return Reject.of(row, "perspective fit reprojection error too high",
                             f"{departure:.2f} > {MAX_PERSPECTIVE_ERROR}")
        pixels = project(posed.keypoints[0].numpy(), K, R, t)[:, :2]
        seen = row["keypoints"][:, 2] > 0
        error = (float(np.linalg.norm(pixels[seen] - row["keypoints"][seen, :2], axis=1).mean())
                 if seen.any() else math.nan)
        return {**row, "body_pose": body_pose, "K": K, "R": R, "t": t, "azimuth": camera_azimuth(R, t),
                "reprojection_error": error, "calibration": "eft", "staged_defect": None, "prompt": "",
                "base_prompt": "", "verb": "", "augmentation": "", "mpjpe": math.nan, "azimuth_error": math.nan}


class COCOEFTPipeline(Pipeline[COCOEFTConfig]):
    name = "chorus-test-views"
    description = "CHORUS test set: COCO images + annotations + EFT fits -> filtered, calibrated held-out views"
    config_class = COCOEFTConfig
    schema = ViewsPipeline.schema
    item_keys = frozenset({"input_id", "fit", "problem", "problem_detail", "annotations", "image", "category"})
    preview_column = "image"
    # NaN: no annotated keypoint to compare with; no true pose (the views schema's truth columns)
    allow_non_finite = frozenset({"reprojection_error", "mpjpe", "azimuth_error"})

    def plan(self, config: COCOEFTConfig, context: StageContext) -> list[dict]:
        eft = _read_json(config.eft, "EFT fit", context.storage_options(config.eft))
        if not isinstance(eft, dict) or not isinstance(eft.get("data"), list):
            raise PlanError(f"EFT fit file {config.eft!r} must be an object with a 'data' list of fits")
        images, by_image, category_names = _coco_index(config.annotations, context.storage_options)
        annotation_image = {a["id"]: image_id for image_id, anns in by_image.items() for a in anns}
        items = []
        for number, fit in enumerate(eft["data"]):
            base = {"fit": fit, "problem": "", "problem_detail": "", "annotations": [], "image": {}, "category": ""}
            annot_id = fit.get("annotId") if isinstance(fit, dict) else None
            image_id = annotation_image.get(annot_id) if isinstance(annot_id, (int, str)) else None  # a list: no id
            if image_id is None or image_id not in images:
                what = "not an object" if not isinstance(fit, dict) else f"annotId {annot_id!r}"
                items.append({**base, "input_id": f"fit-{number}", "problem": "unknown COCO annotation",
                              "problem_detail": what})
                continue
            labelled = [{**a, "label": category_names.get(a.get("category_id"))} for a in by_image[image_id]]
            for category in sorted({a["label"] for a in labelled} & set(config.categories)):
                relevant = [a for a in labelled if a["label"] in ("person", category)]
                items.append({**base, "input_id": f"{annot_id}|{category}", "category": category,
                              "image": images[image_id], "annotations": relevant})
        if not items:
            raise PlanError(f"no EFT fit in {config.eft!r} shows any of {config.categories}")
        return items

    def stages(self, config: COCOEFTConfig):
        return [
            ParseFit(config.images),
            ReadImage(),  # first: a missing image is reported as such, whatever its annotations
            TestSetRules(),
            COCODetections(),
            KeepInteraction(),
            EFTCamera(config.body_model),
            EncodeView(),
        ]

    def demo_config(self, inputs: Path, execution: ExecutionConfig) -> COCOEFTConfig:
        categories = list(lexicon.DEMO_CATEGORIES)
        files = write_coco_eft(inputs, categories, count=6, seed=0)
        return COCOEFTConfig(eft=files["eft"], annotations=files["annotations"], images=files["images"],
                             categories=categories, execution=execution, output={"dataset": "demo-chorus-test-views"})
