"""The C-HOI cascade recognizer on torchvision detection components.

Instance localization: a ResNet-FPN backbone and torchvision's RPN, then three Cascade R-CNN stages (IoU
thresholds 0.5 / 0.6 / 0.7, box-coder weights sharpening per stage), each re-pooling the previous stage's boxes
(class-agnostic regression). Interaction recognition: a `RelationModule` per stage on that stage's head features
of the human (its RoI map through IHSM, `HumanSemanticMining`, first), the object and their union box; stage t's
visual input adds stage t-1's (Eq. 11). Training losses are weighted [1, 0.5, 0.25] per stage; `relations=False`
leaves the relation losses out (the paper's first phase: localization alone). At inference the stages' class
scores are averaged over the last stage's boxes, detections below 0.3 are dropped, every person is paired with
every other detection, the stages' relation modules run in turn on those pairs, and the last one's RRM keeps the
top 64 pairs and its RCM scores their verbs.

Backbone: a torchvision ResNet, or "small" (a 4-stage conv net for CPU tests). From scratch its normalization
is trainable GroupNorm (or BatchNorm); `load_backbone` starts it from pretrained weights (torchvision's by name,
or a local safetensors file) with frozen BatchNorm, as the paper's mmdetection setup.

Deviations from the paper / tfzhou/C-HOI:
- EFRA (explicit facial region attending, Eqs. 8-10) is not built: it needs every person's face box from an
  off-the-shelf face detector (RetinaFace in the paper), which neither the HOI annotations nor the CHORUS views
  carry; the official Cascade R-CNN relation detector (cascade_rcnn_rel.py) has no facial attention either.
- Eq. 11 sums the stages' 3C x H x W RoI maps; here the stage heads' pooled vectors (3 x `representation`) are
  summed. In training the pairs are ground-truth boxes, the same at every stage, so summing the raw RoI maps
  would only double them; the stage heads are what differ between stages.
- IHSM is the official code's non-local block (embedded Gaussian, C/2 embeddings, zero-initialised output),
  one block shared by the stages, rather than the paper's plain dot-product Eq. 5.
- The geometric stream's pair masks are 64 x 64 as the paper; the tiny preset uses 16 x 16 for CPU tests.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import get_model_weights
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes_to_image

from models.c_hoi.relation import (
    GEOMETRY_SIZE,
    MIN_DETECTION_SCORE,
    TOP_PAIRS,
    HumanSemanticMining,
    RelationModule,
    candidate_pairs,
    pair_masks,
)
from models.pretrained import PretrainedMixin

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_WEIGHTS = (1.0, 0.5, 0.25)
STAGE_CODER_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


@dataclass(frozen=True)
class CHOIConfig:
    object_classes: tuple[str, ...]  # index 0 is the background; the person class is `human_class`
    verbs: tuple[str, ...]
    human_class: str = "person"
    backbone: str = "resnet50"  # a torchvision ResNet, or "small" (a 4-stage conv net for tests and CPUs)
    norm: str = "group"  # the backbone's normalization: see NORMS
    min_size: int = 800
    max_size: int = 1333
    representation: int = 1024
    rois_per_image: int = 512
    rpn_proposals: int = 2000  # kept after NMS per image (training; half at inference)
    geometry_size: int = GEOMETRY_SIZE  # side of the pair masks of the geometric stream
    semantic_table: list[list[float]] = field(default_factory=list)  # X_s (objects x verbs); zeros if empty

    @classmethod
    def tiny(cls, object_classes, verbs, **kwargs) -> CHOIConfig:
        """The CPU test size; `kwargs` override any field."""
        return cls(tuple(object_classes), tuple(verbs), **{
            "backbone": "small", "min_size": 96, "max_size": 128, "representation": 128, "rois_per_image": 32,
            "rpn_proposals": 100, "geometry_size": 16, **kwargs})

    @property
    def human_label(self) -> int:
        return self.object_classes.index(self.human_class)


NORMS = {  # name -> a normalization layer for `channels` features
    "frozen": FrozenBatchNorm2d,  # pretrained statistics kept fixed, as the paper and torchvision detectors
    "batch": nn.BatchNorm2d,  # trainable; needs batches of several images
    "group": lambda channels: nn.GroupNorm(min(32, channels // 4), channels),  # trainable, any batch size
}
SMALL_WIDTHS = (16, 32, 64, 96, 128)  # the small backbone: the stem, then the stages at strides 4, 8, 16, 32
SMALL_FPN_WIDTH = 64


def _small_body(norm) -> nn.Module:
    """A conv net with ResNet's named stages (stem, layer1..4; strides 2, 4, 8, 16, 32): cheap enough for the
    CPU tests, which train a recognizer from scratch in seconds."""
    layers, previous = {}, 3
    for name, width in zip(("stem", "layer1", "layer2", "layer3", "layer4"), SMALL_WIDTHS):
        layers[name] = nn.Sequential(nn.Conv2d(previous, width, 3, 2, 1, bias=False), norm(width), nn.ReLU(),
                                     nn.Conv2d(width, width, 3, 1, 1, bias=False), norm(width), nn.ReLU())
        previous = width
    return nn.Sequential(OrderedDict(layers))


def build_backbone(name: str, norm: str) -> BackboneWithFPN:
    """ResNet-FPN (FPN levels "0".."3" at strides 4..32 and "pool"), every layer trainable; `load_backbone`
    freezes the first stage when it loads pretrained weights, as torchvision's detectors do."""
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r}: expected one of {', '.join(NORMS)}")
    if name == "small":
        return BackboneWithFPN(_small_body(NORMS[norm]), {f"layer{i}": str(i - 1) for i in range(1, 5)},
                               list(SMALL_WIDTHS[1:]), SMALL_FPN_WIDTH)
    return resnet_fpn_backbone(backbone_name=name, weights=None, norm_layer=NORMS[norm], trainable_layers=5)


