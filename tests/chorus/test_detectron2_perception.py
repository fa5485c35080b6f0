"""The detectron2 perception backend: PointRend's config against detectron2's own YAML files, a config +
safetensors round trip of randomly initialized models and their detections on a small image (keypoint
confidences are models/perception.py's `peak_probability`, tested there), and a clear error where detectron2 is
missing. Real weights are the user's; their accuracy is theirs, not tested here."""

import importlib.util
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hoi_factory.config import validate_run_config
from hoi_factory.optional import MissingDependency
from models.detectron2_perception import (
    Detectron2Perception,
    keypoint_config,
    pointrend_config,
)
from tasks.chorus.perception import Perceive
from tasks.chorus.views import ViewsConfig, ViewsPipeline

needs_detectron2 = pytest.mark.skipif(importlib.util.find_spec("detectron2") is None,
                                      reason="detectron2 is not installed (`make install` adds it from "
                                             "../shared/wheels when the wheel is there)")
SOURCE_ARCHIVES = sorted((Path(__file__).resolve().parents[3] / "shared" / "wheels").glob("detectron2-src-*.tar.gz"))


def test_a_missing_detectron2_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # `import detectron2` now raises ImportError
    with pytest.raises(MissingDependency, match=r"hoi-factory\[detectron2\]"):
        Detectron2Perception.from_pretrained(str(tmp_path))
    with pytest.raises(MissingDependency, match="detectron2 perception backend"):
        pointrend_config()


@needs_detectron2
@pytest.mark.skipif(not SOURCE_ARCHIVES, reason="detectron2's source archive is not in ../shared/wheels")
def test_pointrend_config_is_detectrons_own_yaml(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.projects import point_rend

    wanted = ("configs/Base-RCNN-FPN.yaml", "projects/PointRend/configs/InstanceSegmentation/")
    with tarfile.open(SOURCE_ARCHIVES[-1]) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and any(w in m.name for w in wanted)]
        archive.extractall(tmp_path, members=members, filter="data")
    official = get_cfg()
    point_rend.add_pointrend_config(official)
    official.merge_from_file(str(next(tmp_path.rglob("pointrend_rcnn_R_50_FPN_3x_coco.yaml"))))
    official.MODEL.WEIGHTS = ""  # an ImageNet backbone there; weights are loaded apart here
    ours = pointrend_config()
    assert ours.MODEL == official.MODEL and ours.INPUT == official.INPUT
    assert ours.MODEL.ROI_MASK_HEAD.NAME == "PointRendMaskHead"


def everything_is_a_person(model: torch.nn.Module) -> None:
    """Box predictor that keeps every proposal as it is and calls it a person (class 0) with score ~1."""
    predictor = model.roi_heads.box_predictor
    for layer in (predictor.cls_score, predictor.bbox_pred):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    predictor.cls_score.bias.data[0] = 20.0


@needs_detectron2
def test_config_and_safetensors_round_trip_and_detections(tmp_path):
    torch.manual_seed(0)
    configs = pointrend_config(), keypoint_config()
    for cfg in configs:
        cfg.TEST.DETECTIONS_PER_IMAGE = 3  # of 100: fewer PointRend subdivisions and keypoint maps on CPU
    perception = Detectron2Perception(*Detectron2Perception.architectures(*configs, min_size=64))
    # Both models share backbone, proposals and box head, so they find the same boxes: each person mask
    # then takes the keypoints of its own box.
    shared = {k: v for k, v in perception.mask_model.state_dict().items()
              if k.startswith(("backbone.", "proposal_generator.", "roi_heads.box_head."))}
    perception.keypoint_model.load_state_dict(shared, strict=False)
    for model in (perception.mask_model, perception.keypoint_model):
        everything_is_a_person(model)
    # Random heatmap logits reach ~1e3, where detectron2's own peak check fails on float rounding: scale them to
    # a trained head's few units.
    perception.keypoint_model.roi_heads.keypoint_head.score_lowres.weight.data *= 1e-2
    perception.save_pretrained(tmp_path / "weights")
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [
        "keypoint_rcnn.safetensors", "keypoint_rcnn.yaml", "pointrend.safetensors", "pointrend.yaml"]

    loaded = Detectron2Perception.from_pretrained(str(tmp_path / "weights"), min_size=64)
    assert loaded.mask_cfg.MODEL.ROI_MASK_HEAD.NAME == "PointRendMaskHead"
    assert loaded.mask_cfg.TEST.DETECTIONS_PER_IMAGE == loaded.keypoint_cfg.TEST.DETECTIONS_PER_IMAGE == 3
    for before, after in ((perception.mask_model, loaded.mask_model),
                          (perception.keypoint_model, loaded.keypoint_model)):
        for a, b in zip(before.state_dict().values(), after.state_dict().values(), strict=True):
            assert torch.equal(a, b)

    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    found = loaded([image, image[:32]])
    assert [len(detections) for detections in found] == [3, 3]
    for detections, height in zip(found, (48, 32)):
        for d in detections:
            assert d.label == "person" and 0.99 < d.score <= 1.0
            assert d.mask.shape == (height, 80) and d.mask.dtype == bool
            assert d.keypoints is not None and d.keypoints.shape == (17, 3) and d.keypoints.dtype == np.float32
            assert ((d.keypoints[:, 2] >= 0) & (d.keypoints[:, 2] <= 1)).all()
    with pytest.raises(FileNotFoundError, match="missing keypoint_rcnn.yaml"):
        (tmp_path / "weights" / "keypoint_rcnn.yaml").unlink()
        Detectron2Perception.from_pretrained(str(tmp_path / "weights"))


def test_views_config_chooses_the_detectron2_backend():
    config = validate_run_config(ViewsConfig, {"source": "diffusers",
                                               "perception": {"kind": "detectron2", "weights": "folder"}})
    perceive = next(s for s in ViewsPipeline().stages(config) if isinstance(s, Perceive))
    assert perceive.backend == "detectron2" and perceive.weights == "folder" and perceive.needs == {"image_array"}
