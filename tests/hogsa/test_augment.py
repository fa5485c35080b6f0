"""The `hogsa` augmentation pipeline end to end on a procedural stand-in sequence: annotations checked against
exact mesh renders in the crop's camera, POM's guarantee, and HO3Pairs reading the result."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from hoi_factory.codec import decode_image, decode_mask
from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.context import StageContext
from hoi_factory.pipeline import check_columns, stage_groups
from hoi_factory.run import run_pipeline
from hoi_factory.stage import Reject
from models.hand import load_hands
from models.hogsa import pose_optimization as pom
from models.hogsa.hogs import ACTORS
from tasks.hogsa.augment import AugmentConfig, AugmentPipeline, CompositeAndAnnotate
from tasks.hogsa.hogs_models import HOGSModelsConfig, HOGSModelsPipeline
from tasks.hogsa.sequence import CameraView, Frame
from tasks.hogsa.standin_sequences import render_scene, skin_colours

LOCAL = ExecutionConfig(executor="local")
CROP = 96


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(store_url=str(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def augmented(settings):
    run_pipeline(HOGSModelsPipeline(), HOGSModelsConfig(
        sequences=["bottle"], iterations=30, source={"size": 48, "cameras": 4, "frames": 1},
        gaussians_per_face=1, sh_degree=0, execution=LOCAL, output={"dataset": "models"}), settings)
    return run_pipeline(AugmentPipeline(), AugmentConfig(
        models="models", samples_per_sequence=3, pom_iterations=20, render_size=96, crop_size=CROP,
        execution=LOCAL, output={"dataset": "augmented"}), settings).dataset


@pytest.mark.parametrize("variant", [{}, {"super_resolution": "srm"}, {"pose_optimization": False},
                                     {"super_resolution": "srm", "gpus": 1.0}])
def test_declared_columns_chain(variant, tmp_path):
    pipeline = AugmentPipeline()
    for config in (AugmentConfig(**variant), pipeline.demo_config(tmp_path, LOCAL).model_copy(update=variant)):
        stages = pipeline.stages(config)
        check_columns(pipeline, stages)
        # the HOGS model lives in the rows from NovelPose to RenderNovelView: one worker pool holds them both
        [group] = [g for g in stage_groups(stages) if any("hogs_model" in stages[i].makes for i in g)]
        assert all(i in group for i, stage in enumerate(stages) if "hogs_model" in stage.needs)


def test_an_unreadable_background_photo_is_an_explicit_reject(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    stage = CompositeAndAnnotate(AugmentConfig(backgrounds=str(tmp_path / "photos"), crop_size=32))
    stage.setup(StageContext(Settings(store_url=str(tmp_path / "store"))))
    size = 64
    coverage = np.zeros((size, size, len(ACTORS)))
    coverage[16:48, 16:48, ACTORS.index("left")] = 1
    camera = CameraView("novel", np.array([[60.0, 0, 32], [0, 60, 32], [0, 0, 1]]), np.eye(3), np.zeros(3), size, size)
    row = {"sample_id": "a", "input_id": "m", "seed": 0, "camera": camera, "alpha": coverage.sum(-1),
           "coverage": coverage, "render": np.zeros((size, size, 3)), "object_render": np.zeros((size, size, 3)),
           "object_alpha": np.zeros((size, size)), "hand_models": {},
           "novel_frame": Frame(0, {}, np.eye(3), np.zeros(3))}
    result = stage.process_row(row)
    assert isinstance(result, Reject) and result.reason == "unreadable background" and "broken.jpg" in result.detail


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
        assert decode_image(row["image"]).shape[:2] == (CROP, CROP)
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
            if not masks[side].any() or not inside_image.any():
                continue  # the novel camera can miss one hand entirely: no joint lands in the crop
            pixels = np.floor(joints_2d[inside_image]).astype(int)
            on_hand = silhouette[pixels[:, 1], pixels[:, 0]]
            # (a hand can reach past the novel camera's image edge: those joints fall outside the crop)
            assert on_hand.mean() > 0.95, (side, inside_image.sum(), on_hand.mean())
            # the Gaussian render's visible hand lies on the exact hand
            visible = decode_mask(row[f"{side}_mask"])
            if visible.sum() > 20:
                assert (visible & ndimage.binary_dilation(masks[side], iterations=2)).sum() / visible.sum() > 0.8
            checked += 1
    assert checked >= 2


def test_pose_optimization_never_leaves_a_hand_inside_the_object(augmented):
    rows = augmented.to_arrow(["penetration_before", "penetration_after", "contact_after"]).to_pylist()
    assert all(row["penetration_after"] <= pom.PENETRATION_TOLERANCE + 1e-6 for row in rows)
    assert all(np.isfinite(row["contact_after"]) for row in rows)
    assert augmented.manifest.metrics["mean_penetration_after"] <= pom.PENETRATION_TOLERANCE


def test_ho3pairs_reads_hogsa_renders_with_their_true_object_only_view(augmented, settings):
    from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline

    # Two MANO hands without forearms fit the one-hand lollipop layout loosely: accept any overlap here.
    pairs = run_pipeline(PairsPipeline(), PairsConfig(
        source="hogsa", inputs="augmented", inpainter="biharmonic", sdedit="none", size=64,
        min_layout_iou=0.0, max_hand_residue=1.0, max_seam_score=100.0, execution=LOCAL,
        output={"dataset": "pairs"}), settings).dataset
    assert pairs.manifest.parents == [augmented.ref]
    rows = pairs.to_arrow(["psnr", "psnr_inpainted", "object_class", "hand_mask"]).to_pylist()
    # The official crop (2.6x the object box, inside the frame) can refuse a view whose object sits at the frame
    # edge: a decision with its reason. Nothing else may drop a sample.
    rejects = pairs.rejects().to_pylist()
    assert all(r["kind"] == "reject" and r["reason"] == "object does not fit a square crop inside the frame"
               for r in rejects), rejects
    assert len(rows) + len(rejects) == len(augmented) and rows
    for row in rows:  # every pair is scored against HOGSA's object-only render of the same view
        assert row["object_class"] == "bottle" and np.isfinite(row["psnr"]) and np.isfinite(row["psnr_inpainted"])
        assert decode_mask(row["hand_mask"]).sum() >= 50
