"""HOGSA's pose optimization module (POM, Qu et al. 2025, Sec. 3.3): new bimanual grasps from dataset grasps.

A dataset grasp is perturbed (`perturb`: each hand turned by up to 20 degrees about x, y and z, moved 5% of its
wrist-object distance away from the object plus up to 6 cm in a random direction; the object moved up to 6 cm; an
articulated object opened or closed by 0.01 pi to 0.2 pi), then each hand is fitted back onto the fixed object
(`optimize_hand_pose`: 200 Adam iterations over global rotation, translation and finger pose) with

    L = lambda_C L_C + lambda_H L_H + lambda_P L_P (+ a finger-pose prior),   lambda_C, lambda_H, lambda_P = 1, 1, 17.

  - L_C, contact consistency. STAND-IN for the paper's learned ContactNet (from GraspTTA, Jiang et al. 2021), whose
    weights this project does not have: the target contact map is the SOURCE grasp's own, the hand vertices within
    `CONTACT_PRIOR_DISTANCE` of the object in the dataset pose (`contact_prior`); L_C is the mean squared distance of
    those vertices to the surface, which, unlike a saturating contact probability, still pulls from centimetres away.
  - L_H, hand-centric (GraspTTA's definition): object surface points within 2 cm of the hand are drawn to the nearest
    vertex of the hand's prior contact regions (`hand_centric_vertices`).
  - L_P, penetration: squared depth of hand vertices inside the object, from a precomputed signed-distance grid
    sampled trilinearly (models/hogsa/sdf.py), summed over vertices.
  - A finger-pose prior (our addition, `POSE_PRIOR_WEIGHT`): the paper also frees the finger pose; this keeps it near
    the source grasp's. Shape (betas) stays fixed: the hand's Gaussian model belongs to one shape.
Distances inside the losses are in centimetres so that the paper's weights act on terms of order one. lambda_P grows
from 0 to 17 over the first half of the iterations (ours): at full weight from the start, a perturbed hand that wraps
the object (up to 3 cm deep after the 20 degree turn) is shot clear of it before the contact term can turn it back,
and stays there; with the ramp, contact rose on every one of 16 procedural hands (0.10 -> 0.46 at 100 iterations).
The paper's learning rates (pose 5e-4, translation 3e-5 per step, supplementary) cannot undo a 6 cm perturbation in
200 steps; ours (`LEARNING_RATES`) decay exponentially to 5% over the run.

Last, a guarantee the losses alone cannot give: checked with exact distances, no hand vertex ends deeper inside the
object than `PENETRATION_TOLERANCE` (5 mm); a hand that breaks it is pushed out along the mean outward direction of its
inside vertices (a rigid translation, so the grasp keeps its shape), and, should that not clear it, along the
object-to-wrist direction in doubling steps, which always ends once the hand is beyond the object (`push_out`).

Typical use for one frame (the object's new pose: translation + object_offset, articulation + articulation_delta):
    priors = {s: contact_prior(models[s], hands[s], object_vertices, faces) for s in hands}
    moved = perturb(models, hands, object_vertices.mean(0), rng, articulation=None or the frame's angle)
    new_hands, reports = optimize_hands(models, moved.hands, new_object_vertices, faces, priors)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy.spatial.transform import Rotation

from models.hogsa.sdf import MeshDistance, SignedDistanceGrid

# Perturbation (paper, Sec. 3.3).
MAX_ROTATION = np.radians(20.0)  # per axis, about the wrist (what composing with MANO's global_orient does)
AWAY_FRACTION = 0.05  # of the wrist-object distance, away from the object
MAX_OFFSET = 0.06  # metres, random direction, for each hand and for the object
ARTICULATION_RANGE = (0.01 * np.pi, 0.2 * np.pi)  # radians added to an articulated object's angle

# Loss weights (paper, Implementation Details) and our constants.
LAMBDA_CONTACT, LAMBDA_HAND_CENTRIC, LAMBDA_PENETRATION = 1.0, 1.0, 17.0
POSE_PRIOR_WEIGHT = 10.0  # on the mean squared finger-pose change (radians^2)
CONTACT_PRIOR_DISTANCE = 0.01  # metres: source-grasp vertices this close to the surface form the contact prior
HAND_CENTRIC_RADIUS = 0.02  # metres: GraspTTA's reach of the hand-centric term
DISTAL_BONES = (3, 6, 9, 12, 15)  # MANO's last bone of the index, middle, pinky, ring finger and thumb
OBJECT_SAMPLES = 2000  # surface points for the hand-centric term
LEARNING_RATES = {"global_orient": 0.02, "transl": 0.002, "hand_pose": 0.02}  # radians / metres per Adam step
PENETRATION_RAMP = 0.5  # lambda_P grows (quadratically) to its value over this fraction of the iterations
FINAL_LEARNING_RATE_FACTOR = 0.05  # the rates decay exponentially to this fraction over the iterations

# Result checks.
PENETRATION_TOLERANCE = 0.005  # metres: no final hand vertex lies deeper inside the object
CONTACT_DISTANCE = 0.005  # metres: a prior vertex this close to the surface counts as touching it
PROJECTION_STEPS = 10  # pushes along the mean outward direction before falling back to the wrist direction

PARAMETERS = ("global_orient", "hand_pose", "betas", "transl")


@dataclass
class Perturbation:
    hands: dict[str, dict[str, np.ndarray]]  # side -> perturbed MANO parameters
    rotations: dict[str, np.ndarray]  # side -> (3,) angles (radians) about x, y, z applied about the wrist
    offsets: dict[str, np.ndarray]  # side -> (3,) wrist displacement (away part + random part), metres
    object_offset: np.ndarray  # (3,) metres, added to the object's translation
    articulation_delta: float  # radians, added to the articulation angle (0.0 for rigid objects)


@dataclass
class PoseReport:
    """One hand's result. Penetration: depth of hand vertices inside the object (max, and mean over the inside
    ones; 0 when none is inside). Contact: fraction of the prior's vertices within CONTACT_DISTANCE of the surface
    (nan without prior). "before" is the perturbed start."""

    penetration_max_before: float
    penetration_mean_before: float
    contact_before: float
    penetration_max_after: float
    penetration_mean_after: float
    contact_after: float
    projection: float  # metres the final guarantee pushed the hand out (0.0 when not needed)
    loss_start: float  # the objective at the first and the last iteration (lambda_P as ramped then)
    loss_end: float
    seconds: float


def _numpy_params(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.asarray(params[name], dtype=np.float64).reshape(-1).copy() for name in PARAMETERS}


def _vertices_and_wrist(hand_model, params: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = hand_model.forward(*(torch.as_tensor(np.asarray(params[n]), dtype=torch.float32)[None]
                                   for n in PARAMETERS))
    return out.vertices[0].double().numpy(), out.joints[0, 0].double().numpy()


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    direction = rng.normal(size=3)
    return direction / np.linalg.norm(direction)


def perturb(hand_models: Mapping, hands: Mapping[str, Mapping[str, np.ndarray]], object_center: np.ndarray,
            rng: np.random.Generator | int, articulation: float | None = None) -> Perturbation:
    """The paper's random start for POM. Each hand: angles about x, y and z of random sign and magnitude up to 20
    degrees (the paper's "[0, 20 degrees]" read as a magnitude: one sign for all would turn every hand the same way),
    applied about its wrist (composed with global_orient: MANO turns the hand about its wrist); then its wrist (the
    root joint) moves 5% of its distance to `object_center` further away, plus up to 6 cm in a random direction.
    The object: up to 6 cm in a random direction; when `articulation` (the current angle) is given, a change of
    0.01 pi to 0.2 pi, opening (+) or closing (-) at random, but never below zero (closed). Deterministic in `rng`."""
    rng = np.random.default_rng(rng)
    center = np.asarray(object_center, dtype=np.float64)
    moved, rotations, offsets = {}, {}, {}
    for side in sorted(hands):
        params = _numpy_params(hands[side])
        angles = rng.uniform(0, MAX_ROTATION, 3) * rng.choice([-1.0, 1.0], 3)
        turn = Rotation.from_euler("xyz", angles)  # extrinsic x, then y, then z
        params["global_orient"] = (turn * Rotation.from_rotvec(params["global_orient"])).as_rotvec()
        _, wrist = _vertices_and_wrist(hand_models[side], hands[side])
        away = AWAY_FRACTION * (wrist - center)
        offset = away + rng.uniform(0, MAX_OFFSET) * _random_direction(rng)
        params["transl"] = params["transl"] + offset
        moved[side], rotations[side], offsets[side] = params, angles, offset
    object_offset = rng.uniform(0, MAX_OFFSET) * _random_direction(rng)
    delta = 0.0
    if articulation is not None:
        delta = rng.uniform(*ARTICULATION_RANGE) * rng.choice([-1.0, 1.0])
        if articulation + delta < 0:
            delta = -delta
    return Perturbation(moved, rotations, offsets, object_offset, float(delta))


def contact_prior(hand_model, params: Mapping[str, np.ndarray], object_vertices: np.ndarray,
                  object_faces: np.ndarray, distance: float = CONTACT_PRIOR_DISTANCE) -> np.ndarray:
    """(V,) bool: the hand's vertices within `distance` of the object's surface (or inside it) in the given,
    dataset, pose. The stand-in for ContactNet's predicted contact map (see the module docstring)."""
    vertices, _ = _vertices_and_wrist(hand_model, params)
    signed, _, _ = MeshDistance(object_vertices, object_faces).query(vertices)
    return signed < distance


@dataclass
class ObjectField:
    """What POM needs of the fixed object, built once per object pose and shared by both hands."""

    exact: MeshDistance
    grid: SignedDistanceGrid
    surface_points: torch.Tensor  # (OBJECT_SAMPLES, 3) for the hand-centric term
    center: np.ndarray  # (3,)

    @classmethod
    def build(cls, vertices: np.ndarray, faces: np.ndarray, resolution: int = 48) -> ObjectField:
        exact = MeshDistance(vertices, faces)
        mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=False)
        samples, _ = trimesh.sample.sample_surface(mesh, OBJECT_SAMPLES, seed=0)
        return cls(exact, SignedDistanceGrid.from_mesh(exact, resolution),
                   torch.tensor(samples, dtype=torch.float32), np.asarray(vertices, dtype=np.float64).mean(0))


