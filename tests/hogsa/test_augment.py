"""The `hogsa` augmentation pipeline end to end on a procedural stand-in sequence: annotations checked against
exact mesh renders in the crop's camera, the hand vertex, contact and object box annotations against a scene with known
answers, POM's guarantee, and HO3Pairs reading the result."""

import json

import numpy as np
import pytest
import torch
import trimesh
from scipy import ndimage
from scipy.spatial.transform import Rotation

from hoi_factory.codec import decode_image, decode_mask
from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.context import StageContext
from hoi_factory.pipeline import check_columns, stage_groups
from hoi_factory.run import run_pipeline
from hoi_factory.stage import Reject
from models.hand import load_hands
from models.hand.standin import NUM_VERTICES
from models.hogsa import pose_optimization as pom
from models.hogsa.hogs import ACTORS, HOGS, ScenePose
from models.render.camera import look_at
from tasks.hogsa.augment import (
    CONTACT_DISTANCE,
    AugmentConfig,
    AugmentPipeline,
    CompositeAndAnnotate,
    NovelPose,
    RenderNovelView,
    object_only_error,
)
from tasks.hogsa.hogs_models import FitHOGS, HOGSModelsConfig, HOGSModelsPipeline
from tasks.hogsa.sequence import CameraView, Frame, HandPose
from tasks.hogsa.standin_sequences import render_scene, skin_colours

