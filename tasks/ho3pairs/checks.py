"""Is the hand really gone, and how good is the object-only image? Measured first, then filtered on.

- `hand_residue`: share of the repainted hand pixels that still look like the hand — each pixel is compared
  under two colour models fitted on the HOI image, the hand's pixels and the ring just outside the repainted
  region. NaN when the two models cannot tell the HOI image's own hand apart (nothing to measure).
- `seam_score`: mean gradient on the outline of the repainted region over the mean gradient just outside it;
  a pasted patch has a seam (>> 1), a smooth fill does not.
- with a hand segmenter (mediapipe, detectron2), the detector runs on the object-only image too.
- quality, when the true object-only view is known: PSNR and SSIM of the crop, PSNR inside the repainted region.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hoi_factory.context import StageContext
from hoi_factory.stage import Filter, MapStage, Row
from tasks.ho3pairs.hands import make_segmenter, segmenter_resources

RING = 9  # px: the ring around the repainted region that stands for "not hand"
MIN_SEPARABLE = 0.6  # the colour test must call at least this share of the HOI image's hand pixels hand-like


def _log_likelihood(pixels: np.ndarray, samples: np.ndarray) -> np.ndarray:
    mean = samples.mean(0)
    covariance = np.cov(samples.T) + np.eye(3) * 4.0  # a few grey levels of noise keep it invertible
    delta = pixels - mean
    return -0.5 * (np.einsum("ni,ij,nj->n", delta, np.linalg.inv(covariance), delta)
                   + np.log(np.linalg.det(covariance)))


def hand_residue(hoi: np.ndarray, object_only: np.ndarray, hand: np.ndarray, region: np.ndarray) -> float:
    ring = ndimage.binary_dilation(region, np.ones((RING, RING), bool)) & ~region
    hand_pixels, ring_pixels = hoi[hand].reshape(-1, 3).astype(float), hoi[ring].reshape(-1, 3).astype(float)
    if len(hand_pixels) < 10 or len(ring_pixels) < 10:
        return math.nan

    def hand_like(pixels: np.ndarray) -> float:
        return float(np.mean(_log_likelihood(pixels, hand_pixels) > _log_likelihood(pixels, ring_pixels)))

    if hand_like(hand_pixels) < MIN_SEPARABLE:
        return math.nan
    return hand_like(object_only[hand].reshape(-1, 3).astype(float))


def _gradient(image: np.ndarray) -> np.ndarray:
    grey = image.astype(float).mean(-1)
    return np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))


def seam_score(image: np.ndarray, region: np.ndarray) -> float:
    """Mean gradient on the region's outline over the mean gradient in the ring around it (same neighbourhood,
    so object edges crossing the outline count on both sides)."""
    boundary = ndimage.binary_dilation(region) & ~ndimage.binary_erosion(region)
    ring = (ndimage.binary_dilation(region, np.ones((RING, RING), bool))
            & ~ndimage.binary_dilation(region, np.ones((3, 3), bool)))
    if not boundary.any() or not ring.any():
        return math.nan
    gradient = _gradient(image)
    return float(gradient[boundary].mean() / max(gradient[ring].mean(), 1.0))


def quality(truth: np.ndarray | None, image: np.ndarray | None, region: np.ndarray) -> dict[str, float]:
    if truth is None or image is None:
        return {"psnr": math.nan, "ssim": math.nan, "psnr_inpainted": math.nan}
    return {"psnr": float(peak_signal_noise_ratio(truth, image, data_range=255)),
            "ssim": float(structural_similarity(truth, image, channel_axis=-1, data_range=255)),
            "psnr_inpainted": float(peak_signal_noise_ratio(truth[region], image[region], data_range=255))}


class MeasureObjectImage(MapStage):
    """Records residue, seam, a detector's hand count and the quality figures; drops nothing."""

    batch_size = 8
    needs = frozenset({"image_array", "hand_mask_array", "object_array", "inpaint_mask_array"})
    makes = frozenset({"hand_residue", "seam_score", "hands_detected", "psnr", "ssim", "psnr_inpainted",
                       "psnr_sdedit"})

    def __init__(self, backend: str, model: str | None, gpus: float = 0.0):
        self.backend, self.model = backend, model
        self.resources = segmenter_resources(backend, gpus)

    def setup(self, context: StageContext) -> None:
        self.detector = make_segmenter(self.backend, self.model, context.device)

    def process_row(self, row: Row) -> Row:
        region, obj = row["inpaint_mask_array"], row["object_array"]
        truth = row.get("object_only_array")
        measured = {
            "hand_residue": hand_residue(row["image_array"], obj, row["hand_mask_array"], region),
            "seam_score": seam_score(obj, region),
            "hands_detected": None if self.detector is None else len(self.detector.masks(obj)),
            **quality(truth, obj, region),
        }
        measured["psnr_sdedit"] = quality(truth, row.get("sdedit_array"), region)["psnr"]
        return {**row, **measured}


class HandRemoved(Filter):
    """Drops object-only images where the hand is still there, or where the repainted patch shows a seam."""

    needs = frozenset({"hands_detected", "hand_residue", "seam_score"})
    thumbnail_key = "object_array"  # the object image that still shows the hand or a seam

    def __init__(self, max_hand_residue: float, max_seam_score: float):
        self.max_hand_residue, self.max_seam_score = max_hand_residue, max_seam_score

    def reason_to_drop(self, row: Row) -> str | None:
        if (row["hands_detected"] or 0) > 0:
            return "hand still detected"
        if row["hand_residue"] > self.max_hand_residue:  # NaN (not measurable) compares False: kept
            return "hand still visible"
        if row["seam_score"] > self.max_seam_score:
            return "visible seam"
        return None