def hand_centric_vertices(hand_model, prior: np.ndarray) -> torch.Tensor:
    """Indices of the hand's prior contact regions for L_H: the source grasp's contact vertices plus the fingertip
    regions (vertices skinned mostly to the distal finger bones). GraspTTA lists fixed MANO vertex indices of the
    fingertips and palm instead; these follow the grasp (palm grasps keep their palm) and any vertex order."""
    distal = torch.isin(hand_model.lbs_weights.argmax(1), torch.tensor(DISTAL_BONES))
    return torch.nonzero(distal | torch.as_tensor(prior)).view(-1)


def pom_loss(vertices: torch.Tensor, field: ObjectField, prior: torch.Tensor, regions: torch.Tensor,
             pose_change: torch.Tensor, penetration_weight: float = LAMBDA_PENETRATION) -> torch.Tensor:
    """The POM objective for one hand's (V, 3) vertices (see the module docstring); distances in centimetres."""
    depth_cm = 100.0 * field.grid(vertices)
    contact = (depth_cm[prior] ** 2).mean() if prior.any() else depth_cm.new_zeros(())
    penetration = (torch.relu(-depth_cm) ** 2).sum()
    with torch.no_grad():  # which object points are near the hand (cdist's backward is slow: keep it out)
        near = torch.cdist(field.surface_points, vertices).min(1).values < HAND_CENTRIC_RADIUS
    hand_centric = depth_cm.new_zeros(())
    if near.any():
        offsets_cm = 100.0 * (field.surface_points[near][:, None, :] - vertices[regions][None, :, :])
        hand_centric = (offsets_cm ** 2).sum(-1).min(1).values.mean()
    return (LAMBDA_CONTACT * contact + LAMBDA_HAND_CENTRIC * hand_centric + penetration_weight * penetration
            + POSE_PRIOR_WEIGHT * (pose_change ** 2).mean())