def backbone_weights(backbone: str, weights: str) -> dict[str, torch.Tensor]:
    """A state dict: a local .safetensors file, or torchvision's weights by name (`IMAGENET1K_V1`, fetched once
    into TORCH_HOME by torchvision). Either the backbone's ResNet (torchvision's keys, `fc.*` ignored) or a
    detector whose `backbone.*` keys hold ResNet and FPN (torchvision's COCO Faster R-CNN: `COCO_V1`)."""
    if weights.endswith(".safetensors"):
        import safetensors.torch

        return safetensors.torch.load_file(weights)
    if weights == "COCO_V1" and backbone == "resnet50":
        from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

        return FasterRCNN_ResNet50_FPN_Weights.COCO_V1.get_state_dict(progress=False)
    names = [w.name for w in get_model_weights(backbone)] if backbone != "small" else []
    if weights not in names:
        raise ValueError(f"backbone weights {weights!r}: expected a .safetensors file or one of "
                         f"{', '.join(names + ['COCO_V1 (resnet50)'])} for {backbone}")
    return get_model_weights(backbone)[weights].get_state_dict(progress=False)


class CascadeStage(nn.Module):
    def __init__(self, pooled: int, representation: int, num_classes: int, iou: float, coder_weights):
        super().__init__()
        self.head = TwoMLPHead(pooled, representation)
        self.classifier = nn.Linear(representation, num_classes)
        self.regressor = nn.Linear(representation, 4)  # class-agnostic, as Cascade R-CNN
        self.coder = det_utils.BoxCoder(coder_weights)
        self.matcher = det_utils.Matcher(iou, iou, allow_low_quality_matches=False)


