"""HOI4D's hand box from its 2D hand keypoints (the official rule), read from pickles without running code."""

import os
import pickle
import re

import numpy as np
import pytest

from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.context import StageContext
from hoi_factory.run import run_pipeline
from support.hoi_scenes import write_hoi4d_sequence
from tasks.ho3pairs.crop import mask_box
from tasks.ho3pairs.hoi4d import HandPoseError, RefusedGlobalError, read_hand_keypoints
from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline
from tasks.ho3pairs.sources import LoadSample, plan_hoi4d

HAND = (128, 0, 0)
SEQUENCE = "ZY20210800001/H1/C2/N01/S1/s1/T1"


def keypoints_in(box, seed: int) -> np.ndarray:
    """21 (x, y) keypoints, float32 as HOI4D stores them, whose extremes are x0 + 1.7, y0 + 2.25, x1 - 2.2 and
    y1 - 1.6: their official box (int() of the min and max) is (x0 + 1, y0 + 2, x1 - 3, y1 - 2)."""
    x0, y0, x1, y1 = box
    rng = np.random.default_rng(seed)
    points = np.stack([rng.uniform(x0 + 1.7, x1 - 2.2, 21), rng.uniform(y0 + 2.25, y1 - 1.6, 21)], 1)
    points[:4] = [(x0 + 1.7, y0 + 5), (x1 - 2.2, y0 + 5), (x0 + 5, y0 + 2.25), (x0 + 5, y1 - 1.6)]
    return points.astype(np.float32)


def official_box(box) -> list[float]:
    x0, y0, x1, y1 = box
    return [x0 + 1, y0 + 2, x1 - 3, y1 - 2]


def write_hand_pose(root, side: str, frame: int, keypoints: np.ndarray, protocol: int = pickle.DEFAULT_PROTOCOL):
    """A hand-pose pickle in HOI4D's layout and format (a dict of numpy arrays, the frame number unpadded)."""
    path = root / "handpose" / f"refinehandpose_{side}" / SEQUENCE / f"{frame}.pickle"
    path.parent.mkdir(parents=True, exist_ok=True)
    pose = {"poseCoeff": np.zeros(48, np.float32), "beta": np.zeros(10, np.float32),
            "trans": np.array([0.01, -0.02, 0.4], np.float32), "kps2D": keypoints, "err": np.float64(0.5)}
    path.write_bytes(pickle.dumps(pose, protocol=protocol))
    return path


def load(row: dict, tmp_path) -> dict:
    stage = LoadSample("hoi4d", [HAND])
    stage.setup(StageContext(Settings(store_url=str(tmp_path / "store"))))
    return stage.process_row({"sample_id": "s", "input_id": row["input_id"], **row})


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_hand_box_is_the_official_box_of_the_keypoints(tmp_path, protocol):
    root = tmp_path / "hoi4d"
    sequence, scenes = write_hoi4d_sequence(root, [20])
    path = write_hand_pose(root, "right", 0, keypoints_in(scenes[0].hand_box, seed=1), protocol)
    assert np.array_equal(read_hand_keypoints(str(path), {}), keypoints_in(scenes[0].hand_box, seed=1))
    (item,) = plan_hoi4d(str(root), {})
    assert item["hand_pose"] == str(path)
    loaded = load(item, tmp_path)
    assert loaded["hand_box"] == official_box(scenes[0].hand_box) and loaded["hand_box_source"] == "keypoints"
    assert loaded["hand_box"] != list(mask_box(loaded["hand_mask_array"]))  # the keypoints, not the mask, decided


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    root = tmp_path / "hoi4d"
    _, scenes = write_hoi4d_sequence(root, [20])
    path = write_hand_pose(root, "right", 0, keypoints_in(scenes[0].hand_box, seed=1))
    path.write_bytes(pickle.dumps({"kps2D": Exploit()}))
    refusal = rf"{re.escape(str(path))}: refused to unpickle the global (posix|os)\.system"
    with pytest.raises(RefusedGlobalError, match=refusal):
        read_hand_keypoints(str(path), {})
    (item,) = plan_hoi4d(str(root), {})
    rejected = load(item, tmp_path)  # bad input data: the sample is rejected, with the file and the global
    assert rejected.reason == "unreadable hand pose" and "system" in rejected.detail and str(path) in rejected.detail
    assert not marker.exists()


