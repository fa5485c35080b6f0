"""C-HOI's interaction recognition for one cascade stage: relation ranking (RRM) and classification (RCM).

Per human–object pair three features: semantic X_s (object–verb co-occurrence frequencies of the training set),
geometric X_g (the pair's two-channel 64x64 masks in their union box -> two conv + pool -> FC -> 256-d) and
visual X_v (human, object and union RoI features -> 1024-d; the human RoI map first goes through IHSM,
`HumanSemanticMining`). RRM scores a pair g = sigmoid(FC([X_v, X_g])) and
is trained with a pairwise hinge loss (margin 0.2) that puts annotated pairs above unannotated ones; the top 64
pairs go on. RCM gives each stream its own verb scores (sigmoid(FC(X))), each trained with BCE; the final score
is (s_v + s_g) * s_s. Detections scoring below 0.3 never form pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GEOMETRY_SIZE = 64
RANKING_MARGIN = 0.2
TOP_PAIRS = 64
MIN_DETECTION_SCORE = 0.3
VISUAL_WIDTH, GEOMETRIC_WIDTH = 1024, 256


def cooccurrence(object_labels: torch.Tensor, verb_targets: torch.Tensor, num_objects: int) -> torch.Tensor:
    """X_s table (num_objects, N): per object category, how often each verb is annotated with it (0..1)."""
    table = torch.zeros(num_objects, verb_targets.shape[1])
    table.index_add_(0, object_labels, verb_targets.float())
    return table / table.sum(1, keepdim=True).clamp_min(1)


def pair_masks(humans: torch.Tensor, objects: torch.Tensor, size: int = GEOMETRY_SIZE) -> torch.Tensor:
    """(P, 2, size, size): the human and the object box, each a filled channel, in the frame of their union box."""
    union = torch.cat([torch.minimum(humans[:, :2], objects[:, :2]), torch.maximum(humans[:, 2:], objects[:, 2:])], 1)
    scale = (union[:, 2:] - union[:, :2]).clamp_min(1e-6).repeat(1, 2)
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    masks = []
    for boxes in (humans, objects):
        relative = (boxes - union[:, :2].repeat(1, 2)) / scale  # (P, 4) in [0, 1]
        inside_x = (grid[None] >= relative[:, 0:1]) & (grid[None] <= relative[:, 2:3])
        inside_y = (grid[None] >= relative[:, 1:2]) & (grid[None] <= relative[:, 3:4])
        masks.append((inside_y[:, :, None] & inside_x[:, None, :]).float())
    return torch.stack(masks, 1)


def candidate_pairs(labels: torch.Tensor, scores: torch.Tensor, human_label: int) -> torch.Tensor:
    """(K, 2) indices (human, object) of every pair of confident detections whose first member is a person."""
    keep = torch.nonzero(scores >= MIN_DETECTION_SCORE).flatten()
    humans = keep[labels[keep] == human_label]
    pairs = torch.cartesian_prod(humans, keep) if len(humans) and len(keep) else torch.zeros(0, 2, dtype=torch.long)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def ranking_loss(rank: torch.Tensor, annotated: torch.Tensor, margin: float = RANKING_MARGIN) -> torch.Tensor:
    """Sum over (annotated, unannotated) pairs of max(0, g(unannotated) - g(annotated) + margin)."""
    positive, negative = rank[annotated], rank[~annotated]
    if not len(positive) or not len(negative):
        return rank.sum() * 0
    return F.relu(negative[None, :] - positive[:, None] + margin).sum()


class RelationModule(nn.Module):
    def __init__(self, num_verbs: int, semantic_table: torch.Tensor, visual_in: int,
                 geometry_size: int = GEOMETRY_SIZE):
        super().__init__()
        self.register_buffer("semantic_table", semantic_table.float(), persistent=False)  # rebuilt from the config
        self.geometric = nn.Sequential(
            nn.Conv2d(2, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (geometry_size // 4) ** 2, GEOMETRIC_WIDTH), nn.ReLU())
        self.visual = nn.Sequential(nn.Linear(3 * visual_in, VISUAL_WIDTH), nn.ReLU())
        self.rank_head = nn.Linear(VISUAL_WIDTH + GEOMETRIC_WIDTH, 1)
        self.semantic_head = nn.Linear(semantic_table.shape[1], num_verbs)
        self.geometric_head = nn.Linear(GEOMETRIC_WIDTH, num_verbs)
        self.visual_head = nn.Linear(VISUAL_WIDTH, num_verbs)

    def forward(self, visual: torch.Tensor, masks: torch.Tensor, object_labels: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Visual input (P, 3C): the human, object and union RoI features side by side (plus the previous
        stage's, Eq. 11), masks (P, 2, S, S) (`pair_masks` at the module's geometry size), object labels (P,)
        -> rank scores (P,) in [0, 1] and the three streams' verb logits (P, N)."""
        x_v = self.visual(visual)
        x_g = self.geometric(masks)
        x_s = self.semantic_table[object_labels]
        return {"rank": torch.sigmoid(self.rank_head(torch.cat([x_v, x_g], 1))).squeeze(1),
                "semantic": self.semantic_head(x_s), "geometric": self.geometric_head(x_g),
                "visual": self.visual_head(x_v)}

    @staticmethod
    def scores(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final verb scores: (s_v + s_g) * s_s."""
        return (torch.sigmoid(outputs["visual"]) + torch.sigmoid(outputs["geometric"])) * torch.sigmoid(
            outputs["semantic"])

    @staticmethod
    def loss(outputs: dict[str, torch.Tensor], verb_targets: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        """L_RRM + L_RCM: the ranking hinge loss plus a BCE per stream (multi-label)."""
        targets = verb_targets.float()
        classification = sum(F.binary_cross_entropy_with_logits(outputs[stream], targets)
                             for stream in ("semantic", "geometric", "visual"))
        return ranking_loss(outputs["rank"], annotated) + classification

    @staticmethod
    def top_pairs(rank: torch.Tensor, k: int = TOP_PAIRS) -> torch.Tensor:
        return torch.argsort(rank, descending=True)[:k]


class HumanSemanticMining(nn.Module):
    """IHSM (paper Eqs. 5-7): every position of the human RoI map gathers the positions of the same body part,
    H + sum_j softmax_j(h_i . h_j) h_j. As the official code (mmdet's NonLocal2D on the subject RoI features),
    an embedded-Gaussian non-local block: 1x1 embeddings to C/2, scaled dot products, and an output 1x1 conv
    that starts at zero, so that the block starts as the identity."""

    def __init__(self, channels: int):
        super().__init__()
        inner = channels // 2
        self.theta, self.phi, self.g = (nn.Conv2d(channels, inner, 1) for _ in range(3))
        self.out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, human: torch.Tensor) -> torch.Tensor:
        """(P, C, H, W) RoI maps -> the same, enhanced."""
        count, _, height, width = human.shape
        query, key, value = (f(human).flatten(2) for f in (self.theta, self.phi, self.g))  # (P, C/2, HW)
        attention = torch.softmax(query.transpose(1, 2) @ key / query.shape[1] ** 0.5, -1)  # (P, HW, HW)
        context = (value @ attention.transpose(1, 2)).view(count, -1, height, width)
        return human + self.out(context)
