"""Instance segmentation + person keypoints with detectron2: PointRend (as the official CHORUS code) and Keypoint
R-CNN, behind the same call as models/perception.py's torchvision backend.

The official CHORUS segments with detectron2's PointRend R50-FPN 3x COCO (`pointrend_rcnn_R_50_FPN_3x_coco.yaml`,
`constants/segmentation.py`) and detects keypoints with mmpose's HRNet-W48 + DARK 384x288; here the keypoints come
from detectron2's Keypoint R-CNN R50-FPN 3x (`COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml`) instead: mmpose
is not a dependency of this project.

Weights: a folder with `pointrend.yaml` + `pointrend.safetensors` and `keypoint_rcnn.yaml` +
`keypoint_rcnn.safetensors` (`save_pretrained` writes one). The YAML files are detectron2 configs (read with
detectron2's safe YAML loader); the weights are state dicts read by safetensors. detectron2's pickle checkpointer
(`DetectionCheckpointer`, the model zoo's `.pkl` files) is never used: convert a trusted checkpoint once by loading
it into `architectures()`'s models yourself and calling `save_pretrained`.

PointRend's configs are not in the detectron2 wheel (only in its source tree, projects/PointRend/configs); its
`detectron2.projects.point_rend` package is, so `pointrend_config` builds the config from detectron2's own API:
`get_cfg` + `add_pointrend_config` + the model zoo's `Base-RCNN-FPN.yaml`, then the keys of
`Base-PointRend-RCNN-FPN.yaml` and `pointrend_rcnn_R_50_FPN_3x_coco.yaml` written here as data (POINTREND_R50_FPN).
The official code also sets ROI_HEADS.SCORE_THRESH_TEST = 0.8; here detectron2's 0.05 stays and the paper's 0.8
is applied by the filter (tasks/chorus/perception.py), as for the torchvision backend: the same images pass.

Keypoint confidence (0-1, thresholded at the paper's 0.7): detectron2 gives per keypoint the heatmap logit at the
peak and the softmax probability of the single peak pixel of the upsampled map; neither is on the scale of
HRNet's heatmap maxima (~1 at a confident joint). Both backends use models/perception.py's `peak_probability`
instead, here on detectron2's `pred_keypoint_heatmaps` (the 56x56 logits): the spatial-softmax mass within 2
cells of the peak. Comparable in scale to the paper's scores, not calibrated against HRNet on data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hoi_factory.optional import require
from models.perception import Detection, detections_from_outputs, peak_probability

POINTREND, KEYPOINT = "pointrend", "keypoint_rcnn"
PURPOSE = "the detectron2 perception backend (the wheel from ../shared/wheels: `make install`)"

# projects/PointRend/configs/InstanceSegmentation/{Base-PointRend-RCNN-FPN,pointrend_rcnn_R_50_FPN_3x_coco}.yaml
# (detectron2 02b5c4e), on top of the model zoo's Base-RCNN-FPN.yaml; solver keys left out (inference only).
POINTREND_R50_FPN = {
    "MODEL.MASK_ON": True,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": True,
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "",  # no RoI pooling: the coarse head reads p2 directly
    "MODEL.ROI_MASK_HEAD.NAME": "PointRendMaskHead",
    "MODEL.ROI_MASK_HEAD.FC_DIM": 1024,
    "MODEL.ROI_MASK_HEAD.NUM_FC": 2,
    "MODEL.ROI_MASK_HEAD.OUTPUT_SIDE_RESOLUTION": 7,
    "MODEL.ROI_MASK_HEAD.IN_FEATURES": ["p2"],
    "MODEL.ROI_MASK_HEAD.POINT_HEAD_ON": True,
    "MODEL.POINT_HEAD.FC_DIM": 256,
    "MODEL.POINT_HEAD.NUM_FC": 3,
    "MODEL.POINT_HEAD.IN_FEATURES": ["p2"],
    "INPUT.MASK_FORMAT": "bitmask",
}
KEYPOINT_R50_FPN = "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml"


def _detectron2():
    """detectron2 with PointRend registered; a MissingDependency naming the extra where it is absent."""
    require("detectron2", "detectron2", PURPOSE)
    return require("detectron2.projects.point_rend", "detectron2", PURPOSE)


def pointrend_config():
    """PointRend R50-FPN (COCO, 80 classes), as the official CHORUS code configures it."""
    point_rend = _detectron2()
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    point_rend.add_pointrend_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("Base-RCNN-FPN.yaml"), allow_unsafe=False)
    cfg.merge_from_list([item for pair in POINTREND_R50_FPN.items() for item in pair])
    cfg.MODEL.WEIGHTS = ""
    return cfg


def keypoint_config():
    """Keypoint R-CNN R50-FPN 3x (COCO person keypoints) from detectron2's model zoo."""
    _detectron2()
    from detectron2 import model_zoo

    cfg = model_zoo.get_config(KEYPOINT_R50_FPN)
    cfg.MODEL.WEIGHTS = ""
    return cfg


