"""Calibration (CHORUS Sec. 3.3): every kept image gets an SMPL body and a perspective camera in the
person-centric frame, pelvis at the origin.

The official code takes the body pose from a 3D regressor (FrankMocap) and fits only the camera: rotation,
translation and focal length (Adam, lr 0.01, 2,400 iterations, stop below 0.7 px), the focal starting at a
46.4° field of view across the image *width* (as here). `fit` has no regressor weights to run, so it fits
pose and camera together to the 2D keypoints, as a MAP estimate:

- several starts per image: 8 camera azimuths around the body x every mode of the pose prior, each first
  fitted camera-only with the mode's pose held (the official fit, the mode standing in for the regressor's
  pose; the focal held too); per azimuth the `STARTS_PER_AZIMUTH` best are refined jointly (pose, camera,
  focal); the lowest energy wins: reprojection alone cannot choose between the depth flips that fit the
  keypoints equally well;
- the energy: squared reprojection error over a keypoint noise of `KEYPOINT_NOISE` x the person's size,
  a Gaussian-mixture pose prior (SMPLify's form: the component chosen at the start, its Mahalanobis term and
  log-weight), joint limits (knees and elbows bend one way) and a log-normal prior holding the focal near its
  46.4° start (the official optimizes the focal with no prior: with the pose free too, 17 keypoints trade
  focal against depth);
- the pose prior: `procedural` is the stand-in generator's own pose distribution (each placement's base
  pose, Gaussian jitter on the joints it jitters), so on procedural scenes the prior is exact and the
  figures measure the fit, not a prior's mismatch with real poses; for real SMPL a GMM `.npz`
  (`means`, `covars`, `weights`: SMPLify's `gmm_08.pkl` converted once) plays the same part;
- `start_poses` (a 3D regressor's output, when one is run) replace the prior's modes as the starting poses.

The solver is Levenberg-Marquardt on all hypotheses at once (Jacobians by `torch.func`), `steps` iterations
per stage, not the official 2,400 Adam steps: the least-squares form converges in tens of iterations, and
Adam at this keypoint noise stalled short of the truth's energy (benchmarks/chorus_calibration.py measures
the fit). `given` takes the true pose and camera of procedural scenes (ground truth for the later stages).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from hoi_factory.stage import Reject, Row, Stage
from models.body.smpl import COCO_FROM_SMPL, NUM_BODY_JOINTS, BodyModel, load_body_model
from models.body.standin import JOINT_NAMES
from models.render.camera import camera_azimuth, intrinsics, orbit_camera

START_AZIMUTHS = tuple(range(0, 360, 45))
START_ELEVATION = 10.0
STARTS_PER_AZIMUTH = 2  # camera-only fits refined jointly with the pose, per start azimuth and image
KEYPOINT_NOISE = 0.002  # keypoint noise, as a share of the person's size in the image
FOCAL_LOG_STD = 0.1  # log-normal prior on the focal around its 46.4° start
MIN_CONFIDENCE = 0.5
# One-way hinges (joint, axis, lowest, highest angle in radians): the margin past straight (0.5 rad) keeps the
# procedural generator's jitter (0.25 rad) inside the limits.
JOINT_LIMITS = (("left_knee", 0, -0.5, 2.8), ("right_knee", 0, -0.5, 2.8),
                ("left_elbow", 1, -2.8, 0.5), ("right_elbow", 1, -0.5, 2.8))
PRIOR_FLOOR = 0.05  # radians: the procedural prior's spread on joints the generator does not jitter


@dataclass
class PosePrior:
    """A Gaussian mixture over body poses (69 axis-angle values)."""

    means: torch.Tensor  # (C, 69)
    precision_factors: torch.Tensor  # (C, 69, 69): L with L L^T = covariance^-1
    costs: torch.Tensor  # (C,): -log weight + 0.5 log det covariance

    @classmethod
    def from_gaussians(cls, means: np.ndarray, covariances: np.ndarray, weights: np.ndarray) -> PosePrior:
        covariances = torch.as_tensor(covariances, dtype=torch.float64)
        factors = torch.linalg.cholesky(torch.linalg.inv(covariances))
        costs = -torch.log(torch.as_tensor(weights, dtype=torch.float64)) + 0.5 * torch.logdet(covariances)
        return cls(torch.as_tensor(means, dtype=torch.float32), factors.float(), (costs - costs.min()).float())

    def component_energy(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, 69) -> (B, C): each component's negative log-likelihood, up to a constant."""
        whitened = torch.einsum("bcj,cjk->bck", pose[:, None] - self.means[None], self.precision_factors)
        return 0.5 * (whitened**2).sum(-1) + self.costs


