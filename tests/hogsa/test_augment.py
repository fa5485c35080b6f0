"""The `hogsa` augmentation pipeline end to end on a procedural stand-in sequence: annotations checked against
exact mesh renders in the crop's camera, POM's guarantee, and HO3Pairs reading the result."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from hoi_factory.config import ExecutionConfig
from hoi_factory.run import run_pipeline
from models.hand import load_hands
from models.hogsa import pose_optimization as pom
from tasks.hogsa.augment import AugmentConfig, AugmentPipeline
from tasks.hogsa.hogs_models import HOGSModelsConfig, HOGSModelsPipeline
from tasks.hogsa.sequence import CameraView
from tasks.images.stages import read_png
from tasks.procedural.hand_sequences import render_scene, skin_colours

LOCAL = ExecutionConfig(executor="local")
CROP = 96


@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
    import os

    store = tmp_path_factory.mktemp("store")
    old = os.environ.get("HOI_STORE_URL")
    os.environ["HOI_STORE_URL"] = str(store)
    try:
        run_pipeline(HOGSModelsPipeline(), HOGSModelsConfig(
            sequences=["bottle"], iterations=30, procedural_size=48, procedural_cameras=4, procedural_frames=1,
            gaussians_per_face=1, sh_degree=0, execution=LOCAL, output={"dataset": "models"}))
        version = run_pipeline(AugmentPipeline(), AugmentConfig(
            models="models", samples_per_sequence=3, pom_iterations=20, render_size=96, crop_size=CROP,
            execution=LOCAL, output={"dataset": "augmented"})).dataset
        yield version
    finally:
        os.environ.pop("HOI_STORE_URL") if old is None else os.environ.__setitem__("HOI_STORE_URL", old)


def _hand_pose(values):
    return {name: torch.tensor(values[start:start + size], dtype=torch.float32)[None]
            for name, start, size in (("global_orient", 0, 3), ("hand_pose", 3, 45), ("betas", 48, 10),
                                      ("transl", 58, 3))}


def test_projected_joints_land_on_the_exactly_rendered_hand(augmented):
    hands = load_hands()
    rows = augmented.to_arrow().to_pylist()
    assert len(rows) + len(augmented.rejects()) == 3 and rows
    checked = 0
    for row in rows:
        crop_camera = CameraView("crop", np.reshape(row["K"], (3, 3)), np.reshape(row["R"], (3, 3)),
                                 np.asarray(row["t"]), CROP, CROP)
        assert read_png(row["image"]).shape[:2] == (CROP, CROP)
        for side in ("left", "right"):
            if not row[f"{side}_mano"]:
                continue
            out = hands[side].forward(**_hand_pose(row[f"{side}_mano"]))
            vertices = out.vertices[0].double().numpy()
            _, masks, _ = render_scene(crop_camera, [(vertices, hands[side].faces, skin_colours(len(vertices)), side)])
            silhouette = ndimage.binary_dilation(masks[side], iterations=1)
            joints_2d = np.reshape(row[f"{side}_joints_2d"], (21, 2))
            # the stored 3D joints are the model's joints in the crop camera's frame
            joints_3d = np.reshape(row[f"{side}_joints_3d"], (21, 3))
            world = out.joints[0].double().numpy()
            assert np.allclose(joints_3d, world @ crop_camera.R.T + crop_camera.t, atol=1e-4)
            inside_image = (joints_2d >= 0).all(1) & (joints_2d < CROP).all(1)
            pixels = np.floor(joints_2d[inside_image]).astype(int)
            on_hand = silhouette[pixels[:, 1], pixels[:, 0]]
            # (a hand can reach past the novel camera's image edge: those joints fall outside the crop)
            assert inside_image.sum() >= 10 and on_hand.mean() > 0.95, (side, inside_image.sum(), on_hand.mean())
            # the Gaussian render's visible hand lies on the exact hand
            visible = read_png(row[f"{side}_mask"]) > 127
            if visible.sum() > 20:
                assert (visible & ndimage.binary_dilation(masks[side], iterations=2)).sum() / visible.sum() > 0.8
            checked += 1
    assert checked >= 2


def test_pose_optimization_never_leaves_a_hand_inside_the_object(augmented):
    rows = augmented.to_arrow(["penetration_before", "penetration_after", "contact_after"]).to_pylist()
    assert all(row["penetration_after"] <= pom.PENETRATION_TOLERANCE + 1e-6 for row in rows)
    assert all(np.isfinite(row["contact_after"]) for row in rows)
    assert augmented.manifest.metrics["mean_penetration_after"] <= pom.PENETRATION_TOLERANCE


def test_ho3pairs_reads_hogsa_renders_with_their_true_object_only_view(augmented):
    from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline

    # Two MANO hands without forearms fit the one-hand lollipop layout loosely: accept any overlap here.
    pairs = run_pipeline(PairsPipeline(), PairsConfig(
        source="hogsa", inputs="augmented", inpainter="biharmonic", sdedit_model="none", size=64,
        min_layout_iou=0.0, max_hand_residue=1.0, max_seam_score=100.0, execution=LOCAL,
        output={"dataset": "pairs"})).dataset
    assert pairs.manifest.parents == [augmented.ref]
    rows = pairs.to_arrow(["psnr", "psnr_inpainted", "object_class", "hand_mask"]).to_pylist()
    assert len(rows) == len(augmented), pairs.rejects().to_pylist()
    for row in rows:  # every pair is scored against HOGSA's object-only render of the same view
        assert row["object_class"] == "bottle" and np.isfinite(row["psnr"]) and np.isfinite(row["psnr_inpainted"])
        assert (read_png(row["hand_mask"]) > 127).sum() >= 50
