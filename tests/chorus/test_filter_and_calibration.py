"""The paper's filter on staged bad scenes (each with its reason), and the SMPL fit to 2D keypoints."""

import numpy as np
import pytest

from models.body import load_body_model
from models.render.camera import camera_azimuth
from tasks.chorus.calibration import fit_views
from tasks.chorus.perception import Detection, reason_to_reject
from tasks.chorus.scenes import render_scene


@pytest.fixture(scope="module")
def body():
    return load_body_model("standin")


def detections(scene):
    return [Detection(i.label, 1.0, i.mask, i.keypoints) for i in scene.instances]


@pytest.mark.parametrize("category, verb, defect, reason", [
    ("backpack", "wearing", None, None),
    ("suitcase", "carrying", "second_person", "more than one person"),
    ("cup", "holding", "no_object", "no target object"),
    ("sports ball", "kicking", "object_far", "person and object boxes far apart"),
    ("hat", "wearing", "torso_out_of_frame", "no shoulder and hip keypoints"),
])
def test_filter_rejects_each_staged_defect_with_its_reason(body, category, verb, defect, reason):
    for seed in range(3):
        scene = render_scene(body, category, verb, seed=seed, defect=defect)
        assert reason_to_reject(detections(scene), category, 128, 128) == reason, f"seed {seed}"


def test_filter_rules_on_hand_made_detections():
    person = np.zeros((20, 20), dtype=bool)
    person[2:18, 5:12] = True
    thing = np.zeros((20, 20), dtype=bool)
    thing[8:12, 10:15] = True
    keypoints = np.zeros((17, 3))
    keypoints[[5, 11]] = [[8, 5, 0.9], [8, 12, 0.9]]
    ok = [Detection("person", 0.95, person, keypoints), Detection("cup", 0.9, thing)]
    assert reason_to_reject(ok, "cup", 20, 20) is None
    assert reason_to_reject([ok[1]], "cup", 20, 20) == "no person"
    assert reason_to_reject(ok + [Detection("cup", 0.85, thing)], "cup", 20, 20) == "more than one target object"
    # Low-score detections do not count at all (score < 0.8).
    assert reason_to_reject(ok + [Detection("person", 0.79, thing)], "cup", 20, 20) is None
    assert reason_to_reject([ok[0], Detection("cup", 0.5, thing)], "cup", 20, 20) == "no target object"
    unsure = keypoints.copy()
    unsure[11, 2] = 0.69  # the only hip below the keypoint confidence threshold 0.7
    assert reason_to_reject([Detection("person", 0.95, person, unsure), ok[1]], "cup", 20, 20) == \
        "no shoulder and hip keypoints"
    far = np.zeros((20, 20), dtype=bool)
    far[0:3, 15:20] = True  # overlap with the person box is 0
    assert reason_to_reject([ok[0], Detection("cup", 0.9, far)], "cup", 20, 20) == "person and object boxes far apart"


def test_smpl_fit_recovers_camera_and_keypoints(body):
    scenes = [render_scene(body, "backpack", "wearing", seed=s, jitter=0.2) for s in range(8)]
    keypoints = np.stack([s.instances[0].keypoints for s in scenes])
    fitted = fit_views(keypoints, np.stack([s.K for s in scenes]), steps=200)
    assert (fitted["error"] < 3.0).all(), fitted["error"]  # pixels, 128 px images
    azimuth_errors = [abs((camera_azimuth(R, t) - s.azimuth + 180) % 360 - 180)
                      for R, t, s in zip(fitted["R"], fitted["t"], scenes)]
    assert np.median(azimuth_errors) < 25, azimuth_errors