def procedural_prior(jitter: float = 0.25) -> PosePrior:
    """The stand-in generator's pose distribution (tasks/chorus/scenes.py `interaction_pose`): one component
    per placement, its base pose as mean, `jitter` radians on the jittered joints, `PRIOR_FLOOR` elsewhere."""
    from tasks.chorus.lexicon import PLACEMENTS
    from tasks.chorus.scenes import JITTERED_JOINTS, interaction_pose

    std = np.full((NUM_BODY_JOINTS, 3), PRIOR_FLOOR)
    for joint in JITTERED_JOINTS:
        std[JOINT_NAMES.index(joint) - 1] = max(jitter, PRIOR_FLOOR)
    means = np.stack([interaction_pose(name, 0.0, np.random.default_rng(0)) for name in PLACEMENTS])
    covariance = np.diag(std.reshape(-1) ** 2)
    return PosePrior.from_gaussians(means, np.repeat(covariance[None], len(means), 0), np.ones(len(means)))


def load_pose_prior(source: str, jitter: float = 0.25) -> PosePrior:
    """`procedural`, or a GMM `.npz` with `means` (C, 69), `covars` (C, 69, 69) and `weights` (C,)."""
    if source == "procedural":
        return procedural_prior(jitter)
    path = Path(source)
    if path.suffix != ".npz" or not path.is_file():
        raise ValueError(f"pose prior {source!r}: expected 'procedural' or an existing GMM .npz file")
    with np.load(path, allow_pickle=False) as gmm:
        return PosePrior.from_gaussians(gmm["means"], gmm["covars"], gmm["weights"])