@pytest.mark.parametrize(("payload", "fault"), [
    (pickle.dumps({"kps2D": eval}), r"refused to unpickle the global builtins\.eval"),  # not a container
    (pickle.dumps({"kps2D": np.load}), r"refused to unpickle the global numpy\.load"),  # not array reconstruction
    (pickle.dumps({"kps2D": np.zeros((21, 2))})[:-9], "not a readable hand-pose pickle"),  # truncated
    (pickle.dumps({"kps2D": np.zeros((21, 3))}), "holds no kps2D"),  # not (x, y) points
    (pickle.dumps({"pose": np.zeros((21, 2))}), "holds no kps2D"),
], ids=["eval", "numpy-load", "truncated", "not-xy", "no-kps2D"])
def test_damaged_or_foreign_pickles_are_hand_pose_errors(tmp_path, payload, fault):
    path = tmp_path / "0.pickle"
    path.write_bytes(payload)
    with pytest.raises(HandPoseError, match=f"{re.escape(str(path))}: {fault}"):
        read_hand_keypoints(str(path), {})


def test_without_a_pickle_the_box_is_the_hand_masks(tmp_path):
    root = tmp_path / "hoi4d"
    _, scenes = write_hoi4d_sequence(root, [20, 21])
    write_hand_pose(root, "right", 1, keypoints_in(scenes[1].hand_box, seed=1))  # another frame's
    write_hand_pose(root, "right", 0, keypoints_in(scenes[0].hand_box, seed=1)).rename(
        root / "handpose" / "refinehandpose_right" / SEQUENCE / "00000.pickle")  # padded: not HOI4D's name
    first, second = plan_hoi4d(str(root), {})
    assert first["hand_pose"] is None and second["hand_pose"] is not None
    loaded = load(first, tmp_path)
    assert loaded["hand_box"] == list(scenes[0].hand_box) and loaded["hand_box_source"] == "mask"


def test_the_pipeline_takes_the_right_hand_then_the_left_then_the_mask(tmp_path, local_store_env):
    root = tmp_path / "hoi4d"
    _, scenes = write_hoi4d_sequence(root, [20, 21, 22])
    boxes = [scene.hand_box for scene in scenes]
    write_hand_pose(root, "right", 0, keypoints_in(boxes[0], seed=1))
    write_hand_pose(root, "left", 0, keypoints_in(boxes[0], seed=2) - 6)  # the right hand's box wins
    write_hand_pose(root, "left", 1, keypoints_in(boxes[1], seed=3))
    expected = {f"{SEQUENCE}/align_rgb/{frame:05d}.jpg": box for frame, box in
                enumerate([official_box(boxes[0]), official_box(boxes[1]), list(boxes[2])])}
    config = PairsConfig(source={"kind": "hoi4d", "hand_colours": [HAND]}, inputs=str(root), inpainter="biharmonic",
                         sdedit="none", size=96, max_seam_score=1e9, min_layout_iou=0.0,
                         execution=ExecutionConfig(executor="local", shard_size=8))
    dataset = run_pipeline(PairsPipeline(), config).dataset
    rows = dataset.to_arrow(["input_id", "layout", "crop_box"]).to_pylist()
    assert sorted(row["input_id"] for row in rows) == sorted(expected)
    for row in rows:  # the layout's palm: centre and radius of the hand box, in the 96 x 96 crop
        (x0, y0, x1, y1), crop = expected[row["input_id"]], row["crop_box"]
        scale = 96 / (crop[2] - crop[0])
        centre = ((x0 + x1) / 2 - crop[0]) * scale, ((y0 + y1) / 2 - crop[1]) * scale
        radius = max(x1 - x0, y1 - y0) / 2 * scale
        assert row["layout"][:3] == pytest.approx([2 * centre[0] / 96 - 1, 2 * centre[1] / 96 - 1,
                                                   np.sqrt(4 * radius / 96)], abs=1e-4)
