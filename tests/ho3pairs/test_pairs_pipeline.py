"""HO3Pairs end to end on procedural hand–object scenes, whose true object-only image is known."""

import importlib.util
import itertools
import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from hoi_factory.codec import decode_image, decode_mask, encode_png
from hoi_factory.config import ConfigError, ExecutionConfig, Settings
from hoi_factory.context import StageContext
from hoi_factory.pipeline import PlanError, check_columns
from hoi_factory.run import run_pipeline
from hoi_factory.stage import Reject
from tasks.ho3pairs.checks import hand_residue, seam_score
from tasks.ho3pairs.crop import CropAroundInteraction, crop_resize, mask_box, object_crop_box
from tasks.ho3pairs.inpaint import grow
from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline
from tasks.ho3pairs.sources import SOURCE_ITEM_KEYS, LoadHOGSASample, LoadSample
from tasks.procedural.hand_object import render_hand_object, write_hand_object_folder

LOCAL = ExecutionConfig(executor="local", shard_size=8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * math.log10(255**2 / mse)


@pytest.fixture
def scenes(tmp_path):
    folder = tmp_path / "hand-object"
    expected = write_hand_object_folder(folder, count=12, seed=1)
    return folder, expected


def test_pairs_from_procedural_scenes_keep_every_input_accounted_for(scenes, local_store_env):
    folder, expected = scenes
    dataset = run_pipeline(PairsPipeline(), PairsConfig(inputs=str(folder), inpainter="biharmonic", sdedit="none",
                                                        size=128, execution=LOCAL)).dataset
    manifest = dataset.manifest
    assert manifest.num_inputs == 12 + len(expected) == manifest.num_samples + manifest.num_rejects
    assert manifest.num_errors == 0  # every bad input is a reject with its reason, not an error
    rejects = {r["input_id"]: r["reason"] for r in dataset.rejects().to_pylist()}
    for path, reason in expected.items():
        assert rejects[path] == reason
    assert manifest.num_samples >= 6  # most stand-in grasps fit a layout
    classes = json.loads((folder / "classes.json").read_text())
    rows = dataset.to_arrow().to_pylist()
    for row in rows:
        stem = row["input_id"].split("/")[-1].rsplit(".", 1)[0]
        assert row["object_class"] == classes[stem]
        hoi, obj, truth = (decode_image(row[key]) for key in ("hoi_image", "object_image", "true_object_image"))
        region = decode_mask(row["inpaint_mask"])
        assert hoi.shape == obj.shape == truth.shape == (128, 128, 3) and len(row["layout"]) == 5
        assert row["sdedit_image"] is None  # SDEdit off: absent, not empty bytes
        assert (obj[~region] == hoi[~region]).all()  # only the repainted region changes
        # The figures stored are the ones an independent computation gives, and inpainting beats leaving the hand.
        assert row["psnr"] == pytest.approx(psnr(obj, truth), abs=1e-3)
        assert row["psnr"] > psnr(hoi, truth)
        assert row["hand_residue"] < 0.5 or math.isnan(row["hand_residue"])
    assert manifest.metrics["mean_psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows]), abs=1e-3)
    assert manifest.metrics["mean_ssim"] > 0.8 and manifest.metrics["mean_psnr"] > 25
    assert manifest.metrics["mean_psnr_sdedit"] is None  # no SDEdit model: not measured, not zero
    assert "pairs" in manifest.report


def test_sanity_checks_see_a_hand_left_in_place_and_a_pasted_patch():
    scene = render_hand_object(5)
    box = object_crop_box(mask_box(scene.object_mask), scene.image.shape[1], scene.image.shape[0])
    hoi, truth = crop_resize(scene.image, box, 128, False), crop_resize(scene.object_only, box, 128, False)
    hand = crop_resize(scene.hand_mask, box, 128, True)
    region = grow(hand)
    assert hand_residue(hoi, hoi, hand, region) > 0.9  # "inpainting" that left the hand: caught
    assert hand_residue(hoi, truth, hand, region) < 0.1  # the true object-only view: clean
    patch = truth.copy()
    patch[region] = np.random.default_rng(0).integers(0, 256, (region.sum(), 3))
    assert seam_score(patch, region) > 3 * seam_score(truth, region)


def _mask(box: tuple[int, int, int, int], width: int = 200, height: int = 100) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


def test_crop_is_the_official_square_around_the_object_kept_inside_the_frame():
    # Centred: object x 90..110, y 45..55 -> longer side 20, square side 2.6 x 20 = 52 around (100, 50).
    assert object_crop_box(mask_box(_mask((90, 45, 110, 55))), 200, 100) == pytest.approx((74, 24, 126, 76))
    # On the left edge: object x 0..20, y 40..60 -> (-16, 24, 36, 76), clipped (0, 24, 36, 76); squared around
    # (18, 50) with half 26 -> (-8, 24, 44, 76), clipped (0, 24, 44, 76); shrunk to half 22 around (22, 50).
    assert object_crop_box(mask_box(_mask((0, 40, 20, 60))), 200, 100) == pytest.approx((0, 28, 44, 72))
    # In the corner: object x 0..20, y 0..20 -> (-16, -16, 36, 36), clipped to (0, 0, 36, 36): already square.
    assert object_crop_box(mask_box(_mask((0, 0, 20, 20))), 200, 100) == pytest.approx((0, 0, 36, 36))
    # Larger than the frame allows: object 40 x 40 around (100, 50) -> side 104 > 100 px of height; clipped to
    # (48, 0, 152, 100), then shrunk to the frame's height around (100, 50).
    assert object_crop_box(mask_box(_mask((80, 30, 120, 70))), 200, 100) == pytest.approx((50, 0, 150, 100))


def test_crop_stage_cuts_around_the_object_and_rejects_what_no_square_holds():
    image = np.arange(100 * 200 * 3, dtype=np.uint8).reshape(100, 200, 3)
    hand, obj = _mask((20, 40, 40, 60)), _mask((0, 40, 20, 60))
    cropped = CropAroundInteraction(size=44).process_row(
        {"image_array": image, "hand_mask_array": hand, "object_mask_array": obj, "hand_box": [20, 40, 40, 60]})
    assert cropped["crop_box"] == pytest.approx([0, 28, 44, 72])  # the object's box alone, as above
    assert (cropped["image_array"] == image[28:72, 0:44]).all()  # 44 px to 44 px: the pixels themselves
    assert cropped["hand_box_crop"] == pytest.approx([20, 12, 40, 32])
    assert cropped["hand_mask_array"].sum() == hand.sum()  # the hand lies inside: all of it is kept
    # Without an object mask the hand's box stands in: hand x 20..40 -> square (4, 24, 56, 76).
    no_object = CropAroundInteraction(size=52).process_row({"image_array": image, "hand_mask_array": hand})
    assert no_object["crop_box"] == pytest.approx([4, 24, 56, 76])
    # An object spanning the frame's width fits no square inside a 200 x 100 frame; an empty one is no object.
    for box, reason in (((0, 45, 200, 55), "object does not fit a square crop inside the frame"),
                        ((0, 0, 0, 0), "empty object mask")):
        rejected = CropAroundInteraction(size=32).process_row(
            {"sample_id": "s", "image_array": image, "hand_mask_array": hand, "object_mask_array": _mask(box)})
        assert isinstance(rejected, Reject) and rejected.reason == reason


def test_tiny_diffusers_inpainting_and_sdedit_run_batched_on_ray(scenes, local_store_env, local_ray):
    folder, _ = scenes
    config = PairsConfig(inputs=str(folder), inpainter={"model": "tiny"}, sdedit={"model": "tiny"}, steps=4, size=64,
                         max_hand_residue=1.0, max_seam_score=1e9,  # random weights: keep the noise to inspect it
                         execution=ExecutionConfig(executor="ray", workers=2, shard_size=4))
    dataset = run_pipeline(PairsPipeline(), config).dataset
    assert dataset.manifest.run["executor"].startswith("ray")
    assert dataset.manifest.num_samples + dataset.manifest.num_rejects == dataset.manifest.num_inputs
    assert dataset.manifest.num_errors == 0
    rows = dataset.to_arrow().to_pylist()
    assert rows and {r["input_id"] for r in rows}.isdisjoint(r["input_id"] for r in dataset.rejects().to_pylist())
    for row in rows:
        hoi, obj, edited = (decode_image(row[key]) for key in ("hoi_image", "object_image", "sdedit_image"))
        region = decode_mask(row["inpaint_mask"])
        assert obj.shape == edited.shape == (64, 64, 3)
        assert (obj[~region] == hoi[~region]).all() and (obj[region] != hoi[region]).any()
        assert np.isfinite(row["psnr_sdedit"])
    # The sanity filter on its defaults drops the random-weight noise patches, with reasons.
    strict = run_pipeline(PairsPipeline(), config.model_copy(update={
        "max_hand_residue": 0.5, "max_seam_score": 3.0,
        "output": config.output.model_copy(update={"dataset": "strict"})})).dataset
    assert any(reason.startswith("HandRemoved:") for reason in strict.manifest.reject_reasons)


def test_hoi4d_layout_reads_colour_masks_and_the_class_folder(tmp_path, local_store_env):
    sequence = tmp_path / "hoi4d" / "ZY20210800001" / "H1" / "C2" / "N01" / "S1" / "s1" / "T1"
    (sequence / "align_rgb").mkdir(parents=True)
    (sequence / "2Dseg" / "mask").mkdir(parents=True)
    for frame in range(3):
        scene = render_hand_object(20 + frame, object_class="mug")
        Image.fromarray(scene.image).save(sequence / "align_rgb" / f"{frame:05d}.jpg", quality=95)
        colours = np.zeros(scene.image.shape, np.uint8)
        colours[scene.object_mask] = (0, 128, 0)
        x0, y0, x1, y1 = scene.hand_box
        colours[y0:y1, x0:x1][scene.hand_mask[y0:y1, x0:x1]] = (128, 0, 0)  # HOI4D labels the hand, not the arm
        if frame < 2:  # the last frame has no mask: rejected
            Image.fromarray(colours).save(sequence / "2Dseg" / "mask" / f"{frame:05d}.png")
    with pytest.raises(ConfigError, match="source.hand_colours"):
        from hoi_factory.config import validate_run_config
        validate_run_config(PairsConfig, {"source": "hoi4d", "inputs": str(tmp_path / "hoi4d")})
    config = PairsConfig(source={"kind": "hoi4d", "hand_colours": [(128, 0, 0)]}, inputs=str(tmp_path / "hoi4d"),
                         inpainter="biharmonic", sdedit="none", size=96, max_seam_score=1e9, execution=LOCAL)
    dataset = run_pipeline(PairsPipeline(), config).dataset
    assert dataset.manifest.num_inputs == 3 and dataset.manifest.num_errors == 0
    assert {r["reason"] for r in dataset.rejects().to_pylist()} >= {"no hand mask provided"}
    assert dataset.manifest.num_samples >= 1  # rows to check below (a hand without its arm may fit no splat)
    for row in dataset.to_arrow().to_pylist():
        assert row["object_class"] == "mug" and row["source"] == "hoi4d"
        assert math.isnan(row["psnr"])  # no true object-only view in HOI4D: not measured
    # Without keypoints, the hand box (the layout's palm) is the box of HOI4D's hand mask, which holds no forearm.
    load = LoadSample("hoi4d", [(128, 0, 0)])
    load.setup(StageContext(Settings(store_url=str(tmp_path / "store"))))
    loaded = load.process_row({"sample_id": "s", "image": str(sequence / "align_rgb" / "00000.jpg"),
                               "hoi4d_mask": str(sequence / "2Dseg" / "mask" / "00000.png")})
    assert loaded["hand_box"] == list(render_hand_object(20, object_class="mug").hand_box)


def test_videos_are_sampled_at_the_frame_rate(tmp_path):
    av = pytest.importorskip("av")
    from tasks.ho3pairs.sources import plan_video, read_video_frame

    folder = tmp_path / "videos"
    folder.mkdir()
    with av.open(str(folder / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):  # 3 s; frame i is grey level 8 * i
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    (folder / "broken.mp4").write_bytes(b"not a video")
    items = plan_video(str(folder), frame_rate=2.0, object_class="cup", storage_options={})
    assert all(SOURCE_ITEM_KEYS["video"] <= item.keys() for item in items)  # what the pipeline declares
    clip = [item for item in items if item["input_id"] == "clip.mp4"]
    assert [item["frame_time"] for item in clip] == pytest.approx([0, 0.5, 1.0, 1.5, 2.0, 2.5])
    for item in clip:
        grey = read_video_frame(item["video"], item["frame_time"], {}).mean()
        assert abs(grey - 8 * round(item["frame_time"] * 10)) < 3  # the frame at that time, not a neighbour
    assert [item.get("unreadable") is not None for item in items if item["input_id"] == "broken.mp4"] == [True]

    # Bad videos are rejects with their reason: unreadable at planning, or a frame past the end.
    load = LoadSample("video", [])
    load.setup(StageContext(Settings(store_url=str(tmp_path / "store"))))
    broken = next(item for item in items if item["input_id"] == "broken.mp4")
    past_end = {**clip[0], "frame_time": 10.0}
    results = [load.process_row({**item, "sample_id": "s"}) for item in (broken, past_end)]
    assert [r.reason if isinstance(r, Reject) else r for r in results] == ["unreadable video", "no frame at that time"]


def test_bad_configurations_and_folders_fail_before_any_work(tmp_path, local_store_env, monkeypatch):
    from hoi_factory.config import validate_run_config

    with pytest.raises(ConfigError, match="videos carry no hand masks"):
        validate_run_config(PairsConfig, {"source": "video", "inputs": str(tmp_path)})
    with pytest.raises(PlanError, match="does not exist"):
        run_pipeline(PairsPipeline(), PairsConfig(inputs=str(tmp_path / "missing"), execution=LOCAL))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlanError, match="no images/ folder"):
        run_pipeline(PairsPipeline(), PairsConfig(inputs=str(tmp_path / "empty"), execution=LOCAL))
    folder = tmp_path / "scenes"
    write_hand_object_folder(folder, count=2, with_bad_files=False)
    (folder / "hand_boxes.json").write_text('{"scene-00000": [10, 10, 5, 20]}')
    with pytest.raises(PlanError, match="hand_boxes.json must map image stems to hand boxes"):
        run_pipeline(PairsPipeline(), PairsConfig(inputs=str(folder), execution=LOCAL))
    from tasks.ho3pairs.hands import make_segmenter

    with pytest.raises(ValueError, match="hand_landmarker"):
        make_segmenter("mediapipe", None)
    with pytest.raises(ValueError, match="needs hands.model: a folder with config.yaml"):
        make_segmenter("detectron2", str(tmp_path))
    (tmp_path / "config.yaml").write_text("MODEL: {}\n")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with monkeypatch.context() as hidden:  # where detectron2 is missing: a clear message, not a crash
        hidden.setitem(sys.modules, "detectron2", None)
        with pytest.raises(ImportError, match="detectron2"):
            make_segmenter("detectron2", str(tmp_path))
    if importlib.util.find_spec("detectron2") is not None:  # where it is there: the damaged weights are named
        with pytest.raises(ValueError, match="model.safetensors' is not a readable safetensors file"):
            make_segmenter("detectron2", str(tmp_path))


def test_mediapipe_landmarks_become_a_hand_and_forearm_mask():
    from tasks.ho3pairs.hands import mask_from_landmarks

    # An upright open hand: wrist at the bottom (64, 100), middle knuckle 24 px above, fingertips higher up.
    rng = np.random.default_rng(0)
    landmarks = np.array([[64, 100]] + [[64 + rng.uniform(-14, 14), 100 - rng.uniform(10, 50)] for _ in range(20)])
    landmarks[9] = [64, 76]
    mask = mask_from_landmarks(landmarks, 128, 200)
    assert mask.shape == (200, 128)
    assert all(mask[int(y), int(x)] for x, y in landmarks)  # every landmark is inside
    # The forearm leaves the wrist away from the fingers (down), 2.5 knuckle lengths = 60 px long.
    assert mask[100 + 50, 64] and not mask[100 + 70, 64]
    assert not mask[100 + 30, 64 + 20]  # and is about as wide as the palm, not wider


def test_repaint_inpainting_keeps_known_pixels(scenes, local_store_env):
    folder, _ = scenes
    with pytest.raises(ConfigError, match=r"inpainter.model: Field required \(an unconditional pixel-space DDPM"):
        from hoi_factory.config import validate_run_config
        validate_run_config(PairsConfig, {"inputs": str(folder), "inpainter": "repaint"})
    config = PairsConfig(inputs=str(folder), inpainter={"kind": "repaint", "model": "tiny", "jump_length": 2,
                                                        "resamples": 2}, steps=4, sdedit="none", size=32,
                         max_hand_residue=1.0, max_seam_score=1e9, execution=LOCAL)
    rows = run_pipeline(PairsPipeline(), config).dataset.to_arrow().to_pylist()
    assert rows
    for row in rows:
        hoi, obj = decode_image(row["hoi_image"]), decode_image(row["object_image"])
        region = decode_mask(row["inpaint_mask"])
        assert (obj[~region] == hoi[~region]).all() and (obj[region] != hoi[region]).any()


def test_corrupt_or_mismatched_hogsa_renders_are_rejected_with_the_reason():
    image, mask = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    row = {"sample_id": "s", "input_id": "i", "image": encode_png(image), "object_only_image": encode_png(image),
           "left_mask": encode_png(mask), "right_mask": encode_png(np.zeros_like(mask)),
           "object_mask": encode_png(mask), "object_name": "mug",
           "left_joints_2d": [8, 9, 15, 12, 10, 15.5], "right_joints_2d": []}  # 3 joints (x, y), flattened
    loaded = LoadHOGSASample().process_row(row)
    assert loaded["hand_mask_array"].sum() == 64 and loaded["object_class"] == "mug"
    assert loaded["hand_box"] == [8, 9, 15, 15.5]  # the box of the seen hand's joints
    corrupt = LoadHOGSASample().process_row({**row, "left_mask": b"not a png"})
    assert (corrupt.reason, corrupt.detail) == ("unreadable parent image", "left_mask")
    smaller = LoadHOGSASample().process_row({**row, "object_mask": encode_png(mask[:-4])})
    assert smaller.reason == "parent image sizes differ"


def test_every_config_variant_declares_a_chain_that_holds(tmp_path):
    pipeline = PairsPipeline()
    configs = [PairsConfig(inputs=str(tmp_path)),
               pipeline.demo_config(tmp_path / "demo", ExecutionConfig(executor="local"))]
    sources = ["folder", {"kind": "hoi4d", "hand_colours": [(128, 0, 0)]}, "video", "hogsa"]
    inpainters = ["diffusers", {"kind": "repaint", "model": "tiny"}, "biharmonic"]
    hands = ["provided", {"kind": "mediapipe", "model": "hand_landmarker.task"},
             {"kind": "detectron2", "model": "hands"}]
    for source, inpainter, hand, sdedit in itertools.product(sources, inpainters, hands, ("none", {"model": "tiny"})):
        if source == "video" and hand == "provided":
            continue  # refused by the config: videos carry no masks
        configs.append(PairsConfig(source=source, inputs=str(tmp_path), inpainter=inpainter, hands=hand,
                                   sdedit=sdedit, gpus=0.0 if sdedit == "none" else 1.0))
    for config in configs:
        check_columns(pipeline, pipeline.stages(config), config)
        assert pipeline.planned_keys(config) == SOURCE_ITEM_KEYS[config.source.kind] | {"source"}