def _penetration_and_contact(field: ObjectField, vertices: np.ndarray, prior: np.ndarray) -> tuple[float, float, float]:
    signed, _, _ = field.exact.query(vertices)
    inside = -signed[signed < 0]
    contact = float((np.abs(signed[prior]) <= CONTACT_DISTANCE).mean()) if prior.any() else float("nan")
    return (float(inside.max(initial=0.0)), float(inside.mean()) if len(inside) else 0.0, contact)


def push_out(hand_model, params: dict[str, np.ndarray], field: ObjectField,
             tolerance: float = PENETRATION_TOLERANCE) -> float:
    """Translate the hand (in place) until no vertex is deeper than `tolerance` inside the object, by exact
    distances; returns how far it moved. First along the depth-weighted mean outward direction of the inside
    vertices, by the deepest depth less half the tolerance; if that does not clear it in PROJECTION_STEPS, along
    the object-to-wrist direction in doubling steps, which ends once the hand has left the object behind."""
    start = params["transl"].copy()
    for step in range(PROJECTION_STEPS + 64):
        vertices, wrist = _vertices_and_wrist(hand_model, params)
        signed, _, outward = field.exact.query(vertices)
        if signed.min() >= -tolerance:
            break
        if step < PROJECTION_STEPS:
            inside = signed < 0
            direction = (outward[inside] * -signed[inside, None]).sum(0)
            distance = -signed.min() - tolerance / 2
        else:
            direction = wrist - field.center
            distance = tolerance * 2.0 ** (step - PROJECTION_STEPS)
        norm = np.linalg.norm(direction)
        direction = direction / norm if norm > 1e-9 else np.array([0.0, 0.0, 1.0])
        params["transl"] = params["transl"] + distance * direction
    else:
        raise RuntimeError("push_out: the hand could not be moved clear of the object")
    return float(np.linalg.norm(params["transl"] - start))


