"""MANO-HD-like hands: a MANO file's mesh subdivided once, every new vertex interpolating its edge's model arrays.

HOGSA puts its hand Gaussians on MANO-HD (HandAvatar, Chen, Wang and Shum, CVPR 2023), a denser MANO: 3,093 vertices
and 6,152 faces from MANO's 778 and 1,538. HandAvatar's `sub_mano` (smplx/manohd/subdivide.py in its code) splits
every edge at its midpoint, appends the new vertices after MANO's, gives each the mean of its edge's two endpoints'
shape blend shapes, pose blend shapes and skinning weights, and no joint regression (zero J_regressor columns). So
does `subdivide_mano`, on the arrays of a MANO file, before `smplx.MANO` reads them: any MANO-format file (the licensed
one or the stand-in) becomes its MANO-HD-like twin, and the joints, fingertip vertices and the first 778 vertices
are MANO's own at every pose and shape.

Deviations from HandAvatar's MANO-HD (SeanChenxy/HandAvatar, smplx/manohd/subdivide.py, read for this): no smoothing
of the subdivided template (HandAvatar moves every vertex, MANO's included, to the mean of its one-ring, off MANO's
surface), no learned skinning weights (HandAvatar's skining_opt.py fits them; its checkpoints are not published, and
sub_mano loads them only for more than one subdivision), and the wrist stays open as in MANO (HandAvatar seals it).
So ours is "MANO-HD-like": HandAvatar's topology, vertex count and blend-shape / weight interpolation on MANO's own
surface. A new vertex is the midpoint of its edge's endpoints at rest,
for any shape (blend shapes are linear), and posed it stays the midpoint of its posed endpoints wherever they share
their weights (one affine map moves all three); where the weights change along the edge, skinning with the averaged
weights is not averaging the skinned endpoints: on the stand-in's grasp-like poses those new vertices sit a median
0.58 mm and at most 2.2 mm off the midpoint (tests/hogsa/test_hand_model.py; the stand-in blends its weights over
12 mm across a joint, MANO's spread wider, so its edges should bend less — not measured, the files are licensed).
"""

from __future__ import annotations

import numpy as np

MANO, MANO_HD = "mano", "mano-hd"
HAND_MESHES = (MANO_HD, MANO)
PER_VERTEX = ("v_template", "shapedirs", "posedirs", "weights")  # arrays whose first axis is the vertex


def mesh_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E, 2) the mesh's undirected edges (sorted pairs, sorted rows) and (F, 3) each face's edges ab, bc, ca."""
    corners = np.sort(np.asarray(faces)[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    edges, face_edges = np.unique(corners, axis=0, return_inverse=True)
    return edges, face_edges.reshape(-1, 3)


def subdivide_faces(faces: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Each face split 1 -> 4 at its edges' midpoints, winding kept: (4F, 3) faces (face i's four at 4i..4i+3) and
    (E, 2) the edges whose midpoints are the new vertices num_vertices, num_vertices + 1, ..."""
    edges, face_edges = mesh_edges(faces)
    a, b, c = np.asarray(faces).T
    ab, bc, ca = (num_vertices + face_edges).T
    split = np.stack([np.stack(corners, 1) for corners in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))], 1)
    return split.reshape(-1, 3).astype(np.int64), edges


def subdivide_mano(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The MANO-HD-like twin of one MANO file's arrays (`v_template`, `f`, `J_regressor`, `weights`, `shapedirs`,
    `posedirs`, ...): new vertices appended, per-vertex arrays averaged over each edge, zero joint regression."""
    num_vertices = len(data["v_template"])
    faces, edges = subdivide_faces(data["f"], num_vertices)
    out = dict(data, f=faces)
    for key in PER_VERTEX:
        values = np.asarray(data[key])
        out[key] = np.concatenate([values, values[edges].mean(1)])
    regressor = np.asarray(data["J_regressor"])
    out["J_regressor"] = np.concatenate([regressor, np.zeros((len(regressor), len(edges)), regressor.dtype)], 1)
    return out
