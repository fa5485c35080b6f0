"""A procedural STAND-IN hand in the MANO file format: MANO's 16 joints and joint tree, 778 vertices, 1538 faces.

It is not MANO (which is licensed and cannot be downloaded here); it has MANO's array names and shapes (`v_template`,
`f`, `J_regressor`, `weights`, `kintree_table`, `shapedirs`, `posedirs`, `hands_components`, `hands_mean`), MANO's
joint order, a MANO-like rest pose (flat hand; right hand: fingers along -x, palm facing -y, thumb toward +z, wrist
joint at x = +0.095 m, not at the origin) and its fingertips at the vertex indices smplx reads MANO fingertips from,
so `smplx.MANO` loads it and everything downstream runs the code real MANO files take. The left hand mirrors x, as
MANO's does. Metres; about 18 cm from the wrist to the middle fingertip.

Shape: a palm (a tube open at the wrist, like MANO's mesh, closed by a flat knuckle cap) and five tubes with rounded
tips, three segments each, skinned rigidly per segment with short linear blends across the joints. The palm wall and
the cap are triangulated by Delaunay in flattened coordinates (the wall through a conformal map of the cylinder onto an
annulus), with interior vertices placed by farthest-point sampling so the vertex count comes out at exactly 778; a
disk-like surface with a 16-vertex wrist opening then has 2 * 778 - 2 - 16 = 1538 faces, as MANO has. No
pose-corrective blend shapes (posedirs are zero); four shape directions (size, finger length, palm width, thickness),
the other six betas do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.spatial import Delaunay

JOINT_NAMES = [
    "wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3", "pinky1", "pinky2", "pinky3",
    "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3",
]
PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
NUM_VERTICES = 778
WRIST_RING = 16  # vertices around the open wrist
NUM_FACES = 2 * NUM_VERTICES - 2 - WRIST_RING  # Euler's formula for a disk-like triangle mesh: 1538, MANO's count
WRIST = np.array([0.095, 0.006, 0.006])  # rest wrist joint of the right hand in MANO's frame (about where MANO's is)

# While building, a runs along the hand from the wrist, h toward the back of the hand, w toward the thumb; the right
# hand in MANO's frame is WRIST + (-a, h, w).
_LOCAL_TO_MANO = np.diag([-1.0, 1.0, 1.0])
PALM_LENGTH = 0.092  # wrist to knuckle cap
_SECTION_EXPONENT = 4.0  # palm cross-section |w/hw|^n + |h/ht|^n = 1: a rounded box
_RING = 8  # vertices around a finger
_KNUCKLE_RING = 32
_ROOT_SCALE = 0.88  # root circles are narrower than the digits, leaving room between them on the knuckle cap
_BLEND = 0.006  # half-width (m) of the linear skinning blend across a finger joint


@dataclass(frozen=True)
class Digit:
    name: str
    joints: tuple[int, int, int]  # MANO joints, proximal to distal
    root: tuple[float, float]  # (w, h) of the root circle's centre on the knuckle cap (fingers only)
    radius: float  # of the tube (it narrows to _ROOT_SCALE of this where it meets the palm, and tapers to the tip)
    lengths: tuple[float, float, float]  # joint 1 -> 2, 2 -> 3, 3 -> tip


DIGITS = [
    Digit("index", (1, 2, 3), (0.0265, 0.001), 0.0088, (0.038, 0.024, 0.020)),
    Digit("middle", (4, 5, 6), (0.0085, 0.001), 0.0090, (0.042, 0.027, 0.021)),
    Digit("ring", (10, 11, 12), (-0.0095, 0.001), 0.0086, (0.039, 0.025, 0.020)),
    Digit("pinky", (7, 8, 9), (-0.0265, 0.001), 0.0076, (0.031, 0.019, 0.018)),
    Digit("thumb", (13, 14, 15), (0.0, 0.0), 0.0102, (0.038, 0.032, 0.027)),
]
# The thumb leaves the radial side of the palm near the wrist, pointing forward, outward and a little palmward.
_THUMB_ROOT = (-0.04, 0.034)  # (section parameter t, a) of its root circle on the palm wall
_THUMB_DIRECTION = np.array([0.72, -0.15, 0.68]) / np.linalg.norm([0.72, -0.15, 0.68])  # local (a, h, w)
# Relaxed-hand mean pose (flexion, radians) per digit joint, like MANO's hands_mean: fingers slightly curled.
_MEAN_FLEXION = {"finger": (0.15, 0.25, 0.12), "thumb": (0.10, 0.15, 0.10)}


def fingertip_vertex_ids() -> dict[str, int]:
    """smplx's MANO fingertip vertices {thumb, index, middle, ring, pinky}: the stand-in puts its tips there."""
    from smplx.vertex_ids import vertex_ids

    return dict(vertex_ids["mano"])