@contextmanager
def _single_threaded():
    """POM's tensors are tiny (778 vertices): torch's intra-op threads cost more than they save, up to 5x more on a
    busy machine (measured), so the loop runs on one thread and the setting is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def optimize_hand_pose(hand_model, start_params: Mapping[str, np.ndarray], object_vertices: np.ndarray,
                       object_faces: np.ndarray, contact_prior: np.ndarray, iterations: int = 200,
                       field: ObjectField | None = None) -> tuple[dict[str, np.ndarray], PoseReport]:
    """Fit one hand onto the fixed object from `start_params` (MANO: global_orient, hand_pose, betas, transl):
    Adam over global rotation, translation and finger pose for `iterations` steps, then the penetration guarantee.
    `field` (from ObjectField.build on the same vertices and faces) saves rebuilding it for the second hand."""
    began = time.perf_counter()
    field = field or ObjectField.build(object_vertices, object_faces)
    start = _numpy_params(start_params)
    prior = np.asarray(contact_prior, dtype=bool)
    before = _penetration_and_contact(field, _vertices_and_wrist(hand_model, start)[0], prior)

    variables = {name: torch.tensor(start[name], dtype=torch.float32)[None].requires_grad_()
                 for name in LEARNING_RATES}
    betas = torch.tensor(start["betas"], dtype=torch.float32)[None]
    source_pose = variables["hand_pose"].detach().clone()
    optimizer = torch.optim.Adam([{"params": [variables[n]], "lr": lr} for n, lr in LEARNING_RATES.items()])
    schedule = torch.optim.lr_scheduler.ExponentialLR(
        optimizer, FINAL_LEARNING_RATE_FACTOR ** (1.0 / max(iterations, 1)))
    prior_t, regions = torch.as_tensor(prior), hand_centric_vertices(hand_model, prior)
    losses = []
    with _single_threaded():
        for step in range(iterations):
            optimizer.zero_grad()
            out = hand_model.forward(variables["global_orient"], variables["hand_pose"], betas, variables["transl"])
            ramp = min(1.0, (step + 1) / (PENETRATION_RAMP * iterations))
            loss = pom_loss(out.vertices[0], field, prior_t, regions, variables["hand_pose"] - source_pose,
                            LAMBDA_PENETRATION * ramp ** 2)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())

    result = dict(start)
    result.update({name: variables[name].detach()[0].double().numpy() for name in LEARNING_RATES})
    projection = push_out(hand_model, result, field)
    after = _penetration_and_contact(field, _vertices_and_wrist(hand_model, result)[0], prior)
    report = PoseReport(*before, *after, projection=projection, loss_start=losses[0] if losses else float("nan"),
                        loss_end=losses[-1] if losses else float("nan"), seconds=time.perf_counter() - began)
    return result, report


def optimize_hands(hand_models: Mapping, start: Mapping[str, Mapping[str, np.ndarray]], object_vertices: np.ndarray,
                   object_faces: np.ndarray, priors: Mapping[str, np.ndarray], iterations: int = 200
                   ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, PoseReport]]:
    """Both hands of one frame, each optimized separately against the same fixed object (the paper's Eq. 7 sums
    the two hands' losses, which share no parameter)."""
    field = ObjectField.build(object_vertices, object_faces)
    params, reports = {}, {}
    for side in sorted(start):
        params[side], reports[side] = optimize_hand_pose(hand_models[side], start[side], object_vertices,
                                                         object_faces, priors[side], iterations, field)
    return params, reports