class Detectron2Perception:
    """`perception(images)` -> per image a list of `Detection` (COCO labels, PointRend masks, person keypoints)."""

    def __init__(self, mask_cfg, keypoint_cfg, mask_model: torch.nn.Module, keypoint_model: torch.nn.Module):
        _detectron2()
        from detectron2.data import MetadataCatalog

        self.categories = MetadataCatalog.get("coco_2017_val").thing_classes  # detectron2's 80 contiguous ids
        self.mask_cfg, self.keypoint_cfg = mask_cfg, keypoint_cfg
        self.mask_model, self.keypoint_model = mask_model.eval(), keypoint_model.eval()

    @staticmethod
    def architectures(mask_cfg, keypoint_cfg, device: str = "cpu",
                      min_size: int = 800) -> tuple[object, object, torch.nn.Module, torch.nn.Module]:
        """Both configs set to `device` and `min_size` (shorter side seen, 800 as trained), and their models
        (random weights)."""
        _detectron2()
        from detectron2.modeling import build_model

        for cfg in (mask_cfg, keypoint_cfg):
            cfg.MODEL.DEVICE, cfg.INPUT.MIN_SIZE_TEST = device, min_size
        return mask_cfg, keypoint_cfg, build_model(mask_cfg), build_model(keypoint_cfg)

    @classmethod
    def from_pretrained(cls, weights: str, device: str = "cpu", min_size: int = 800) -> Detectron2Perception:
        point_rend = _detectron2()
        from detectron2.config import get_cfg

        folder = Path(weights)
        files = [folder / f"{name}{suffix}" for name in (POINTREND, KEYPOINT) for suffix in (".yaml", ".safetensors")]
        missing = [path.name for path in files if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"detectron2 perception weights {weights!r}: expected a folder with "
                                    f"{', '.join(path.name for path in files)}; missing {', '.join(missing)}")
        configs = []
        for name in (POINTREND, KEYPOINT):
            cfg = get_cfg()
            point_rend.add_pointrend_config(cfg)  # PointRend's keys, so that its dumped config merges
            cfg.merge_from_file(str(folder / f"{name}.yaml"), allow_unsafe=False)  # the default would unsafe_load
            configs.append(cfg)
        mask_cfg, keypoint_cfg, mask_model, keypoint_model = cls.architectures(*configs, device, min_size)
        mask_model.load_state_dict(load_file(folder / f"{POINTREND}.safetensors"))
        keypoint_model.load_state_dict(load_file(folder / f"{KEYPOINT}.safetensors"))
        return cls(mask_cfg, keypoint_cfg, mask_model, keypoint_model)

    def save_pretrained(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, cfg, model in ((POINTREND, self.mask_cfg, self.mask_model),
                                 (KEYPOINT, self.keypoint_cfg, self.keypoint_model)):
            (folder / f"{name}.yaml").write_text(cfg.dump())
            save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, folder / f"{name}.safetensors")

    @staticmethod
    def _inputs(cfg, images: list[np.ndarray]) -> list[dict]:
        """DefaultPredictor's preprocessing: shorter side resized to MIN_SIZE_TEST, channels as the config says."""
        from detectron2.data import transforms

        resize = transforms.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        inputs = []
        for image in images:
            channels = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
            resized = resize.get_transform(image).apply_image(np.ascontiguousarray(channels))
            inputs.append({"image": torch.as_tensor(resized.transpose(2, 0, 1).astype(np.float32)),
                           "height": image.shape[0], "width": image.shape[1]})
        return inputs

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[list[Detection]]:
        masks = self.mask_model(self._inputs(self.mask_cfg, images))
        people = self.keypoint_model(self._inputs(self.keypoint_cfg, images))
        found = []
        for m, k in zip(masks, people):
            m, k = m["instances"].to("cpu"), k["instances"].to("cpu")
            found.append(detections_from_outputs(
                {"boxes": m.pred_boxes.tensor, "labels": m.pred_classes, "scores": m.scores,
                 "masks": m.pred_masks[:, None].float()},
                {"boxes": k.pred_boxes.tensor, "keypoints": k.pred_keypoints,
                 "keypoints_scores": peak_probability(k.pred_keypoint_heatmaps)},
                self.categories))
        return found