def flexion_axes(side: str = "right") -> np.ndarray:
    """(15, 3) unit axes, in the rest frame, about which a positive rotation of hand joint 1..15 curls that digit
    toward the palm: `hand_pose = (angles[:, None] * flexion_axes(side)).ravel()` (absolute, flat-hand convention)."""
    axes = np.zeros((15, 3))
    palmward = np.array([0, -1.0, 0])
    for digit in DIGITS:
        direction = _LOCAL_TO_MANO @ _direction(digit)
        axis = np.cross(direction, palmward)
        axes[[j - 1 for j in digit.joints]] = axis / np.linalg.norm(axis)
    return _mirror_axial(axes) if side == "left" else axes


def _mirror_axial(axis_angles: np.ndarray) -> np.ndarray:
    """Rotations (..., 3) axis-angle mirrored through x = 0: (x, -y, -z)."""
    return axis_angles * np.array([1.0, -1.0, -1.0])


# --- palm geometry -----------------------------------------------------------------------------------------------


def _half_extents(a) -> tuple[np.ndarray, np.ndarray]:
    """Palm half-width and half-thickness along the hand: narrow and thick at the wrist, wide and flat at the cap."""
    s = np.clip(np.asarray(a, dtype=float) / PALM_LENGTH, 0, 1)
    s = s * s * (3 - 2 * s)
    return 0.030 + 0.013 * s, 0.017 - 0.0025 * s


def _superellipse(angle, hw, ht) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    p = 2 / _SECTION_EXPONENT
    return hw * np.sign(c) * np.abs(c) ** p, ht * np.sign(s) * np.abs(s) ** p


@lru_cache(maxsize=1)
def _section_table() -> tuple[np.ndarray, np.ndarray, float]:
    """Arc-length parameter t in [-0.5, 0.5] -> superellipse angle, and the perimeter, at mid-palm: even spacing
    around the palm. t = 0 is the thumb side, 0.25 the back of the hand, -0.25 the palm, +-0.5 the pinky side."""
    angles = np.linspace(-np.pi, np.pi, 4097)
    w, h = _superellipse(angles, *_half_extents(PALM_LENGTH / 2))
    arc = np.concatenate([[0], np.cumsum(np.hypot(np.diff(w), np.diff(h)))])
    return arc / arc[-1] - 0.5, angles, float(arc[-1])


def _wall_point(t, a) -> np.ndarray:
    """Palm wall (t, a) -> local (a, h, w)."""
    table_t, table_angle, _ = _section_table()
    angle = np.interp((np.asarray(t, dtype=float) + 0.5) % 1.0 - 0.5, table_t, table_angle)
    w, h = _superellipse(angle, *_half_extents(a))
    return np.stack([np.broadcast_to(a, w.shape), h, w], -1)


def _circle(centre, radius: float, count: int) -> np.ndarray:
    """`count` points on a circle, none facing straight along the axes (keeps neighbouring rings' edges apart)."""
    angles = 2 * np.pi * (np.arange(count) + 0.5) / count
    return np.asarray(centre) + radius * np.stack([np.cos(angles), np.sin(angles)], 1)


def _farthest_points(candidates: np.ndarray, fixed: np.ndarray, count: int, distance) -> np.ndarray:
    """Greedy farthest-point sampling of `count` candidates, also kept away from the `fixed` points."""
    nearest = distance(candidates[:, None], fixed[None]).min(1)
    chosen = []
    for _ in range(count):
        best = int(np.argmax(nearest))
        chosen.append(best)
        nearest = np.minimum(nearest, distance(candidates, candidates[best]))
    return candidates[chosen]


