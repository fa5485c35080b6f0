"""Learned models of the views pipeline: torchvision perception (output parsing against hand-made model outputs,
save/load round trip) and diffusers text-to-image (the `tiny` pipeline through the real loading code), then
the views pipeline on both. Real weights are a download away; their accuracy is theirs, not tested here."""

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision", reason="the torchvision backend is the [vision] extra")
pytest.importorskip("diffusers", reason="the text-to-image source is the [diffusion] extra")

from hoi_factory.config import ConfigError, validate_run_config  # noqa: E402
from hoi_factory.run import run_pipeline  # noqa: E402
from models.diffusion import Sampling, generate, load_diffusion  # noqa: E402
from models.perception import RCNNPerception, detections_from_outputs, peak_probability  # noqa: E402
from tasks.chorus.perception import reason_to_reject  # noqa: E402
from tasks.chorus.prompts import PromptsConfig, PromptsPipeline  # noqa: E402
from tasks.chorus.views import ViewsConfig, ViewsPipeline  # noqa: E402


def box_mask(x0, y0, x1, y1, size=64):
    mask = torch.zeros(1, size, size)
    mask[0, y0:y1, x0:x1] = 0.9
    return mask


def test_outputs_become_labelled_detections_with_the_overlapping_persons_keypoints():
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    categories = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    person, cup = categories.index("person"), categories.index("cup")
    masks = {"boxes": torch.tensor([[10., 5, 40, 60], [35, 20, 50, 35], [0, 0, 5, 5]]),
             "labels": torch.tensor([person, cup, cup]), "scores": torch.tensor([0.95, 0.9, 0.01]),
             "masks": torch.stack([box_mask(10, 5, 40, 60), box_mask(35, 20, 50, 35), box_mask(0, 0, 5, 5)])}
    points = torch.zeros(2, 17, 3)
    points[0, :, 0], points[0, :, 1] = 20, 30
    keypoints = {"boxes": torch.tensor([[50., 50, 60, 60], [11, 6, 41, 59]]), "keypoints": points.flip(0),
                 "keypoints_scores": torch.stack([torch.full((17,), -1.0), torch.full((17,), 3.0)])}
    found = detections_from_outputs(masks, keypoints, categories)
    assert [d.label for d in found] == ["person", "cup"]  # the 0.01 detection is dropped
    assert found[0].box == (10, 5, 40, 60) and found[1].box == (35, 20, 50, 35)
    # The keypoint detection boxed like the person (IoU ~0.9) gives its keypoints and scores.
    assert np.allclose(found[0].keypoints[:, :2], [20, 30]) and np.allclose(found[0].keypoints[:, 2], 3.0)
    assert found[1].keypoints is None
    assert reason_to_reject(found, "cup", 64, 64) is None


def test_peak_probability_is_the_softmax_mass_around_the_peak():
    """56 x 56 heatmaps, hand-worked: one cell at logit log(27999), the other 3135 at 0, so the softmax gives the
    peak 27999 / 31134 and every other cell 1 / 31134. In the middle the 5 x 5 window holds the peak and 24
    others: 28023 / 31134 = 0.9001; in a corner only 8 others: 28007 / 31134 = 0.8996. A flat heatmap peaks at
    its first cell, a corner: 9 / 3136.
    """
    logits = torch.zeros(1, 3, 56, 56, dtype=torch.float64)
    logits[0, 0, 30, 20] = logits[0, 1, 0, 0] = np.log(27999)
    confidence = peak_probability(logits)[0]
    assert confidence[0].item() == pytest.approx(28023 / 31134)
    assert confidence[1].item() == pytest.approx(28007 / 31134)
    assert confidence[2].item() == pytest.approx(9 / 3136)  # flat: far below the paper's 0.7
    one_cell = torch.full((1, 1, 56, 56), -1e4)
    one_cell[0, 0, 5, 7] = 0
    assert peak_probability(one_cell)[0, 0] == pytest.approx(1.0)  # all the mass on one cell
    scores = peak_probability(torch.randn(4, 17, 56, 56) * 5)
    assert scores.shape == (4, 17) and (scores >= 0).all() and (scores <= 1).all()