LOCAL = ExecutionConfig(executor="local")
CROP = 96


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(store_url=str(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def augmented(settings):
    """Three samples of a bottle grasp (hands' Gaussians on MANO's mesh, the cheaper fit; the annotations on the
    default MANO-HD), POM on, stained samples kept: a 30-step fit is not a clean one."""
    run_pipeline(HOGSModelsPipeline(), HOGSModelsConfig(
        sequences=["bottle"], iterations=30, source={"size": 48, "cameras": 4, "frames": 1}, hand_mesh="mano",
        gaussians_per_face=1, sh_degree=0, execution=LOCAL, output={"dataset": "models"}), settings)
    return run_pipeline(AugmentPipeline(), AugmentConfig(
        models="models", samples_per_sequence=3, pom_iterations=20, render_size=96, crop_size=CROP,
        max_object_only_error=None, execution=LOCAL, output={"dataset": "augmented"}), settings).dataset


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


@pytest.fixture(scope="module")
def object_model(augmented, settings):
    """The fitted HOGS model the augmentation posed and rendered (its object mesh)."""
    [blob] = StageContext(settings).datasets.open_ref("models").to_arrow(["hogs"]).column("hogs").to_pylist()
    return HOGS.from_bytes(blob)


def test_projected_joints_land_on_the_exactly_rendered_hand(augmented, object_model):
    hands, mano = load_hands(mesh="mano-hd"), load_hands()
    rows = augmented.to_arrow().to_pylist()
    assert len(rows) + len(augmented.rejects()) == 3 and rows
    checked = 0
    for row in rows:
        assert np.shape(row["K"]) == (3, 3) and np.shape(row["R"]) == (3, 3)  # arrays keep their declared shape
        crop_camera = CameraView("crop", np.asarray(row["K"]), np.asarray(row["R"]), np.asarray(row["t"]), CROP, CROP)
        assert decode_image(row["image"]).shape[:2] == (CROP, CROP)
        for side in ("left", "right"):
            if row[f"{side}_mano"] is None:
                assert all(row[f"{side}_{kind}"] is None for kind in ("joints_3d", "joints_2d", "vertices", "contact"))
                continue
            out = hands[side].forward(**_hand_pose(row[f"{side}_mano"]))
            vertices = out.vertices[0].double().numpy()
            # the stored vertices: the MANO-HD hand in the crop camera's frame, its first 778 MANO's own
            stored = np.asarray(row[f"{side}_vertices"])
            assert stored.shape == (3093, 3)
            np.testing.assert_allclose(stored, vertices @ crop_camera.R.T + crop_camera.t, atol=1e-5)
            np.testing.assert_allclose(stored[:NUM_VERTICES], mano[side].forward(**_hand_pose(row[f"{side}_mano"]))
                                       .vertices[0].double().numpy() @ crop_camera.R.T + crop_camera.t, atol=1e-5)
            contact = np.asarray(row[f"{side}_contact"])
            assert contact.shape == (3093,) and contact.dtype == bool
            _check_contact_against_surface_samples(stored, contact, row, object_model, crop_camera)
            _, masks, _ = render_scene(crop_camera, [(vertices, hands[side].faces, skin_colours(len(vertices)), side)])
            silhouette = ndimage.binary_dilation(masks[side], iterations=1)
            joints_2d = np.asarray(row[f"{side}_joints_2d"])
            # the stored 3D joints are the model's joints in the crop camera's frame
            joints_3d = np.asarray(row[f"{side}_joints_3d"])
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
        _check_object_boxes(row, object_model, crop_camera)
    assert checked >= 2


def _posed_object(row: dict, model: HOGS) -> tuple[np.ndarray, np.ndarray]:
    """The object mesh (world vertices, faces) as the row poses it."""
    pose = ScenePose(object_rotation=torch.tensor(row["object_rotation"]),
                     object_translation=torch.tensor(row["object_translation"]), articulation=row["articulation"])
    with torch.no_grad():
        vertices = model.posed_vertices("object", pose, refined=False)  # the input mesh, as the annotations
    return vertices.double().numpy(), model.actors["object"].faces.numpy()


def _check_contact_against_surface_samples(vertices: np.ndarray, contact: np.ndarray, row: dict, model: HOGS,
                                           camera: CameraView) -> None:
    """Independently of MeshDistance: the distance to the nearest of dense surface samples (< 1 mm apart) bounds
    a vertex's distance to the surface from above, so a vertex left out is at least CONTACT_DISTANCE from them, and
    one in contact (outside within 5 mm, or inside, where POM leaves it shallow) within 5 mm plus their spacing."""
    from scipy.spatial import cKDTree

    world, faces = _posed_object(row, model)
    samples, _ = trimesh.sample.sample_surface_even(trimesh.Trimesh(world, faces, process=False), 100_000, seed=0)
    distance, _ = cKDTree(samples @ camera.R.T + camera.t).query(vertices)
    assert (distance[~contact] >= CONTACT_DISTANCE - 1e-4).all()
    assert (distance[contact] < CONTACT_DISTANCE + 1e-3).all(), distance[contact].max()


def _check_object_boxes(row: dict, model: HOGS, camera: CameraView) -> None:
    """The 2D box is the box of the object mesh rendered exactly (alone) in the crop's camera, to the pixel; it lies
    inside the projected 3D box; the 3D box is a rectangular box turned by the object's rotation, seen from the
    crop's camera."""
    box = np.asarray(row["object_box_2d"])
    corners_2d, corners = np.asarray(row["object_box_3d_2d"]), np.asarray(row["object_box_3d"])
    vertices, faces = _posed_object(row, model)
    _, masks, _ = render_scene(camera, [(vertices, faces, skin_colours(len(vertices)), "object")])
    ys, xs = np.nonzero(masks["object"])
    assert len(xs) > 20
    silhouette_box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # pixel edges
    np.testing.assert_allclose(np.clip(box, 0, CROP), silhouette_box, atol=1.0)
    assert (corners_2d.min(0) <= box[:2] + 1e-3).all() and (box[2:] <= corners_2d.max(0) + 1e-3).all()
    turn = np.asarray(row["R"]) @ np.asarray(row["object_rotation"])
    for bit, axis in ((1, 0), (2, 1), (4, 2)):
        edge = corners[bit] - corners[0]
        np.testing.assert_allclose(edge / np.linalg.norm(edge), turn[:, axis], atol=1e-4)


def test_pose_optimization_never_leaves_a_hand_inside_the_object(augmented):
    rows = augmented.to_arrow(["penetration_before", "penetration_after", "contact_after"]).to_pylist()
    assert all(row["penetration_after"] <= pom.PENETRATION_TOLERANCE + 1e-6 for row in rows)
    assert all(row["contact_after"] is not None and np.isfinite(row["contact_after"]) for row in rows)
    assert augmented.manifest.metrics["mean_penetration_after"] <= pom.PENETRATION_TOLERANCE


def test_every_stand_in_sample_scores_its_object_only_view_and_the_report_gives_the_mean(augmented):
    errors = augmented.to_arrow(["object_only_error"]).column("object_only_error").to_pylist()
    assert errors and all(e is not None and 0 < e < 1 for e in errors)
    assert augmented.manifest.metrics["mean_object_only_error"] == pytest.approx(np.mean(errors), rel=1e-5)


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


def _box_scene():
    """A 10 x 6 x 4 cm box object, turned and moved, seen by a camera 40 cm away; one hand with no MANO model
    needed (the annotation reads its vertices from `hand_models`)."""
    extents = np.array([0.10, 0.06, 0.04])
    mesh = trimesh.creation.box(extents=extents)
    rotation = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
    translation = np.array([0.03, -0.02, 0.5])
    R, t = look_at(np.array([0.2, 0.25, 0.2]), translation)
    camera = CameraView("crop", np.array([[300.0, 0, 60], [0, 310, 50], [0, 0, 1]]), R, t, 120, 100)
    return extents, mesh, rotation, translation, camera


class _PlacedHand:
    """A 'hand model' whose vertices are given points (world): what CompositeAndAnnotate asks of a hand model."""

    def __init__(self, points: np.ndarray):
        self.points = torch.as_tensor(points, dtype=torch.float64)

    def forward(self, global_orient, hand_pose, betas, transl):
        from models.hand import HandOutput

        return HandOutput(vertices=self.points[None], joints=self.points[None, :1].expand(1, 21, 3),
                          transforms=torch.eye(4).expand(1, 16, 4, 4))


def test_box_and_contact_annotations_match_a_scene_with_known_answers():
    extents, mesh, rotation, translation, camera = _box_scene()
    to_world = lambda local: local @ rotation.T + translation  # noqa: E731
    # Hand vertices at known distances from the box's +x face (local frame): on it, 3 mm out, 2 mm in, 1 cm out,
    # 6 mm beyond a corner diagonally (each axis 3.5 mm: 6.1 mm away), and at the centre (2 cm deep: a wrong sign,
    # as an open or inward-facing mesh gives, would call it 2 cm away).
    half = extents / 2
    local_points = np.array([[half[0], 0.01, 0.005], [half[0] + 0.003, 0, 0], [half[0] - 0.002, 0, 0],
                             [half[0] + 0.010, 0, 0], half + 0.0035, [0, 0, 0]])
    hand_world = to_world(local_points)
    row = {"camera": camera, "novel_frame": Frame(0, {"right": HandPose(np.zeros(3), np.zeros(45), np.zeros(10),
                                                                        np.zeros(3))}, rotation, translation),
           "hand_models": {"right": _PlacedHand(hand_world)}, "object_vertices": to_world(mesh.vertices),
           "object_faces": np.asarray(mesh.faces)}
    hands = CompositeAndAnnotate.hand_annotations(row, camera.K)
    assert hands["right_contact"].tolist() == [True, True, True, False, False, True]
    np.testing.assert_allclose(hands["right_vertices"], hand_world @ camera.R.T + camera.t, atol=1e-6)
    assert hands["left_vertices"] is None and hands["left_contact"] is None and hands["left_mano"] is None

    boxes = CompositeAndAnnotate.object_annotations(row, camera.K)
    # corner i: +half along x if bit 0 of i is set (else -half), y bit 1, z bit 2; to world, then to the camera
    signs = np.array([[1 if (i >> axis) & 1 else -1 for axis in range(3)] for i in range(8)])
    expected = to_world(signs * half) @ camera.R.T + camera.t
    np.testing.assert_allclose(boxes["object_box_3d"], expected, atol=1e-6)
    # projected by hand, coordinate by coordinate: u = fx X / Z + cx, v = fy Y / Z + cy
    (fx, _, cx), (_, fy, cy) = camera.K[:2]
    u, v = fx * expected[:, 0] / expected[:, 2] + cx, fy * expected[:, 1] / expected[:, 2] + cy
    np.testing.assert_allclose(boxes["object_box_3d_2d"], np.stack([u, v], 1), atol=1e-3)
    # the box mesh's vertices are its corners: its 2D box is theirs
    np.testing.assert_allclose(boxes["object_box_2d"], [u.min(), v.min(), u.max(), v.max()], atol=1e-3)


def test_every_column_is_described_with_its_shape_unit_and_frame():
    from hoi_factory.columns import describe

    columns = {field.name: describe(field) for field in AugmentPipeline.schema}
    assert all(info.get("description") for info in columns.values())
    expected = {"K": ((3, 3), "px"), "R": ((3, 3), None), "t": ((3,), "m"), "left_mano": ((61,), None),
                "right_joints_3d": ((21, 3), "m"), "left_joints_2d": ((21, 2), "px"),
                "right_vertices": ((None, 3), "m"), "left_contact": ((None,), None), "object_box_3d": ((8, 3), "m"),
                "object_box_3d_2d": ((8, 2), "px"), "object_box_2d": ((4,), "px")}
    for name, (shape, unit) in expected.items():
        assert tuple(columns[name]["shape"]) == shape and columns[name].get("unit") == unit, columns[name]
    assert "camera" in columns["right_vertices"]["frame"] and "pixels" in columns["object_box_2d"]["frame"]
    assert columns["left_contact"]["dtype"] == "bool" and columns["image"]["encoding"] == "png"
    assert columns["object_mask"]["encoding"] == "png-mask"


def test_object_only_error_is_zero_on_the_exact_render_and_the_offset_of_an_offset_one():
    _, mesh, rotation, translation, camera = _box_scene()
    vertices, faces = mesh.vertices @ rotation.T + translation, np.asarray(mesh.faces)
    colours = np.tile([200.0, 120.0, 40.0], (len(vertices), 1))
    exact, _, _ = render_scene(camera, [(vertices, faces, colours, "object")])
    assert object_only_error(exact / 255, camera, vertices, faces, colours) == 0
    assert object_only_error(exact / 255 - 0.1, camera, vertices, faces, colours) == pytest.approx(0.1)
    far = CameraView("away", camera.K, camera.R, camera.t + np.array([0, 0, -1.0]), camera.width, camera.height)
    assert object_only_error(exact / 255, far, vertices, faces, colours) is None  # behind the camera: no pixel


def test_a_stained_sample_is_rejected_with_its_error_and_a_real_capture_is_not_scored():
    """An unfitted stand-in model whose object Gaussians all took the skin colour: far from its true colours."""
    from tasks.hogsa.posing import frame_to_json
    from tasks.hogsa.standin_sequences import mesh_colours, procedural_sequence
    from tasks.procedural.hand_object import SKIN

    sequence = procedural_sequence(0, "box", frames=1, cameras=1, width=32, height=32)
    build = FitHOGS(HOGSModelsConfig(sequences=["box"], gaussians_per_face=1, sh_degree=0, hand_mesh="mano"))
    build.setup(StageContext(Settings()))
    model = build.build(sequence)
    objects = model.actors["object"]
    objects.set_colors(torch.tensor(SKIN / 255, dtype=torch.float32).expand(objects.num_gaussians, 3))
    parent = {"sample_id": "s", "input_id": "box", "seed": 1, "hogs": model.to_bytes(), "hand_model": "standin",
              "flat_hand_mean": False, "frames": json.dumps([frame_to_json(f) for f in sequence.frames]),
              "object_colours": mesh_colours(sequence.object_mesh).astype(np.uint8)}

    def render(limit, **row):
        config = AugmentConfig(pose_optimization=False, render_size=64, crop_size=32, max_object_only_error=limit,
                               hand_mesh="mano")
        posing = NovelPose(config)
        posing.setup(StageContext(Settings()))
        return RenderNovelView(config).process_row(posing.process_row({**parent, **row}))

    kept = render(None)
    camera, frame = kept["camera"], kept["novel_frame"]
    vertices = kept["object_vertices"]
    expected = object_only_error(kept["object_render"], camera, vertices, kept["object_faces"],
                                 parent["object_colours"].astype(float))
    assert kept["object_only_error"] == expected > 0.15 and frame.hands
    rejected = render(0.15)
    assert isinstance(rejected, Reject) and rejected.reason == "stained object-only view"
    assert f"{expected:.3f}" in rejected.detail
    assert render(0.15, object_colours=None)["object_only_error"] is None  # no truth: no score, no reject