def _triangulate(points: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """Delaunay triangles of 2D `points` minus those filling a hole (all three corners on one hole's ring). A convex
    ring with no other point near its edges keeps all its edges in the Delaunay triangulation; _check verifies it."""
    triangles = Delaunay(points).simplices
    inside = np.zeros(len(triangles), dtype=bool)
    for ring in holes:
        inside |= np.isin(triangles, ring).all(axis=1)
    return triangles[~inside]


def _grid(lo, hi, step: float) -> np.ndarray:
    axes = [np.arange(low + step / 2, high, step) for low, high in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)


# --- assembly ----------------------------------------------------------------------------------------------------


@dataclass
class _Part:
    points: np.ndarray  # (n, 3) local
    digit: int  # index into DIGITS, -1 for the palm
    u: np.ndarray  # (n,) distance along the digit from its root centre (0 on the palm)


class _Mesh:
    """Vertices appended part by part, with what the skinning and shape directions need to know about each."""

    def __init__(self):
        self.parts: list[_Part] = []
        self.faces: list[np.ndarray] = []
        self.size = 0

    def add(self, points: np.ndarray, digit: int = -1, u=0.0) -> np.ndarray:
        self.parts.append(_Part(points, digit, np.broadcast_to(np.asarray(u, dtype=float), len(points)).copy()))
        self.size += len(points)
        return np.arange(self.size - len(points), self.size)


def _palm(mesh: _Mesh, interior_count) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Wall and knuckle cap with a hole per digit; returns the digits' root rings and the wrist ring."""
    _, _, perimeter = _section_table()
    wrist_t = np.arange(WRIST_RING) / WRIST_RING - 0.5
    knuckle_t = np.arange(_KNUCKLE_RING) / _KNUCKLE_RING - 0.5
    thumb_ua = _circle((_THUMB_ROOT[0] * perimeter, _THUMB_ROOT[1]), _ROOT_SCALE * DIGITS[-1].radius, _RING)
    finger_wh = [_circle(d.root, _ROOT_SCALE * d.radius, _RING) for d in DIGITS[:-1]]
    wrist = mesh.add(_wall_point(wrist_t, 0.0))
    knuckle = mesh.add(_wall_point(knuckle_t, PALM_LENGTH))
    thumb = mesh.add(_wall_point(thumb_ua[:, 0] / perimeter, thumb_ua[:, 1]))
    fingers = {d.name: mesh.add(_cap_point(wh)) for d, wh in zip(DIGITS, finger_wh)}

    # The wall in unrolled (perimeter, a) coordinates, the cap in (w, h).
    wall_fixed = np.concatenate([np.stack([wrist_t * perimeter, np.zeros(WRIST_RING)], 1),
                                 np.stack([knuckle_t * perimeter, np.full(_KNUCKLE_RING, PALM_LENGTH)], 1), thumb_ua])
    cap_fixed = np.concatenate([_wall_point(knuckle_t, PALM_LENGTH)[:, [2, 1]], *finger_wh])
    wall_inner, cap_inner = _interior(wall_fixed, cap_fixed, interior_count(mesh.size), perimeter)
    wall_ids = mesh.add(_wall_point(wall_inner[:, 0] / perimeter, wall_inner[:, 1]))
    cap_ids = mesh.add(_cap_point(cap_inner))

    # The wall: conformal map of the unrolled cylinder onto an annulus (angles kept, so Delaunay there is Delaunay
    # on the wall, with no seam); the wrist ring is the inner circle, the knuckle ring the outer one.
    wall = np.concatenate([wrist, knuckle, thumb, wall_ids])
    unrolled = np.concatenate([wall_fixed, wall_inner])
    annulus = np.exp(2 * np.pi * (unrolled[:, 1] + 1j * unrolled[:, 0]) / perimeter)
    local = _triangulate(np.stack([annulus.real, annulus.imag], 1),
                         [np.arange(WRIST_RING), np.arange(_RING) + WRIST_RING + _KNUCKLE_RING])
    mesh.faces.append(wall[local])
    cap = np.concatenate([knuckle, *fingers.values(), cap_ids])
    rings = [np.arange(_RING) + _KNUCKLE_RING + i * _RING for i in range(len(fingers))]
    mesh.faces.append(cap[_triangulate(np.concatenate([cap_fixed, cap_inner]), rings)])
    return {**fingers, "thumb": thumb}, wrist


def _interior(wall_fixed: np.ndarray, cap_fixed: np.ndarray, count: int, perimeter: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """`count` interior vertices for the wall and the cap, split by area, spread by farthest-point sampling from
    fine grids that keep clear of the holes (the wall's distance wraps around the palm)."""
    step = 0.0015
    wall = _grid((-perimeter / 2, 0.007), (perimeter / 2, PALM_LENGTH - 0.004), step)
    thumb_centre = wall_fixed[-_RING:].mean(0)
    wall = wall[np.linalg.norm(wall - thumb_centre, axis=1) > _ROOT_SCALE * DIGITS[-1].radius + 0.004]
    hw, ht = _half_extents(PALM_LENGTH)
    cap = _grid((-hw, -ht), (hw, ht), step / 3)
    inside = (np.abs(cap[:, 0] / hw) ** 4 + np.abs(cap[:, 1] / ht) ** 4) < 0.8**4
    for d in DIGITS[:-1]:
        inside &= np.linalg.norm(cap - d.root, axis=1) > _ROOT_SCALE * d.radius + 0.0025
    cap = cap[inside]
    cap_count = int(round(count * len(cap) / (len(cap) + 9 * len(wall))))  # cap cells are 1/9 of wall cells

    def around(p, q):
        d = np.abs(p - q)
        d[..., 0] = np.minimum(d[..., 0], perimeter - d[..., 0])
        return np.linalg.norm(d, axis=-1)

    return (_farthest_points(wall, wall_fixed, count - cap_count, around),
            _farthest_points(cap, cap_fixed, cap_count, lambda p, q: np.linalg.norm(p - q, axis=-1)))


def _cap_point(wh: np.ndarray) -> np.ndarray:
    return np.stack([np.full(len(wh), PALM_LENGTH), wh[:, 1], wh[:, 0]], 1)


def _stations(digit: Digit) -> tuple[np.ndarray, np.ndarray, float]:
    """Distances along the digit of its rings after the root, their radii (the last two round off the tip), and the
    distance of the tip pole."""
    l1, l2, l3 = digit.lengths
    end_radius = digit.radius * (1 - 0.18)
    straight = np.concatenate([l1 * np.array([0.25, 0.5, 0.75, 1.0]), l1 + l2 * np.array([1 / 3, 2 / 3, 1.0]),
                               l1 + l2 + (l3 - end_radius) * np.array([0.5, 1.0])])
    radii = digit.radius * (1 - 0.18 * straight / straight[-1])
    cap = np.radians([35.0, 65.0])
    return (np.concatenate([straight, straight[-1] + end_radius * np.sin(cap)]),
            np.concatenate([radii, end_radius * np.cos(cap)]), l1 + l2 + l3)


def _digit(mesh: _Mesh, index: int, root: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A tube from the root ring (shared with the palm) along the digit, closed by a pole at the tip. Each ring vertex
    keeps its root vertex's direction around the axis, so the tube does not twist. Returns the joint-2 and joint-3
    rings and the tip vertex."""
    digit = DIGITS[index]
    root_points = np.concatenate([p.points for p in mesh.parts])[root]
    centre = root_points.mean(0)
    direction = _direction(digit)
    spokes = root_points - centre
    spokes -= np.outer(spokes @ direction, direction)
    spokes /= np.linalg.norm(spokes, axis=1, keepdims=True)
    stations, radii, tip = _stations(digit)
    rings = [root] + [mesh.add(centre + u * direction + r * spokes, index, u) for u, r in zip(stations, radii)]
    pole = mesh.add((centre + tip * direction)[None], index, tip)[0]
    faces = []
    for lower, upper in zip(rings[:-1], rings[1:]):
        for k in range(_RING):
            nxt = (k + 1) % _RING
            faces += [(lower[k], lower[nxt], upper[nxt]), (lower[k], upper[nxt], upper[k])]
    faces += [(rings[-1][k], rings[-1][(k + 1) % _RING], pole) for k in range(_RING)]
    mesh.faces.append(np.array(faces))
    l1, l2, _ = digit.lengths
    return rings[1 + int(np.argmin(np.abs(stations - l1)))], rings[1 + int(np.argmin(np.abs(stations - l1 - l2)))], pole


def _skinning(digit: int, u: np.ndarray) -> np.ndarray:
    """Rigid per segment; linear blends over [0, _BLEND] at the root and +-_BLEND across joints 2 and 3."""
    weights = np.zeros((len(u), 16))
    if digit < 0:
        weights[:, 0] = 1.0
        return weights
    d = DIGITS[digit]
    l1, l2, _ = d.lengths
    past = [np.clip(u / _BLEND, 0, 1), np.clip((u - l1 + _BLEND) / (2 * _BLEND), 0, 1),
            np.clip((u - l1 - l2 + _BLEND) / (2 * _BLEND), 0, 1)]
    weights[:, 0] = 1 - past[0]
    weights[:, d.joints[0]] = past[0] - past[1]
    weights[:, d.joints[1]] = past[1] - past[2]
    weights[:, d.joints[2]] = past[2]
    return weights


def _check(faces: np.ndarray, count: int, wrist: np.ndarray) -> None:
    """One disk-like, consistently wound surface: every directed edge once, every edge in two faces except the
    wrist opening's."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed), "inconsistent winding or a repeated face"
    undirected, uses = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    border = undirected[uses == 1]
    assert set(border.ravel()) == set(wrist.tolist()) and len(border) == WRIST_RING, "open edges besides the wrist"
    assert len(np.unique(faces)) == count, "unused vertices"


@lru_cache(maxsize=1)
def _right_hand() -> dict[str, np.ndarray]:
    mesh = _Mesh()
    # Vertices besides the palm interior: digits' rings after the root and their tip poles.
    digit_vertices = sum(len(_stations(d)[0]) * _RING + 1 for d in DIGITS)
    roots, wrist = _palm(mesh, lambda so_far: NUM_VERTICES - so_far - digit_vertices)
    rings = {0: wrist}
    tips = {}
    for index, digit in enumerate(DIGITS):
        second, third, tips[digit.name] = _digit(mesh, index, roots[digit.name])
        rings.update(zip(digit.joints, (roots[digit.name], second, third)))
    local = np.concatenate([p.points for p in mesh.parts])
    digit_of = np.concatenate([np.full(len(p.points), p.digit) for p in mesh.parts])
    u = np.concatenate([p.u for p in mesh.parts])
    faces = _orient_outward(local, np.concatenate(mesh.faces), digit_of, roots)
    _check(faces, NUM_VERTICES, wrist)

    # Fingertips go to smplx's MANO fingertip indices (a permutation of the vertices).
    order = np.arange(NUM_VERTICES)
    for name, target in fingertip_vertex_ids().items():
        here = int(np.nonzero(order == tips[name])[0][0])
        order[[here, target]] = order[[target, here]]
    new_index = np.argsort(order)

    regressor = np.zeros((16, NUM_VERTICES))
    for joint, ring in rings.items():
        regressor[joint, new_index[ring]] = 1.0 / len(ring)  # a ring centred on the joint: its mean is the joint
    weights = np.concatenate([_skinning(p.digit, p.u) for p in mesh.parts])
    flexion = flexion_axes("right")
    return {
        "v_template": WRIST + local[order] @ _LOCAL_TO_MANO.T,
        "f": new_index[faces][:, [0, 2, 1]].astype(np.int64),  # (a, h, w) -> MANO axes is a mirror: rewind
        "J_regressor": regressor,
        "weights": weights[order],
        "kintree_table": np.stack([np.array(PARENTS), np.arange(16)]).astype(np.int64),
        "shapedirs": np.einsum("ij,vjk->vik", _LOCAL_TO_MANO, _shape_directions(local, digit_of, u, roots)[order]),
        "posedirs": np.zeros((NUM_VERTICES, 3, 15 * 9)),
        "hands_mean": _mean_pose(flexion),
        "hands_components": _hand_components(flexion),
    }


def _direction(digit: Digit) -> np.ndarray:
    """The digit's rest direction in the local frame."""
    return _THUMB_DIRECTION if digit.name == "thumb" else np.array([1.0, 0, 0])


def _orient_outward(local: np.ndarray, faces: np.ndarray, digit_of: np.ndarray, roots: dict[str, np.ndarray]
                    ) -> np.ndarray:
    """Flip the faces whose normal points toward a reference point inside: on the palm's axis, or on the digit's."""
    centroids = local[faces].mean(1)
    inside = np.zeros_like(centroids)
    inside[:, 0] = np.clip(centroids[:, 0], 0.02, PALM_LENGTH - 0.01)
    face_digit = digit_of[faces].max(1)
    for index, digit in enumerate(DIGITS):
        on = face_digit == index
        centre = local[roots[digit.name]].mean(0)
        along = np.clip((centroids[on] - centre) @ _direction(digit), 0, _stations(digit)[0][-1] - 0.003)
        inside[on] = centre + along[:, None] * _direction(digit)
    tri = local[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.einsum("ij,ij->i", normals, centroids - inside) < 0
    faces = faces.copy()
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return faces


def _mean_pose(flexion: np.ndarray) -> np.ndarray:
    """(45,) the relaxed hand: every digit joint flexed by _MEAN_FLEXION."""
    angles = np.zeros(15)
    for digit in DIGITS:
        angles[[j - 1 for j in digit.joints]] = _MEAN_FLEXION["thumb" if digit.name == "thumb" else "finger"]
    return (angles[:, None] * flexion).ravel()


def _shape_directions(local, digit_of, u, roots) -> np.ndarray:
    """(V, 3, 10) local-frame displacement per unit beta: 0 size (about the wrist), 1 digit length, 2 palm width
    (digits move with their roots), 3 thickness (palm and digit girth)."""
    shapedirs = np.zeros((len(local), 3, 10))
    shapedirs[:, :, 0] = 0.05 * local
    anchor_w = local[:, 2].copy()
    for index, digit in enumerate(DIGITS):
        on = digit_of == index
        centre = local[roots[digit.name]].mean(0)
        direction = _direction(digit)
        shapedirs[on, :, 1] = 0.06 * u[on, None] * direction
        anchor_w[on] = centre[2]
        radial = local[on] - centre - np.outer(u[on], direction)
        shapedirs[on, :, 3] = 0.08 * radial
    palm = digit_of < 0
    shapedirs[:, 2, 2] = 0.05 * anchor_w
    shapedirs[palm, 1, 3] = 0.08 * local[palm, 1]
    return shapedirs


def _hand_components(flexion: np.ndarray) -> np.ndarray:
    """(45, 45) orthonormal pose basis, rows first the two main grasp synergies (all joints curl; knuckles curl
    while the outer joints stay straight), then completed to a basis: the role MANO's PCA components play."""
    curl = flexion.ravel()
    knuckles = (flexion * np.array([1.0, -0.5, -0.5] * 5)[:, None]).ravel()
    basis, _ = np.linalg.qr(np.concatenate([np.stack([curl, knuckles], 1), np.eye(45)], 1))
    basis = basis[:, :45].T
    signs = np.sign(np.concatenate([[basis[0] @ curl, basis[1] @ knuckles], np.ones(43)]))
    return basis * signs[:, None]


def _mirror(right: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The left hand: x mirrored, faces rewound so they still face outward, poses mirrored."""
    flip = np.array([-1.0, 1.0, 1.0])
    left = dict(right)
    left["v_template"] = right["v_template"] * flip
    left["f"] = right["f"][:, [0, 2, 1]]
    left["shapedirs"] = right["shapedirs"] * flip[None, :, None]
    left["hands_mean"] = _mirror_axial(right["hands_mean"].reshape(15, 3)).ravel()
    left["hands_components"] = _mirror_axial(right["hands_components"].reshape(45, 15, 3)).reshape(45, 45)
    return left  # posedirs are zero, so they mirror to zero


def build_standin(side: str = "right") -> dict[str, np.ndarray]:
    """The stand-in's arrays under MANO's names, for `side` "right" or "left" (fresh copies)."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', not {side!r}")
    data = _right_hand() if side == "right" else _mirror(_right_hand())
    return {key: value.copy() for key, value in data.items()}


def write_standin(folder: str | Path) -> Path:
    """Save both stand-in hands as MANO_RIGHT.npz / MANO_LEFT.npz (no pickle) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for side in ("right", "left"):
        np.savez(folder / f"MANO_{side.upper()}.npz", **build_standin(side))
    return folder