def _rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3), written without in-place steps so that torch.func can differentiate it."""
    angle = torch.sqrt((axis_angle**2).sum(-1, keepdim=True) + 1e-12)
    x, y, z = (axis_angle / angle).unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*axis_angle.shape[:-1], 3, 3)
    sin, cos = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    return torch.eye(3) + sin * cross + (1 - cos) * cross @ cross


class KeypointModel:
    """COCO keypoints of a mean-shape body as a function of one pose, without the mesh: forward kinematics of
    the 24 joints and skinning of the face vertices smplx reads keypoints from (SMPL's pose blend shapes
    ignored there; the stand-in has none). The same keypoints as `BodyModel.pose`, at a fraction of the cost,
    in a form `torch.func` batches and differentiates (`batched` for many poses)."""

    def __init__(self, body: BodyModel):
        model = body.model
        self.rest_joints = model.J_regressor @ model.v_template  # (24, 3)
        self.parents = [int(p) for p in body.parents]
        self.bones = self.rest_joints - self.rest_joints[[max(p, 0) for p in self.parents]]
        vertex_ids = model.vertex_joint_selector.extra_joints_idxs[:max(COCO_FROM_SMPL) - 23]  # joints 24, 25...
        self.face_weights = model.lbs_weights[vertex_ids]  # (F, 24)
        self.face_offsets = model.v_template[vertex_ids][:, None] - self.rest_joints[None]  # (F, 24, 3)
        self.order = torch.tensor(COCO_FROM_SMPL)
        self.batched = torch.func.vmap(self)

    def __call__(self, pose: torch.Tensor) -> torch.Tensor:
        """(69,) -> (17, 3), pelvis at the origin."""
        local = _rodrigues(pose.reshape(NUM_BODY_JOINTS, 3))
        rotations, positions = [torch.eye(3)], [self.rest_joints[0]]
        for joint in range(1, len(self.parents)):
            parent = self.parents[joint]
            positions.append(rotations[parent] @ self.bones[joint] + positions[parent])
            rotations.append(rotations[parent] @ local[joint - 1])
        rotation, joints = torch.stack(rotations), torch.stack(positions)
        face = (torch.einsum("fj,jmn,fjn->fm", self.face_weights, rotation, self.face_offsets)
                + self.face_weights @ joints)
        return torch.cat([joints, face])[self.order] - joints[0]


LIMIT_STIFFNESS = 100.0  # energy per squared radian past a limit
_LIMIT_INDEX = [(JOINT_NAMES.index(joint) - 1) * 3 + axis for joint, axis, _, _ in JOINT_LIMITS]


def joint_limit_residuals(pose: torch.Tensor) -> torch.Tensor:
    """(..., 69) -> (..., len(JOINT_LIMITS)): the excess past each hinge limit, scaled to energy = 0.5 r^2."""
    angle = pose[..., _LIMIT_INDEX]
    low = torch.tensor([limit[2] for limit in JOINT_LIMITS])
    high = torch.tensor([limit[3] for limit in JOINT_LIMITS])
    return (2 * LIMIT_STIFFNESS) ** 0.5 * ((low - angle).clamp(min=0) + (angle - high).clamp(min=0))


class _View(NamedTuple):
    """One hypothesis's fixed inputs: its image's keypoints, starting K and noise, the camera rotation the
    rotation parameters act on, and the prior component its pose is held to."""

    target: torch.Tensor  # (17, 2)
    weight: torch.Tensor  # (17,)
    K: torch.Tensor  # (3, 3)
    noise: torch.Tensor  # () pixels
    base_rotation: torch.Tensor  # (3, 3)
    mean: torch.Tensor  # (69,)
    factor: torch.Tensor  # (69, 69)

    def select(self, index: torch.Tensor) -> _View:
        return _View(*(field[index] for field in self))


def _project(model: KeypointModel, camera: torch.Tensor, pose: torch.Tensor, view: _View) -> torch.Tensor:
    """camera (7): rotation (axis-angle, after the base rotation), translation, log focal scale -> (17, 2)."""
    cam = model(pose) @ (_rodrigues(camera[:3]) @ view.base_rotation).T + camera[3:6]
    focal = view.K[0, 0] * torch.exp(camera[6])
    return focal * cam[:, :2] / cam[:, 2:].clamp(min=1e-3) + view.K[:2, 2]


def _residuals(model: KeypointModel, camera: torch.Tensor, pose: torch.Tensor, view: _View) -> torch.Tensor:
    """Energy = 0.5 |residuals|^2 (+ the prior component's constant): keypoints over their noise, the
    whitened pose, the joint-limit excess, the log focal over its spread."""
    data = (_project(model, camera, pose, view) - view.target) * (view.weight.sqrt() / view.noise)[:, None]
    return torch.cat([data.reshape(-1), (pose - view.mean) @ view.factor, joint_limit_residuals(pose),
                      camera[6:] / FOCAL_LOG_STD])


def _levenberg_marquardt(residuals, free: torch.Tensor, fixed: tuple, iterations: int) -> torch.Tensor:
    """Minimizes 0.5 |residuals(free_i, *fixed_i)|^2 for every row i of `free` (N, D) independently."""
    value = torch.func.vmap(residuals)
    jacobian = torch.func.vmap(torch.func.jacfwd(residuals))
    current = value(free, *fixed)
    energy = 0.5 * (current**2).sum(-1)
    damping = torch.full((len(free),), 1e-3)
    identity = torch.eye(free.shape[1])
    for _ in range(iterations):
        J = jacobian(free, *fixed)
        normal = J.transpose(1, 2) @ J
        # Marquardt's scaling, plus a little identity for parameters the residuals do not move.
        system = normal + damping[:, None, None] * (torch.diag_embed(normal.diagonal(dim1=1, dim2=2)) + 1e-6 * identity)
        step = torch.linalg.solve(system, -(J.transpose(1, 2) @ current[..., None]))[..., 0]
        candidate = free + step
        trial = value(candidate, *fixed)
        trial_energy = 0.5 * (trial**2).sum(-1)
        better = trial_energy < energy  # NaN is never better
        free = torch.where(better[:, None], candidate, free)
        current = torch.where(better[:, None], trial, current)
        energy = torch.where(better, trial_energy, energy)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-9, 1e9)
    return free


def _starting_cameras(model: KeypointModel, poses: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                      K: torch.Tensor, azimuths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R, t of cameras at `azimuths` (degrees) and START_ELEVATION, at the distance where the posed body's
    spread matches the keypoints' and shifted so that their centres line up."""
    rotation = torch.tensor(np.stack([orbit_camera(float(a), START_ELEVATION, 1.0)[0] for a in azimuths]),
                            dtype=torch.float32)
    cam = model.batched(poses) @ rotation.transpose(1, 2)
    count = weight.sum(1).clamp(min=1)[:, None]
    centre3d, centre2d = (cam * weight[..., None]).sum(1) / count, (target * weight[..., None]).sum(1) / count
    spread3d = (weight * (cam[..., :2] - centre3d[:, None, :2]).norm(dim=-1)).sum(1)
    spread2d = (weight * (target - centre2d[:, None]).norm(dim=-1)).sum(1).clamp(min=1e-3)
    focal = K[:, 0, 0]
    depth = focal * spread3d / spread2d
    xy = (centre2d - K[:, :2, 2]) * (depth / focal)[:, None] - centre3d[:, :2]
    return rotation, torch.cat([xy, (depth - centre3d[:, 2])[:, None]], 1)


def fit_views(keypoints: np.ndarray, K: np.ndarray, body_model: str = "standin", steps: int = 10,
              prior: PosePrior | None = None, start_poses: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """keypoints (B, 17, 3) pixel x, y, confidence; K (B, 3, 3) the starting intrinsics; `steps` Levenberg-
    Marquardt iterations per stage. Returns per view `body_pose` (69), `R`, `t`, the fitted `K`, the mean
    reprojection `error` in pixels over confident keypoints and the MAP `energy`. `start_poses` (B, 69): a
    regressor's poses, tried instead of the prior's modes."""
    prior = prior or procedural_prior()
    model = KeypointModel(load_body_model(body_model))
    batch = len(keypoints)
    keypoints = torch.as_tensor(keypoints, dtype=torch.float32)
    modes = (torch.as_tensor(start_poses, dtype=torch.float32)[None] if start_poses is not None
             else prior.means[:, None].expand(-1, batch, -1))  # (P, B, 69)
    azimuths = torch.tensor(START_AZIMUTHS, dtype=torch.float32)
    # Hypotheses in (azimuth, start pose, image) order: index = (a * P + p) * B + b.
    hypotheses = len(azimuths) * len(modes)
    image = torch.arange(batch).repeat(hypotheses)
    pose = modes.repeat(len(azimuths), 1, 1).reshape(-1, NUM_BODY_JOINTS * 3)
    component = prior.component_energy(pose).argmin(1)
    target, weight = keypoints[image, :, :2], (keypoints[image, :, 2] >= MIN_CONFIDENCE).float()
    seen = torch.where(weight[..., None] > 0, target, torch.nan)
    size = (seen.nan_to_num(-torch.inf).amax(1) - seen.nan_to_num(torch.inf).amin(1)).norm(dim=-1)
    Ks = torch.as_tensor(K, dtype=torch.float32)[image]
    base_rotation, translation = _starting_cameras(model, pose, target, weight, Ks,
                                                   azimuths.repeat_interleave(len(modes) * batch))
    view = _View(target, weight, Ks, KEYPOINT_NOISE * size.nan_to_num(1.0).clamp(min=1.0), base_rotation,
                 prior.means[component], prior.precision_factors[component])

    # Camera-only fits with the start poses held, as the official fit holds the regressor's pose. The focal
    # is held too: freed while the pose is still wrong, it runs off to a near-orthographic camera.
    def camera_only(rotation_translation: torch.Tensor, pose: torch.Tensor, view: _View) -> torch.Tensor:
        return _residuals(model, torch.cat([rotation_translation, torch.zeros(1)]), pose, view)

    camera = torch.cat([torch.zeros(len(pose), 3), translation], 1)
    camera = _levenberg_marquardt(camera_only, camera, (pose, view), steps)
    with torch.no_grad():
        residuals = torch.func.vmap(camera_only)(camera, pose, view)
        camera = torch.cat([camera, torch.zeros(len(camera), 1)], 1)
        energy = (0.5 * (residuals**2).sum(-1) + prior.costs[component]).reshape(hypotheses, batch)
    # Per azimuth, its best start poses: the joint fits see every side of the body.
    per_azimuth = energy.reshape(len(azimuths), len(modes), batch)
    best_modes = per_azimuth.topk(min(STARTS_PER_AZIMUTH, len(modes)), dim=1, largest=False).indices
    keep = (best_modes + torch.arange(len(azimuths))[:, None, None] * len(modes)).reshape(-1, batch)  # (J, B)
    pick = (keep * batch + torch.arange(batch)).reshape(-1)

    # Joint fits of pose, camera and focal from the best camera-only fits.
    def joint(free: torch.Tensor, view: _View) -> torch.Tensor:
        return _residuals(model, free[:7], free[7:], view)

    view, component = view.select(pick), component[pick]
    free = _levenberg_marquardt(joint, torch.cat([camera[pick], pose[pick]], 1), (view,), steps)
    with torch.no_grad():
        residuals = torch.func.vmap(joint)(free, view)
        energy = (0.5 * (residuals**2).sum(-1) + prior.costs[component]).reshape(len(keep), batch)
        best = energy.argmin(0) * batch + torch.arange(batch)
        camera, pose, view = free[best, :7], free[best, 7:], view.select(best)
        pixels = torch.func.vmap(lambda c, p, v: _project(model, c, p, v))(camera, pose, view)
        distance = (pixels - view.target).norm(dim=-1)
        error = (view.weight * distance).sum(1) / view.weight.sum(1).clamp(min=1)
        fitted_K = view.K.clone()
        fitted_K[:, :2, :2] *= torch.exp(camera[:, 6])[:, None, None]
    return {"body_pose": pose.numpy(), "R": (_rodrigues(camera[:, :3]) @ view.base_rotation).numpy(),
            "t": camera[:, 3:6].numpy(), "K": fitted_K.numpy(), "error": error.numpy(),
            "energy": energy.min(0).values.numpy()}


def pose_errors(body: BodyModel, pose: np.ndarray, R: np.ndarray, t: np.ndarray, true_pose: np.ndarray,
                true_R: np.ndarray, true_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per view (B,): MPJPE in metres over the 24 SMPL joints in camera coordinates, each pose's pelvis at the
    origin (Human3.6M protocol 1: root translation aligned, no rotation alignment, so the camera's rotation
    error counts), and the camera azimuth error in degrees (0..180)."""
    joints = [np.einsum("bij,bnj->bni", np.asarray(rotation), body.pose(torch.as_tensor(np.asarray(p)).float())
                        .joints.numpy()) for p, rotation in ((pose, R), (true_pose, true_R))]
    mpjpe = np.linalg.norm(joints[0] - joints[1], axis=-1).mean(1)  # joints are pelvis-relative already
    azimuth = np.array([camera_azimuth(*camera) for camera in zip(R, t)])
    true_azimuth = np.array([camera_azimuth(*camera) for camera in zip(true_R, true_t)])
    return mpjpe, np.abs((azimuth - true_azimuth + 180) % 360 - 180)


class Calibrate(Stage):
    """Adds body_pose, K, R, t, azimuth, reprojection_error and calibration, and where the row carries the
    procedural truth the MPJPE (metres) and azimuth error (degrees), NaN elsewhere; rejects fits worse than
    `max_error_px`. The starting K has the 46.4° field of view across the image width, as the official code."""

    batch_size = 32
    thumbnail_key = "image_array"
    makes = frozenset({"body_pose", "K", "R", "t", "azimuth", "reprojection_error", "calibration", "mpjpe",
                       "azimuth_error"})

    def __init__(self, method: str, body_model: str, max_error_px: float, steps: int = 10,
                 pose_prior: str = "procedural", prior_jitter: float = 0.25):
        self.method, self.body_model, self.max_error_px, self.steps = method, body_model, max_error_px, steps
        self.pose_prior, self.prior_jitter = pose_prior, prior_jitter
        # 'given' takes the truth only procedural scenes carry: the column check refuses other sources.
        self.needs = frozenset({"image_array", *(("true_pose", "true_R", "true_t") if method == "given"
                                                 else ("keypoints",))})

    def process(self, batch: list[Row]) -> list[Row | Reject]:
        Ks = np.stack([intrinsics(r["image_array"].shape[1], r["image_array"].shape[0], across="width")
                       for r in batch])
        if self.method == "given":
            fitted = {"body_pose": np.stack([r["true_pose"] for r in batch]),
                      "R": np.stack([r["true_R"] for r in batch]), "t": np.stack([r["true_t"] for r in batch]),
                      "K": Ks, "error": np.zeros(len(batch))}
        else:
            fitted = fit_views(np.stack([r["keypoints"] for r in batch]), Ks, self.body_model, self.steps,
                               load_pose_prior(self.pose_prior, self.prior_jitter))
        mpjpe, azimuth_error = np.full(len(batch), np.nan), np.full(len(batch), np.nan)
        known = [i for i, r in enumerate(batch) if "true_pose" in r]  # procedural scenes carry their truth
        if known:
            mpjpe[known], azimuth_error[known] = pose_errors(
                load_body_model(self.body_model), *(fitted[key][known] for key in ("body_pose", "R", "t")),
                *(np.stack([batch[i][key] for i in known]) for key in ("true_pose", "true_R", "true_t")))
        results: list[Row | Reject] = []
        for i, row in enumerate(batch):
            error = float(fitted["error"][i])
            if not error <= self.max_error_px:  # NaN too: a fit that diverged
                results.append(Reject.of(row, "calibration failed", f"reprojection error {error:.1f} px"))
                continue
            R, t = fitted["R"][i], fitted["t"][i]
            results.append({**row, "body_pose": fitted["body_pose"][i].astype(np.float32), "K": fitted["K"][i],
                            "R": R, "t": t, "azimuth": camera_azimuth(R, t), "reprojection_error": error,
                            "calibration": self.method, "mpjpe": float(mpjpe[i]),
                            "azimuth_error": float(azimuth_error[i])})
        return results
