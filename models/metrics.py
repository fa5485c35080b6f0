"""Image metrics of the HOI synthesis papers: FID, LPIPS and contact recall.

Metric networks need weights nobody can download here; each takes a path and says clearly when it is missing:
- FID: torchvision's Inception-v3 (pool features, 2048-d), weights = its state dict (.safetensors, or .pth read
  with weights_only). Note that the usual FID numbers use the TF-ported "pt_inception-2015-12-05" weights.
- LPIPS (the `lpips` package, `pip install -e '.[metrics]'`): its linear heads ship inside the package; the
  AlexNet backbone weights (torchvision's `alexnet` state dict) come from a path.
- contact recall: share of generated images whose hand touches the object. The papers read the contact state
  off a hand-object detector; here the state comes from masks (a hand mask from a segmenter, the object mask of
  the input) — `in_contact` — so any segmenter can feed it.
`weights="random"` builds a network with random weights: the plumbing runs, the numbers mean nothing.
Not models/pretrained.py's mixin: the weights are third-party state dicts of torchvision / lpips networks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import linalg, ndimage

from hoi_factory.optional import require

RANDOM = "random"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_weights(path: str, what: str) -> dict[str, torch.Tensor]:
    if not path:
        raise ValueError(f"{what} weights are needed: give the path of a state dict (.safetensors or .pth)")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{what} weights {path!r}: no such file")
    if file.suffix == ".safetensors":
        import safetensors.torch

        return safetensors.torch.load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)  # tensors only: no code runs on load


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets (N, D)."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    # Tr((S_a S_b)^1/2) = Tr((S_a^1/2 S_b S_a^1/2)^1/2): symmetric PSD throughout, so eigh stays exact even
    # when few samples leave the covariances singular (where sqrtm of the product breaks down).
    values, vectors = linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    trace_root = np.sqrt(np.clip(linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


class InceptionFeatures:
    """2048-d pool features of Inception-v3 for uint8 images (N, H, W, 3)."""

    def __init__(self, weights: str, device: str = "cpu"):
        import torchvision

        model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=weights == RANDOM)
        if weights != RANDOM:
            model.load_state_dict(load_weights(weights, "FID (Inception-v3)"))
        model.fc = torch.nn.Identity()
        self.model, self.device = model.eval().to(device), device

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        features = []
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.asarray(images[start : start + batch_size])).permute(0, 3, 1, 2).float() / 255
            batch = torch.nn.functional.interpolate(batch, size=(299, 299), mode="bilinear", align_corners=False)
            features.append(self.model(((batch - mean) / std).to(self.device)).cpu().numpy())
        return np.concatenate(features).astype(np.float64)


def fid(real: np.ndarray, generated: np.ndarray, extractor: InceptionFeatures) -> float:
    if min(len(real), len(generated)) < 2:
        raise ValueError("FID needs at least two images on each side")
    return frechet_distance(extractor(real), extractor(generated))


class LPIPS:
    """Learned perceptual distance (Zhang et al. 2018) with AlexNet; images uint8 (N, H, W, 3) -> (N,)."""

    def __init__(self, backbone_weights: str, device: str = "cpu"):
        lpips = require("lpips", "metrics", "LPIPS")
        import torchvision

        self.model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
        if backbone_weights != RANDOM:
            alexnet = torchvision.models.alexnet(weights=None)
            alexnet.load_state_dict(load_weights(backbone_weights, "LPIPS backbone (AlexNet)"))
            for part in (self.model.net.slice1, self.model.net.slice2, self.model.net.slice3, self.model.net.slice4,
                         self.model.net.slice5):
                for index, layer in part.named_children():
                    layer.load_state_dict(alexnet.features[int(index)].state_dict())
        self.model = self.model.eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        def tensor(images):
            return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1

        return self.model(tensor(a), tensor(b)).flatten().cpu().numpy()


def in_contact(hand_mask: np.ndarray, object_mask: np.ndarray, reach_px: int = 2) -> bool:
    """The hand touches the object: the hand mask grown by `reach_px` overlaps the object mask."""
    grown = ndimage.binary_dilation(hand_mask, np.ones((2 * reach_px + 1,) * 2, bool)) if reach_px else hand_mask
    return bool((grown & object_mask).any())


def contact_recall(hand_masks: list[np.ndarray | None], object_masks: list[np.ndarray]) -> float:
    """Share of images with a hand in contact with the object; no hand found (None) counts as no contact."""
    if not hand_masks:
        return float("nan")
    return float(np.mean([mask is not None and in_contact(mask, obj) for mask, obj in zip(hand_masks, object_masks)]))