def test_keypoint_confidences_are_the_calibrated_peak_probabilities_of_each_kept_box():
    """Random weights, two images: each kept box's 17 confidences are the peak probabilities of its own heatmap
    rows (read here by a second hook), where torchvision's own scores are logits beyond 0-1."""
    torch.manual_seed(0)
    perception = RCNNPerception(*RCNNPerception.architectures(min_size=64))
    heatmaps = []
    perception.keypoint_model.roi_heads.keypoint_predictor.register_forward_hook(
        lambda module, inputs, output: heatmaps.append(output))
    tensors = [torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (3, 64, 80))).float() / 255
               for seed in (0, 1)]
    with torch.no_grad():
        raw = perception.keypoint_model(tensors)
    calibrated = perception.keypoints(tensors)
    boxes = [len(r["boxes"]) for r in raw]
    assert sum(boxes) > 0 and [len(c["boxes"]) for c in calibrated] == boxes
    assert torch.cat([r["keypoints_scores"] for r in raw]).abs().max() > 1
    for found, expected in zip(calibrated, peak_probability(heatmaps[-1]).split(boxes)):
        assert found["keypoints_scores"].shape == expected.shape
        assert torch.equal(found["keypoints_scores"], expected)
        assert ((expected >= 0) & (expected <= 1)).all()


def test_tiny_text_to_image_is_seeded_per_sample(tmp_path):
    # built, saved with save_pretrained, loaded with from_pretrained
    pipeline = load_diffusion("tiny", "text-to-image", cache_dir=tmp_path)
    assert (tmp_path / "tiny-text-to-image" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    sampling = Sampling(steps=2, guidance_scale=7.5, size=32)
    batch = generate(pipeline, ["a person holding a cup", "a person wearing a hat"], [1, 2], sampling)
    alone = generate(pipeline, ["a person wearing a hat"], [2], sampling)[0]
    assert batch[1].shape == (32, 32, 3) and batch[1].dtype == np.uint8
    assert np.abs(alone.astype(int) - batch[1]).max() <= 1  # same seed, same image, whatever the batch
    other_seed = generate(pipeline, ["a person wearing a hat"], [3], sampling)[0]
    assert np.abs(other_seed.astype(int) - alone).mean() > 5


def test_generated_images_need_a_learned_perception_backend():
    with pytest.raises(ConfigError, match="perception=torchvision"):
        validate_run_config(ViewsConfig, {"source": "diffusers"})


def test_save_and_load_round_trip_and_the_views_pipeline_runs_on_it(local_store_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HOI_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    perception = RCNNPerception(*RCNNPerception.architectures(min_size=64))
    perception.save_pretrained(tmp_path / "weights")
    loaded = RCNNPerception.from_pretrained(str(tmp_path / "weights"), min_size=64)
    for a, b in zip(perception.mask_model.state_dict().values(), loaded.mask_model.state_dict().values()):
        assert torch.equal(a, b)
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    assert all(d.mask.shape == (64, 80) for d in loaded([image])[0])
    with pytest.raises(FileNotFoundError, match="mask_rcnn.safetensors"):
        RCNNPerception.from_pretrained(str(tmp_path))

    run_pipeline(PromptsPipeline(), PromptsConfig(categories=["cup"], prompts_per_category=1, viewpoints=False,
                                                  execution={"executor": "local"}, output={"dataset": "p"}))
    views = run_pipeline(ViewsPipeline(), ViewsConfig(
        prompts="p", images_per_prompt=2, source={"kind": "diffusers", "model": "tiny", "steps": 2, "size": 64},
        perception={"kind": "torchvision", "weights": str(tmp_path / "weights"), "image_size": 64},
        execution={"executor": "local"})).dataset
    # Noise images, untrained detectors: every image is accounted for, by the paper's filter or calibration.
    assert views.manifest.num_samples + views.manifest.num_rejects == 2
    assert all(reason.startswith(("InteractionFilter", "Calibrate")) for reason in views.manifest.reject_reasons)
