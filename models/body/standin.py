"""A procedural STAND-IN body in the SMPL file format: 24 SMPL joints, capsule limbs, rigid-ish skinning.

It is not SMPL (which is licensed and cannot be downloaded here); it has SMPL's joint tree, joint order,
array names and shapes, so `smplx` loads it and everything downstream runs the code real SMPL files take.
Rest pose is SMPL's: T-pose, y up, the person facing +z, the person's left at +x.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

JOINT_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
]
PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]

# Rest joints in metres, pelvis at the origin. Only the left side is written; the right mirrors x.
_LEFT_AND_CENTRE = {
    "pelvis": (0, 0, 0), "left_hip": (0.09, -0.09, 0), "spine1": (0, 0.11, 0), "left_knee": (0.10, -0.48, 0.01),
    "spine2": (0, 0.24, 0), "left_ankle": (0.10, -0.88, -0.02), "spine3": (0, 0.30, 0),
    "left_foot": (0.11, -0.94, 0.11), "neck": (0, 0.50, -0.01), "left_collar": (0.07, 0.42, 0),
    "head": (0, 0.63, 0.02), "left_shoulder": (0.18, 0.44, 0), "left_elbow": (0.44, 0.44, 0),
    "left_wrist": (0.69, 0.44, 0), "left_hand": (0.77, 0.44, 0),
}


def rest_joints() -> np.ndarray:
    joints = np.zeros((24, 3))
    for i, name in enumerate(JOINT_NAMES):
        left = name.replace("right_", "left_")
        x, y, z = _LEFT_AND_CENTRE[left]
        joints[i] = (-x if name.startswith("right_") else x, y, z)
    return joints


# Capsules: (owning joint, start joint, end joint or offset from start, radius). The owning joint's rotation
# moves the capsule; it is the start joint except for the hip bar, which the pelvis carries.
def _capsules(j: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    n = JOINT_NAMES.index
    caps = [(0, j[n("right_hip")], j[n("left_hip")], 0.11), (0, j[0], j[n("spine1")], 0.12),
            (n("spine1"), j[n("spine1")], j[n("spine2")], 0.13), (n("spine2"), j[n("spine2")], j[n("spine3")], 0.14),
            (n("spine3"), j[n("spine3")], j[n("neck")], 0.13), (n("neck"), j[n("neck")], j[n("head")], 0.05),
            (n("head"), j[n("head")], j[n("head")] + (0, 0.13, 0), 0.10)]
    for side in ("left", "right"):
        chain = [("hip", "knee", 0.075), ("knee", "ankle", 0.055), ("ankle", "foot", 0.045),
                 ("collar", "shoulder", 0.06), ("shoulder", "elbow", 0.05), ("elbow", "wrist", 0.04),
                 ("wrist", "hand", 0.035)]
        for start, end, radius in chain:
            a, b = n(f"{side}_{start}"), n(f"{side}_{end}")
            caps.append((a, j[a], j[b], radius))
        hand = n(f"{side}_hand")
        caps.append((hand, j[hand], j[hand] + (np.sign(j[hand][0]) * 0.08, 0, 0), 0.03))
        foot = n(f"{side}_foot")
        caps.append((foot, j[foot], j[foot] + (0, 0, 0.07), 0.04))
    return caps


def _tube(a: np.ndarray, b: np.ndarray, radius: float, segments: int = 12):
    """Vertices and faces of a closed tube from a to b: rings (the first at a, the last at b) plus two poles."""
    axis = b - a
    length = np.linalg.norm(axis)
    axis = axis / length
    helper = np.array([0, 0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0, 0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    rings = max(3, int(np.ceil(length / 0.03)) + 1)
    angles = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    circle = np.cos(angles)[:, None] * u + np.sin(angles)[:, None] * v
    centres = a + np.linspace(0, 1, rings)[:, None] * (b - a)
    verts = (centres[:, None, :] + radius * circle[None]).reshape(-1, 3)
    poles = np.stack([a - radius * axis, b + radius * axis])
    verts = np.concatenate([verts, poles])
    faces = []
    for r in range(rings - 1):
        for s in range(segments):
            p, q = r * segments + s, r * segments + (s + 1) % segments
            faces += [(p, q + segments, q), (p, p + segments, q + segments)]
    first, last = rings * segments, rings * segments + 1
    for s in range(segments):
        faces.append((first, s, (s + 1) % segments))
        top = (rings - 1) * segments
        faces.append((last, top + (s + 1) % segments, top + s))
    return verts, np.array(faces), rings, segments


def build_standin() -> dict[str, np.ndarray]:
    """The stand-in's arrays under SMPL's names (`v_template`, `f`, `weights`, `J_regressor`, ...)."""
    joints = rest_joints()
    verts, faces, weights = [], [], []
    offset = 0
    ring_members: dict[int, list[int]] = {}
    for owner, a, b, radius in _capsules(joints):
        v, f, rings, segments = _tube(a, b, radius)
        along = np.concatenate([np.repeat(np.linspace(0, 1, rings), segments), [0.0, 1.0]])
        w = np.zeros((len(v), 24))
        parent = PARENTS[owner]
        # Blend into the parent near the start, so bends do not tear the surface.
        blend = np.clip(along / 0.3, 0, 1) * 0.5 + 0.5 if parent >= 0 else np.ones(len(v))
        w[:, owner] = blend
        if parent >= 0:
            w[:, parent] += 1 - blend
        for point, ring in ((a, 0), (b, rings - 1)):
            joint = _closest_joint(joints, point)
            if joint is not None:
                ring_members.setdefault(joint, [offset + ring * segments + s for s in range(segments)])
        verts.append(v)
        faces.append(f + offset)
        weights.append(w)
        offset += len(v)
    verts = np.concatenate(verts)
    regressor = np.zeros((24, len(verts)))
    for joint, members in ring_members.items():
        regressor[joint, members] = 1.0 / len(members)  # a ring centred on the joint: its mean is the joint
    missing = [JOINT_NAMES[i] for i in range(24) if not regressor[i].any()]
    assert not missing, f"stand-in joints without a ring: {missing}"
    v_template = verts
    weights = np.concatenate(weights)
    # Two shape directions: height (scale about the pelvis) and bulk (each part scaled about its joint).
    shapedirs = np.zeros((len(verts), 3, 10))
    shapedirs[:, :, 0] = 0.05 * v_template
    shapedirs[:, :, 1] = 0.2 * (v_template - joints[weights.argmax(axis=1)])
    return {
        "v_template": v_template,
        "f": np.concatenate(faces).astype(np.int64),
        "weights": weights,
        "J_regressor": regressor,
        "kintree_table": np.stack([np.array(PARENTS), np.arange(24)]).astype(np.int64),
        "shapedirs": shapedirs,
        "posedirs": np.zeros((len(verts), 3, 207)),
    }


def _closest_joint(joints: np.ndarray, point: np.ndarray) -> int | None:
    """The joint at `point`, if one is there."""
    distances = np.linalg.norm(joints - point, axis=1)
    return int(distances.argmin()) if distances.min() < 1e-6 else None


# Vertices smplx reads extra keypoints from (SMPL-H names): chosen on the stand-in by position.
LANDMARKS = {
    "nose": (0, 0.70, 0.12), "reye": (-0.035, 0.74, 0.10), "leye": (0.035, 0.74, 0.10),
    "rear": (-0.10, 0.70, 0.02), "lear": (0.10, 0.70, 0.02),
    "LBigToe": (0.11, -0.94, 0.21), "LSmallToe": (0.14, -0.94, 0.19), "LHeel": (0.10, -0.94, -0.06),
    "RBigToe": (-0.11, -0.94, 0.21), "RSmallToe": (-0.14, -0.94, 0.19), "RHeel": (-0.10, -0.94, -0.06),
    **{f"{s}{tip}": (sign * 0.88, 0.44, dz) for s, sign in (("l", 1), ("r", -1))
       for tip, dz in (("thumb", 0.03), ("index", 0.015), ("middle", 0), ("ring", -0.015), ("pinky", -0.03))},
}


def landmark_vertex_ids(v_template: np.ndarray) -> dict[str, int]:
    return {name: int(np.linalg.norm(v_template - np.array(p), axis=1).argmin()) for name, p in LANDMARKS.items()}


def write_standin(path: str | Path) -> Path:
    """Save the stand-in as an SMPL-format .npz (no pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **build_standin())
    return path
