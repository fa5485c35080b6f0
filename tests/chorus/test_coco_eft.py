"""The COCO-EFT adapter on a stand-in test set with known cameras: EFT's weak-perspective crop camera becomes
the scene's perspective camera, and the views feed occupancy's PAP."""

import numpy as np
import pytest

from hoi_factory.run import run_pipeline
from models.body.smpl import load_body_model
from models.render.camera import intrinsics, project
from tasks.chorus.coco_eft import (
    COCOEFTConfig,
    COCOEFTPipeline,
    intersection_over_smaller_box,
    perspective_fit_error,
    perspective_from_weak,
)
from tasks.chorus.standin_coco_eft import weak_perspective_fit, write_coco_eft
from tasks.chorus.views import ViewsPipeline


def test_weak_perspective_camera_converts_to_the_perspective_camera_it_approximates():
    rng = np.random.default_rng(0)
    K = intrinsics(640, 480)
    orient = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    orient *= np.linalg.det(orient)
    pelvis_rest = np.array([0.0, -0.2, 0.02])
    true_t = np.array([0.3, -0.1, 6.0])  # far away: weak perspective is nearly exact
    points = rng.normal(0, 0.3, (50, 3))
    pixels = project(points, K, orient, true_t)[:, :2]
    center, box = pixels.mean(0), 1.2 * np.ptp(pixels, 0).max()
    cam = weak_perspective_fit(points @ orient.T + pelvis_rest, pixels, center, box)
    R, t = perspective_from_weak(cam, center, box / 200, K, pelvis_rest, orient)
    assert np.allclose(R, orient)
    assert np.allclose(t, true_t, rtol=0.02, atol=0.01)
    assert np.abs(project(points, K, R, t)[:, :2] - pixels).max() < 2.0  # perspective effects only


def test_stand_in_coco_eft_becomes_test_views_with_the_true_cameras(local_store_env, tmp_path):
    categories = ["backpack", "cup"]
    files = write_coco_eft(tmp_path / "coco", categories, count=5, seed=1)
    config = COCOEFTConfig(eft=files["eft"], annotations=files["annotations"], images=files["images"],
                           categories=categories, execution={"executor": "local", "shard_size": 4})
    dataset = run_pipeline(COCOEFTPipeline(), config).dataset

    assert dataset.manifest.num_inputs == 10 and dataset.validate() == []
    # A backpack carried at the side can stick out of the person's box: the official overlap rule drops it.
    assert set(dataset.manifest.reject_reasons) <= {"TestSetRules: person and object boxes overlap too little"}
    views = dataset.to_pandas()
    assert len(views) >= 6 and set(views.category) == set(categories)
    assert set(ViewsPipeline.schema.names) <= set(dataset.manifest.columns)  # occupancy reads it as views
    for view in views.itertuples():
        truth = files["truth"][int(view.input_id.split("|")[0])]
        assert np.allclose(np.stack(view.R), truth["R"], atol=1e-5)  # pandas: an array of 3 rows
        assert np.linalg.norm(np.asarray(view.t) - truth["t"]) < 0.08 * np.linalg.norm(truth["t"])
        # The adapter's own check: SMPL keypoints through the converted camera vs the COCO keypoints.
        assert view.reprojection_error < 8.0 and view.calibration == "eft"


def test_the_adapter_keypoint_error_is_the_true_error(local_store_env, tmp_path):
    """Independently recomputed: the body's keypoints through the stored camera vs the annotated ones."""
    files = write_coco_eft(tmp_path / "coco", ["backpack"], count=3, seed=2)
    dataset = run_pipeline(COCOEFTPipeline(), COCOEFTConfig(
        eft=files["eft"], annotations=files["annotations"], images=files["images"], categories=["backpack"],
        execution={"executor": "local"})).dataset
    body = load_body_model("standin")
    for view in dataset.to_arrow().to_pylist():  # arrays as stored: (23, 3), (3, 3), (3,), (17, 3)
        keypoints = body.pose(np.reshape(view["body_pose"], (1, 69))).keypoints[0].numpy()
        pixels = project(keypoints, np.array(view["K"]), np.array(view["R"]), np.array(view["t"]))
        annotated = np.array(view["keypoints"])
        seen = annotated[:, 2] > 0
        expected = np.linalg.norm(pixels[seen, :2] - annotated[seen, :2], axis=1).mean()
        assert view["reprojection_error"] == pytest.approx(expected, rel=1e-4)


