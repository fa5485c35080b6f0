"""The C-HOI cascade recognizer on torchvision detection components.

Instance localization: a ResNet-FPN backbone and torchvision's RPN, then three Cascade R-CNN stages (IoU
thresholds 0.5 / 0.6 / 0.7, box-coder weights sharpening per stage), each re-pooling the previous stage's boxes
(class-agnostic regression). Interaction recognition: a `RelationModule` per stage on the RoI features of that
stage's head. Training losses are weighted [1, 0.5, 0.25] per stage. At inference the stages' class scores are
averaged over the last stage's boxes, detections below 0.3 are dropped, every person is paired with every other
detection, RRM keeps the top 64 pairs and the last stage's RCM scores their verbs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes_to_image

from models.c_hoi.relation import MIN_DETECTION_SCORE, TOP_PAIRS, RelationModule, candidate_pairs, pair_masks
from models.pretrained import PretrainedMixin

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_WEIGHTS = (1.0, 0.5, 0.25)
STAGE_CODER_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


@dataclass(frozen=True)
class CHOIConfig:
    object_classes: tuple[str, ...]  # index 0 is the background; the person class is `human_class`
    verbs: tuple[str, ...]
    human_class: str = "person"
    backbone: str = "resnet50"
    min_size: int = 800
    max_size: int = 1333
    representation: int = 1024
    rois_per_image: int = 512
    rpn_proposals: int = 2000  # kept after NMS per image (training; half at inference)
    semantic_table: list[list[float]] = field(default_factory=list)  # X_s (objects x verbs); zeros if empty

    @classmethod
    def tiny(cls, object_classes, verbs, **kwargs) -> CHOIConfig:
        return cls(tuple(object_classes), tuple(verbs), backbone="resnet18", min_size=128, max_size=128,
                   representation=128, rois_per_image=64, rpn_proposals=100, **kwargs)

    @property
    def human_label(self) -> int:
        return self.object_classes.index(self.human_class)


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
        self.backbone = resnet_fpn_backbone(backbone_name=config.backbone, weights=None, trainable_layers=5)
        anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        top = dict(training=config.rpn_proposals, testing=config.rpn_proposals // 2)
        self.rpn = RegionProposalNetwork(anchors, RPNHead(256, 3), 0.7, 0.3, 256, 0.5, top, top, 0.7)
        self.pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
        num_classes = len(config.object_classes)
        self.stages = nn.ModuleList(CascadeStage(256 * 7 * 7, config.representation, num_classes, iou, weights)
                                    for iou, weights in zip(STAGE_IOUS, STAGE_CODER_WEIGHTS))
        table = torch.tensor(config.semantic_table) if config.semantic_table else torch.zeros(num_classes,
                                                                                               len(config.verbs))
        self.relations = nn.ModuleList(RelationModule(len(config.verbs), table, config.representation)
                                       for _ in STAGE_IOUS)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(config.rois_per_image, 0.25)

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
    def _relation_inputs(self, stage, features, image_sizes, humans, objects):
        """RoI features of humans, objects and their union boxes (lists per image), and the pair masks."""
        unions = [torch.cat([torch.minimum(h[:, :2], o[:, :2]), torch.maximum(h[:, 2:], o[:, 2:])], 1)
                  for h, o in zip(humans, objects)]
        return (self._features(stage, features, humans, image_sizes),
                self._features(stage, features, objects, image_sizes),
                self._features(stage, features, unions, image_sizes),
                pair_masks(torch.cat(humans), torch.cat(objects)))

    def _relation_loss(self, stage, relation, features, image_sizes, targets) -> torch.Tensor:
        """Pairs of ground-truth persons with every other ground-truth box; annotated = has an HOI triplet."""
        humans, objects, object_labels, verb_targets, annotated = [], [], [], [], []
        for target in targets:
            pairs = candidate_pairs(target["labels"], torch.ones(len(target["labels"])), self.config.human_label)
            verbs = torch.zeros(len(pairs), len(self.config.verbs))
            for subject, obj, verb in target["hoi"].tolist():
                hit = (pairs[:, 0] == subject) & (pairs[:, 1] == obj)
                verbs[hit, verb] = 1
            humans.append(target["boxes"][pairs[:, 0]])
            objects.append(target["boxes"][pairs[:, 1]])
            object_labels.append(target["labels"][pairs[:, 1]])
            verb_targets.append(verbs)
            annotated.append(verbs.any(1))
        if not sum(len(h) for h in humans):
            return features["0"].sum() * 0  # no pairs in this batch: a zero that keeps the graph
        human, obj, union, masks = self._relation_inputs(stage, features, image_sizes, humans, objects)
        outputs = relation(human, obj, union, masks.to(human.device), torch.cat(object_labels))
        return RelationModule.loss(outputs, torch.cat(verb_targets).to(human.device), torch.cat(annotated))

    # -- the whole -------------------------------------------------------------------------------------
    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        """Training (targets given): a dict of losses. Inference: per image, detections and HOI triplets.
        Images are float (3, H, W) in [0, 1]; targets hold `boxes` (K, 4), `labels` (K,), `hoi` (T, 3) rows
        of (subject index, object index, verb index)."""
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        images, targets = self.transform(images, targets)
        features = self.backbone(images.tensors)
        proposals, losses = self.rpn(images, features, targets)
        boxes = proposals
        stage_scores = []
        for index, (stage, relation, weight) in enumerate(zip(self.stages, self.relations, STAGE_WEIGHTS)):
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
                losses[f"stage{index}_relation"] = weight * self._relation_loss(
                    stage, relation, features, images.image_sizes, targets)
            else:
                stage_scores.append(F.softmax(logits, -1))
            counts = [len(b) for b in boxes]
            decoded = stage.coder.decode_single(deltas, torch.cat(boxes))
            boxes = [clip_boxes_to_image(b, size) for b, size in zip(decoded.split(counts), images.image_sizes)]
        if self.training:
            return losses
        return self._detect(features, images, boxes, torch.stack(stage_scores).mean(0), original_sizes)

    @torch.no_grad()
    def _detect(self, features, images, boxes, scores, original_sizes) -> list[dict[str, torch.Tensor]]:
        results = []
        stage, relation = self.stages[-1], self.relations[-1]
        for image_boxes, image_scores, size, original in zip(boxes, scores.split([len(b) for b in boxes]),
                                                             images.image_sizes, original_sizes):
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
                human, obj, union, masks = self._relation_inputs(stage, features, [size], [image_boxes[pairs[:, 0]]],
                                                                 [image_boxes[pairs[:, 1]]])
                outputs = relation(human, obj, union, masks.to(human.device), label[pairs[:, 1]])
                top = RelationModule.top_pairs(outputs["rank"], TOP_PAIRS)
                result["pairs"], result["verb_scores"] = pairs[top], RelationModule.scores(outputs)[top]
            scale = torch.tensor([original[1] / size[1], original[0] / size[0]] * 2, device=image_boxes.device)
            result["boxes"] = result["boxes"] * scale
            results.append(result)
        return results