class CascadeHOI(PretrainedMixin, nn.Module):
    def __init__(self, config: CHOIConfig):
        super().__init__()
        self.config = config
        self.transform = GeneralizedRCNNTransform(config.min_size, config.max_size, [0.485, 0.456, 0.406],
                                                  [0.229, 0.224, 0.225])
        self.backbone = build_backbone(config.backbone, config.norm)
        width = self.backbone.out_channels
        anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        top = dict(training=config.rpn_proposals, testing=config.rpn_proposals // 2)
        self.rpn = RegionProposalNetwork(anchors, RPNHead(width, 3), 0.7, 0.3, 256, 0.5, top, top, 0.7)
        self.pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
        num_classes = len(config.object_classes)
        self.stages = nn.ModuleList(CascadeStage(width * 7 * 7, config.representation, num_classes, iou, weights)
                                    for iou, weights in zip(STAGE_IOUS, STAGE_CODER_WEIGHTS))
        table = torch.tensor(config.semantic_table) if config.semantic_table else torch.zeros(num_classes,
                                                                                               len(config.verbs))
        self.relations = nn.ModuleList(
            RelationModule(len(config.verbs), table, config.representation, config.geometry_size) for _ in STAGE_IOUS)
        self.human_semantics = HumanSemanticMining(width)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(config.rois_per_image, 0.25)

    def load_backbone(self, weights: str) -> None:
        """Start from pretrained weights (`backbone_weights`); the stem and first stage are then frozen."""
        if self.config.norm == "group":
            raise ValueError("pretrained backbone weights hold BatchNorm statistics: build with norm 'frozen' "
                             "or 'batch', not 'group'")
        state = backbone_weights(self.config.backbone, weights)
        detector = {key.removeprefix("backbone."): v for key, v in state.items() if key.startswith("backbone.")}
        target = self.backbone if detector else self.backbone.body
        state = detector or {key: v for key, v in state.items() if not key.startswith("fc.")}
        expected = {key: v.shape for key, v in target.state_dict().items() if not key.endswith("num_batches_tracked")}
        given = {key: v.shape for key, v in state.items() if not key.endswith("num_batches_tracked")}
        if expected != given:
            differ = sorted(key for key in expected.keys() | given.keys() if expected.get(key) != given.get(key))
            raise ValueError(f"backbone weights {weights!r} do not fit {self.config.backbone}: {len(differ)} "
                             f"tensors missing, extra or of another shape ({', '.join(differ[:3])}, ...)")
        target.load_state_dict(state, strict=False)  # BatchNorm's num_batches_tracked may be absent
        for name, parameter in self.backbone.body.named_parameters():
            parameter.requires_grad_(name.startswith(("layer2", "layer3", "layer4")))

    # -- localization ------------------------------------------------------------------------------
    def _sample(self, stage: CascadeStage, proposals, targets):
        """Proposals (+ the ground-truth boxes) matched at the stage's IoU: labels and regression targets."""
        boxes, labels, regression = [], [], []
        for proposal, target in zip(proposals, targets):
            proposal = torch.cat([proposal, target["boxes"]])
            matched = stage.matcher(box_iou(target["boxes"], proposal))
            label = target["labels"][matched.clamp(min=0)]
            label[matched < 0] = 0
            positive, negative = self.sampler([label])
            keep = torch.nonzero(positive[0] | negative[0]).flatten()
            boxes.append(proposal[keep])
            labels.append(label[keep])
            regression.append(stage.coder.encode_single(target["boxes"][matched.clamp(min=0)][keep], proposal[keep]))
        return boxes, labels, regression

    def _features(self, stage: CascadeStage, features, boxes, image_sizes) -> torch.Tensor:
        return stage.head(self.pool(features, boxes, image_sizes))

    # -- interaction -------------------------------------------------------------------------------
    def _pair_features(self, stage, features, image_sizes, humans, objects) -> torch.Tensor:
        """(P, 3R): the stage head's features of each pair's human (its RoI map through IHSM first), object
        and union box; boxes are lists per image."""
        unions = [torch.cat([torch.minimum(h[:, :2], o[:, :2]), torch.maximum(h[:, 2:], o[:, 2:])], 1)
                  for h, o in zip(humans, objects)]
        human = stage.head(self.human_semantics(self.pool(features, humans, image_sizes)))
        return torch.cat([human, self._features(stage, features, objects, image_sizes),
                          self._features(stage, features, unions, image_sizes)], 1)

    def _relations(self, features, image_sizes, humans, objects, object_labels) -> list[dict[str, torch.Tensor]]:
        """Every stage's relation outputs for the same pairs. Stage t's visual input adds stage t-1's (Eq. 11)."""
        masks = pair_masks(torch.cat(humans), torch.cat(objects), self.config.geometry_size)
        outputs, previous = [], None
        for stage, relation in zip(self.stages, self.relations):
            visual = self._pair_features(stage, features, image_sizes, humans, objects)
            outputs.append(relation(visual if previous is None else visual + previous, masks.to(visual.device),
                                    object_labels))
            previous = visual
        return outputs

    def _relation_losses(self, features, image_sizes, targets) -> dict[str, torch.Tensor]:
        """Pairs of ground-truth persons with every other ground-truth box; annotated = has an HOI triplet."""
        humans, objects, object_labels, verb_targets = [], [], [], []
        for target in targets:
            pairs = candidate_pairs(target["labels"], torch.ones(len(target["labels"])), self.config.human_label)
            verbs = torch.zeros(len(pairs), len(self.config.verbs))
            for subject, obj, verb in target["hoi"].tolist():
                verbs[(pairs[:, 0] == subject) & (pairs[:, 1] == obj), verb] = 1
            humans.append(target["boxes"][pairs[:, 0]])
            objects.append(target["boxes"][pairs[:, 1]])
            object_labels.append(target["labels"][pairs[:, 1]])
            verb_targets.append(verbs)
        if not sum(len(h) for h in humans):  # no pairs in this batch: zeros that keep the graph
            return {f"stage{i}_relation": features["0"].sum() * 0 for i in range(len(self.stages))}
        verbs = torch.cat(verb_targets).to(features["0"].device)
        outputs = self._relations(features, image_sizes, humans, objects, torch.cat(object_labels))
        return {f"stage{i}_relation": weight * RelationModule.loss(output, verbs, verbs.any(1))
                for i, (output, weight) in enumerate(zip(outputs, STAGE_WEIGHTS))}

    # -- the whole -------------------------------------------------------------------------------------
    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None,
                relations: bool = True):
        """Training (targets given): a dict of losses, without the relation losses when `relations` is False
        (the paper's first phase trains the localization alone). Inference: per image, detections and HOI
        triplets.
        Images are float (3, H, W) in [0, 1]; targets hold `boxes` (K, 4), `labels` (K,), `hoi` (T, 3) rows
        of (subject index, object index, verb index)."""
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        images, targets = self.transform(images, targets)
        features = self.backbone(images.tensors)
        proposals, losses = self.rpn(images, features, targets)
        boxes = proposals
        stage_scores = []
        for index, (stage, weight) in enumerate(zip(self.stages, STAGE_WEIGHTS)):
            if self.training:
                boxes, labels, regression = self._sample(stage, [b.detach() for b in boxes], targets)
            represented = self._features(stage, features, boxes, images.image_sizes)
            logits, deltas = stage.classifier(represented), stage.regressor(represented)
            if self.training:
                labels, regression = torch.cat(labels), torch.cat(regression)
                foreground = labels > 0
                losses[f"stage{index}_classifier"] = weight * F.cross_entropy(logits, labels)
                losses[f"stage{index}_box"] = weight * F.smooth_l1_loss(
                    deltas[foreground], regression[foreground], beta=1 / 9, reduction="sum") / max(1, labels.numel())
            else:
                stage_scores.append(F.softmax(logits, -1))
            counts = [len(b) for b in boxes]
            decoded = stage.coder.decode_single(deltas, torch.cat(boxes))
            boxes = [clip_boxes_to_image(b, size) for b, size in zip(decoded.split(counts), images.image_sizes)]
        if self.training:
            return losses | (self._relation_losses(features, images.image_sizes, targets) if relations else {})
        return self._detect(features, images, boxes, torch.stack(stage_scores).mean(0), original_sizes)

    @torch.no_grad()
    def _detect(self, features, images, boxes, scores, original_sizes) -> list[dict[str, torch.Tensor]]:
        results = []
        for index, (image_boxes, image_scores, size, original) in enumerate(zip(
                boxes, scores.split([len(b) for b in boxes]), images.image_sizes, original_sizes)):
            score, label = image_scores[:, 1:].max(1)
            label = label + 1
            keep = score >= MIN_DETECTION_SCORE
            image_boxes, score, label = image_boxes[keep], score[keep], label[keep]
            keep = batched_nms(image_boxes, score, label, 0.5)[:100]
            image_boxes, score, label = image_boxes[keep], score[keep], label[keep]
            pairs = candidate_pairs(label, score, self.config.human_label)
            result = {"boxes": image_boxes, "labels": label, "scores": score, "pairs": pairs,
                      "verb_scores": torch.zeros(len(pairs), len(self.config.verbs))}
            if len(pairs):
                image_features = {name: level[index:index + 1] for name, level in features.items()}
                outputs = self._relations(image_features, [size], [image_boxes[pairs[:, 0]]],
                                          [image_boxes[pairs[:, 1]]], label[pairs[:, 1]])[-1]
                top = RelationModule.top_pairs(outputs["rank"], TOP_PAIRS)
                result["pairs"], result["verb_scores"] = pairs[top], RelationModule.scores(outputs)[top]
            scale = torch.tensor([original[1] / size[1], original[0] / size[0]] * 2, device=image_boxes.device)
            result["boxes"] = result["boxes"] * scale
            results.append(result)
        return results