def test_segmentations_decode_or_are_refused_before_pycocotools_sees_them():
    """Polygons and both RLE forms decode; what pycocotools would raise a bare Exception on, or read past the
    end of, is a ValueError that the stage turns into a 'malformed COCO annotation' reject."""
    from pycocotools import mask as mask_utils

    from hoi_factory.config import Settings
    from hoi_factory.context import StageContext
    from tasks.chorus.coco_eft import COCODetections

    stage = COCODetections()
    stage.setup(StageContext(Settings()))
    square = np.zeros((10, 12), dtype=bool)
    square[2:6, 3:9] = True
    flat = square.T.reshape(-1)  # COCO runs go down the columns, starting with a run of zeros
    runs = np.diff([0, *(np.flatnonzero(np.diff(flat.astype(int))) + 1), flat.size]).tolist()
    compressed = mask_utils.encode(np.asfortranarray(square.astype(np.uint8)))["counts"].decode()
    assert (stage._mask([[3, 2, 9, 2, 9, 6, 3, 6]], 10, 12) == square).mean() > 0.9
    assert (stage._mask({"size": [10, 12], "counts": runs}, 10, 12) == square).all()
    assert (stage._mask({"size": [10, 12], "counts": compressed}, 10, 12) == square).all()
    assert not stage._mask([[1, 2, 3, 4]], 10, 12).any()  # two points enclose nothing
    for bad, message in [([["x", "y"]], "not a list of numbers"), ([[1, 2, float("nan"), 4, 5, 6]], "NaN"),
                         ({"size": [10, 10], "counts": runs}, "not the image's"),
                         ({"size": [10, 12], "counts": []}, "covering"),
                         ({"size": [10, 12], "counts": [5, -3]}, "covering"),
                         ("polygon", "not polygons or RLE")]:
        with pytest.raises(ValueError, match=message):
            stage._mask(bad, 10, 12)


def test_intersection_over_the_smaller_box():
    # [0, 10] x [0, 10] and [5, 9] x [5, 25]: intersection 4 x 5 = 20 over the smaller area 4 x 20 = 80.
    assert intersection_over_smaller_box([0, 0, 10, 10], [5, 5, 4, 20]) == pytest.approx(0.25)
    assert intersection_over_smaller_box([0, 0, 10, 10], [2, 2, 3, 3]) == 1.0  # inside: 1 however small
    assert intersection_over_smaller_box([0, 0, 10, 10], [10, 0, 5, 5]) == 0.0  # touching edges
    assert intersection_over_smaller_box([0, 0, 10, 10], [3, 3, 0, 4]) == 0.0  # empty box


def test_perspective_fit_error_is_the_official_loss_at_its_minimum():
    """Pixels that are a perspective picture of the joints fit exactly (0); offsetting every joint by the same
    3 x 4 px in a way no camera absorbs (alternating signs) leaves the official norm / count: 5 / sqrt(n)."""
    rng = np.random.default_rng(3)
    joints = rng.normal(0, 0.3, (24, 3))
    K = intrinsics(256, 256)
    R, t = np.eye(3), np.array([0.0, 0.0, 3.0])
    exact = project(joints, K, R, t)[:, :2]
    assert perspective_fit_error(joints, exact, K, np.eye(3) @ _small_turn(), t + 0.1, 256) < 1e-4
    signs = np.where(np.arange(24) % 2, 1.0, -1.0)[:, None]
    shaken = exact + signs * [3.0, 4.0]
    assert perspective_fit_error(joints, shaken, K, R, t, 256) == pytest.approx(5 / np.sqrt(24), rel=0.05)


def _small_turn() -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec([0.05, -0.03, 0.02]).as_matrix()


def test_the_official_test_set_rules_drop_each_staged_violation(local_store_env, tmp_path):
    violations = {0: "second_person", 1: "second_object", 2: "boxes_apart", 3: "body_shape"}
    files = write_coco_eft(tmp_path / "coco", ["cup"], count=6, seed=4, violations=violations)
    dataset = run_pipeline(COCOEFTPipeline(), COCOEFTConfig(
        eft=files["eft"], annotations=files["annotations"], images=files["images"], categories=["cup"],
        execution={"executor": "local"})).dataset
    rejects = {int(r["input_id"].split("|")[0]): r["reason"] for r in dataset.rejects().to_pylist()}
    staged = {annot_id: truth["violation"] for annot_id, truth in files["truth"].items() if truth["violation"]}
    expected = {"second_person": "not exactly one person", "second_object": "not exactly one target object",
                "boxes_apart": "person and object boxes overlap too little",
                "body_shape": "perspective fit reprojection error too high"}
    assert {annot_id: rejects.get(annot_id) for annot_id in staged} == {
        annot_id: expected[kind] for annot_id, kind in staged.items()}
    assert len(dataset.to_pandas()) == 2  # the two clean images stay
