"""Calibration (CHORUS Sec. 3.3): every kept image gets an SMPL body and a perspective camera (FOV 46.4°)
in the person-centric frame, pelvis at the origin.

`fit` optimizes body pose and camera to the detected 2D keypoints (the route when no 3D pose regressor
is configured); four starting azimuths per image, the best fit wins. `given` takes the true pose and
camera of procedural scenes (ground truth for tests of the later stages).
"""

from __future__ import annotations

import numpy as np
import torch

from hoi_factory.stage import Reject, Row, Stage
from models.body.smpl import NUM_BODY_JOINTS, load_body_model
from models.render.camera import camera_azimuth, intrinsics, orbit_camera

START_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
START_DISTANCE = 3.0


def _rotation_matrices(axis_angle: torch.Tensor) -> torch.Tensor:
    from smplx.lbs import batch_rodrigues

    return batch_rodrigues(axis_angle)


def fit_views(keypoints: np.ndarray, K: np.ndarray, body_model: str = "standin", steps: int = 200,
              pose_prior: float = 1e-3) -> dict[str, np.ndarray]:
    """keypoints (B, 17, 3) pixel x, y, confidence; K (B, 3, 3). Returns per view `body_pose` (69),
    `R`, `t` and the mean reprojection `error` in pixels over confident keypoints."""
    body = load_body_model(body_model)
    batch, hypotheses = len(keypoints), len(START_AZIMUTHS)
    target = torch.as_tensor(keypoints, dtype=torch.float32).repeat(hypotheses, 1, 1)
    Ks = torch.as_tensor(K, dtype=torch.float32).repeat(hypotheses, 1, 1)
    scale = Ks[:, 0, 0].mean()  # losses in focal-normalized units
    starts = [orbit_camera(az, 0.0, START_DISTANCE) for az in START_AZIMUTHS]
    R0 = torch.tensor(np.stack([r for r, _ in starts]), dtype=torch.float32).repeat_interleave(batch, 0)
    t0 = torch.tensor(np.stack([t for _, t in starts]), dtype=torch.float32).repeat_interleave(batch, 0)
    delta = torch.zeros(batch * hypotheses, 3, requires_grad=True)  # rotation applied after R0
    translation = t0.clone().requires_grad_(True)
    pose = torch.zeros(batch * hypotheses, NUM_BODY_JOINTS * 3, requires_grad=True)
    optimizer = torch.optim.Adam([delta, translation, pose], lr=0.03)
    weight = (target[:, :, 2] >= 0.5).float()

    def residual():
        rotation = _rotation_matrices(delta) @ R0
        joints = body.pose(pose).keypoints
        cam = joints @ rotation.transpose(1, 2) + translation[:, None]
        pixels = cam @ Ks.transpose(1, 2)
        projected = pixels[..., :2] / pixels[..., 2:3].clamp(min=1e-3)
        return ((projected - target[..., :2]) / scale).norm(dim=-1), rotation

    for _ in range(steps):
        optimizer.zero_grad()
        errors, _ = residual()
        loss = (weight * errors**2).sum(1) / weight.sum(1).clamp(min=1) + pose_prior * (pose**2).sum(1)
        loss.sum().backward()
        optimizer.step()
    with torch.no_grad():
        errors, rotation = residual()
        mean_error = ((weight * errors).sum(1) / weight.sum(1).clamp(min=1) * scale).reshape(hypotheses, batch)
        best = mean_error.argmin(0)
        pick = best * batch + torch.arange(batch)
    return {"body_pose": pose[pick].detach().numpy(), "R": rotation[pick].numpy(),
            "t": translation[pick].detach().numpy(), "error": mean_error[best, torch.arange(batch)].numpy()}


class Calibrate(Stage):
    """Adds body_pose, K, R, t, azimuth, reprojection_error and calibration; rejects fits worse than `max_error_px`."""

    batch_size = 32
    makes = frozenset({"body_pose", "K", "R", "t", "azimuth", "reprojection_error", "calibration"})

    def __init__(self, method: str, body_model: str, max_error_px: float, steps: int = 200):
        self.method, self.body_model, self.max_error_px, self.steps = method, body_model, max_error_px, steps
        # 'given' takes the truth only procedural scenes carry: the column check refuses other sources.
        self.needs = frozenset({"image_array", *(("true_pose", "true_R", "true_t") if method == "given"
                                                 else ("keypoints",))})

    def process(self, batch: list[Row]) -> list[Row | Reject]:
        Ks = np.stack([intrinsics(r["image_array"].shape[1], r["image_array"].shape[0]) for r in batch])
        if self.method == "given":
            fitted = {"body_pose": np.stack([r["true_pose"] for r in batch]),
                      "R": np.stack([r["true_R"] for r in batch]), "t": np.stack([r["true_t"] for r in batch]),
                      "error": np.zeros(len(batch))}
        else:
            fitted = fit_views(np.stack([r["keypoints"] for r in batch]), Ks, self.body_model, self.steps)
        results: list[Row | Reject] = []
        for i, row in enumerate(batch):
            error = float(fitted["error"][i])
            if not error <= self.max_error_px:  # NaN too: a fit that diverged
                results.append(Reject.of(row, "calibration failed", f"reprojection error {error:.1f} px"))
                continue
            R, t = fitted["R"][i], fitted["t"][i]
            results.append({**row, "body_pose": fitted["body_pose"][i].astype(np.float32), "K": Ks[i], "R": R, "t": t,
                            "azimuth": camera_azimuth(R, t), "reprojection_error": error,
                            "calibration": self.method})
        return results
