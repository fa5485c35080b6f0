"""The MANO hand models: the stand-in through smplx.MANO, its pose conventions, skinning, mirror symmetry, the bone
transforms (LBS recomputed here by hand), OpenPose joints, the refusal of pickled or missing model files, and the
MANO-HD-like subdivision (models/hand/mano_hd.py)."""

import numpy as np
import pytest
import smplx
import torch
from scipy.spatial.transform import Rotation
from smplx.vertex_ids import vertex_ids

from models.hand import load_hands
from models.hand.mano import FINGERTIP_ORDER, OPENPOSE_FROM_MANO
from models.hand.mano_hd import mesh_edges, subdivide_faces
from models.hand.standin import (
    JOINT_NAMES,
    NUM_FACES,
    NUM_VERTICES,
    PARENTS,
    build_standin,
    flexion_axes,
    write_standin,
)

MIRROR = np.array([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def flat():
    return load_hands("standin", flat_hand_mean=True)


@pytest.fixture(scope="module")
def relaxed():
    return load_hands("standin")


def random_parameters(seed: int, batch: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"global_orient": torch.randn(batch, 3, generator=g), "hand_pose": 0.4 * torch.randn(batch, 45, generator=g),
            "betas": torch.randn(batch, 10, generator=g), "transl": 0.1 * torch.randn(batch, 3, generator=g)}


def test_standin_has_mano_arrays_and_loads_through_smplx(flat):
    data = build_standin("right")
    assert data["v_template"].shape == (NUM_VERTICES, 3) and data["f"].shape == (NUM_FACES, 3) == (1538, 3)
    assert data["J_regressor"].shape == (16, 778) and data["weights"].shape == (778, 16)
    assert data["shapedirs"].shape == (778, 3, 10) and data["posedirs"].shape == (778, 3, 135)
    assert data["hands_components"].shape == (45, 45) and data["hands_mean"].shape == (45,)
    np.testing.assert_allclose(data["hands_components"] @ data["hands_components"].T, np.eye(45), atol=1e-12)
    assert data["kintree_table"][0, 1:].tolist() == PARENTS[1:] and JOINT_NAMES[13] == "thumb1"
    np.testing.assert_allclose(data["weights"].sum(1), 1.0)
    for side, model in flat.items():
        assert isinstance(model.model, smplx.MANO) and model.model.is_rhand == (side == "right")
        assert model.num_vertices == 778 and model.faces.shape == (1538, 3) and model.faces.dtype == np.int64
        assert model.lbs_weights.shape == (778, 16)
    # One surface, open only at the wrist, wound outward: positive volume (the opening barely matters).
    v, f = data["v_template"], data["f"]
    edges, uses = np.unique(np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1), axis=0,
                            return_counts=True)
    assert set(uses.tolist()) == {1, 2} and (uses == 1).sum() == 16
    assert np.linalg.det(v[f] - v.mean(0)).sum() / 6 > 5e-5
    # About 18 cm from the wrist joint to the middle fingertip.
    wrist = data["J_regressor"][0] @ v
    assert 0.17 < np.linalg.norm(v[vertex_ids["mano"]["middle"]] - wrist) < 0.19


def test_zero_pose_is_the_template_and_the_flag_only_moves_the_mean(flat, relaxed):
    data = build_standin("right")
    transl = torch.tensor([[0.1, -0.2, 0.3]])
    out = flat["right"](torch.zeros(1, 3), torch.zeros(1, 45), torch.zeros(1, 10), transl)
    np.testing.assert_allclose(out.vertices[0].numpy(), data["v_template"] + transl.numpy(), atol=1e-6)
    assert np.abs(flat["right"].hand_mean).max() == 0
    np.testing.assert_allclose(relaxed["right"].hand_mean, data["hands_mean"], atol=1e-7)
    # flat_hand_mean=False adds hands_mean: zero there is the relaxed hand, hands_mean in the flat model.
    params = random_parameters(1)
    mean = torch.as_tensor(relaxed["right"].hand_mean, dtype=torch.float32)
    a = relaxed["right"](**params)
    b = flat["right"](**{**params, "hand_pose": params["hand_pose"] + mean})
    np.testing.assert_allclose(a.vertices.numpy(), b.vertices.numpy(), atol=1e-6)


@pytest.mark.parametrize("joint", ["index2", "middle1", "ring3", "pinky2", "thumb1", "thumb3"])
def test_bending_a_joint_moves_exactly_its_downstream_vertices(flat, joint):
    model, j = flat["right"], JOINT_NAMES.index(joint)
    pose = np.zeros((15, 3))
    pose[j - 1] = 0.6 * flexion_axes("right")[j - 1]
    rest = model(torch.zeros(1, 3), torch.zeros(1, 45)).vertices[0].numpy()
    bent = model(torch.zeros(1, 3), torch.tensor(pose.reshape(1, 45), dtype=torch.float32)).vertices[0].numpy()
    moved = np.linalg.norm(bent - rest, axis=1) > 1e-6
    subtree = [j] + [c for c in range(16) if j in _ancestors(c)]
    weights = model.lbs_weights.numpy()
    np.testing.assert_array_equal(moved, weights[:, subtree].sum(1) > 0)
    # Every moved vertex belongs to this digit: no weight on another digit's joints.
    others = [c for c in range(1, 16) if _digit(c) != _digit(j)]
    assert weights[moved][:, others].max() == 0
    # Vertices carried by this joint alone turn rigidly about it (Rodrigues, here by scipy).
    joint_position = build_standin("right")["J_regressor"][j] @ build_standin("right")["v_template"]
    rigid = weights[:, j] == 1
    assert rigid.sum() > 5
    expected = Rotation.from_rotvec(pose[j - 1]).apply(rest[rigid] - joint_position) + joint_position
    np.testing.assert_allclose(bent[rigid], expected, atol=1e-5)
    # Flexion curls toward the palm (-y for the right hand's rest pose).
    assert (bent - rest)[moved, 1].mean() < 0


def _ancestors(joint: int) -> list[int]:
    chain = []
    while PARENTS[joint] >= 0:
        joint = PARENTS[joint]
        chain.append(joint)
    return chain


def _digit(joint: int) -> int:
    return (joint - 1) // 3


def test_left_hand_is_the_mirror_of_the_right(flat):
    params = random_parameters(2)
    mirrored = {"global_orient": params["global_orient"] * torch.tensor([1.0, -1.0, -1.0]),
                "hand_pose": (params["hand_pose"].reshape(-1, 15, 3) * torch.tensor([1.0, -1.0, -1.0])).reshape(-1, 45),
                "betas": params["betas"], "transl": params["transl"] * torch.tensor(MIRROR, dtype=torch.float32)}
    right, left = flat["right"](**params), flat["left"](**mirrored)
    np.testing.assert_allclose(left.vertices.numpy(), right.vertices.numpy() * MIRROR, atol=2e-6)
    np.testing.assert_allclose(left.joints.numpy(), right.joints.numpy() * MIRROR, atol=2e-6)
    # Rewound faces keep the left hand's normals pointing outward.
    data = build_standin("left")
    v = data["v_template"]
    assert np.linalg.det(v[data["f"]] - v.mean(0)).sum() > 0
    np.testing.assert_allclose(flexion_axes("left"), flexion_axes("right") * [1, -1, -1])


@pytest.mark.parametrize("side", ["left", "right"])
def test_lbs_with_the_returned_transforms_reproduces_the_vertices(flat, relaxed, side):
    data = build_standin(side)
    for models in (flat, relaxed):
        params = random_parameters(3)
        out = models[side](**params)
        shaped = data["v_template"] + np.einsum("vck,bk->bvc", data["shapedirs"], params["betas"].numpy())
        blended = np.einsum("vj,bjmn->bvmn", data["weights"], out.transforms.detach().numpy())
        skinned = np.einsum("bvmn,bvn->bvm", blended[..., :3, :3], shaped) + blended[..., :3, 3]
        np.testing.assert_allclose(skinned, out.vertices.detach().numpy(), atol=1e-5)
        # The root transform is the global orientation about the rest wrist, plus transl.
        wrist = data["J_regressor"][0] @ shaped[0]
        root = out.transforms[0, 0].detach().numpy()
        rotation = Rotation.from_rotvec(params["global_orient"][0].numpy()).as_matrix()
        np.testing.assert_allclose(root[:3, :3], rotation, atol=1e-5)
        np.testing.assert_allclose(root[:3, :3] @ wrist + root[:3, 3], wrist + params["transl"][0].numpy(), atol=1e-5)


def test_joints_are_openpose_order_with_fingertips_at_the_tip_vertices(flat):
    model = flat["right"]
    params = random_parameters(4)
    out = model(**params)
    tips = [vertex_ids["mano"][name] for name in FINGERTIP_ORDER]
    np.testing.assert_allclose(out.joints[:, [4, 8, 12, 16, 20]].numpy(), out.vertices[:, tips].numpy())
    mano_joints = model.model(**params).joints
    np.testing.assert_allclose(out.joints[:, [0, 1, 5, 9, 13, 17]].detach().numpy(),
                               mano_joints[:, [0, 13, 1, 4, 10, 7]].detach().numpy())
    assert sorted(OPENPOSE_FROM_MANO) == list(range(21))
    # In the flat rest pose each tip vertex is its digit's farthest vertex from the digit's first joint.
    data = build_standin("right")
    v = data["v_template"]
    joints = data["J_regressor"] @ v
    for name, first in zip(FINGERTIP_ORDER, (13, 1, 4, 10, 7)):
        digit = data["weights"][:, [first, first + 1, first + 2]].sum(1) > 0
        distances = np.linalg.norm(v - joints[first], axis=1)
        assert np.argmax(np.where(digit, distances, 0)) == vertex_ids["mano"][name]


def test_forward_is_differentiable_in_every_input(relaxed):
    params = {k: v.clone().requires_grad_(True) for k, v in random_parameters(5, batch=2).items()}
    out = relaxed["left"](**params)
    (out.vertices.sum() + out.joints.square().sum() + out.transforms.sum()).backward()
    for name, value in params.items():
        assert value.grad is not None and value.grad.abs().sum() > 0, name


def test_folder_source_round_trip_and_refusals(tmp_path, flat):
    folder = write_standin(tmp_path / "mano")
    from_files = load_hands(str(folder), flat_hand_mean=True)
    params = random_parameters(6)
    for side in ("left", "right"):
        np.testing.assert_allclose(from_files[side](**params).vertices.numpy(), flat[side](**params).vertices.numpy(),
                                   atol=1e-6)
    with pytest.raises(FileNotFoundError, match=r"nowhere/MANO_LEFT\.npz. does not exist"):
        load_hands(str(tmp_path / "nowhere"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "MANO_LEFT.pkl").write_bytes(b"not unpickled")
    (pickled / "MANO_RIGHT.pkl").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match=r"\.pkl files are refused"):
        load_hands(str(pickled))
    with pytest.raises(ValueError, match=r"\.pkl files are refused"):
        load_hands(str(pickled / "MANO_RIGHT.pkl"))
    objects = tmp_path / "objects"
    write_standin(objects)
    np.savez(objects / "MANO_RIGHT.npz", J_regressor=np.array([{"sparse": True}], dtype=object))
    with pytest.raises(ValueError, match="pickled objects"):
        load_hands(str(objects))


def test_mano_left_shapedirs_bug_is_fixed_on_load(tmp_path):
    folder = write_standin(tmp_path)
    left, right = build_standin("left"), build_standin("right")
    left["shapedirs"][:, 0] = right["shapedirs"][:, 0]  # as in MANO's released MANO_LEFT.pkl
    np.savez(folder / "MANO_LEFT.npz", **left)
    hands = load_hands(str(folder))
    np.testing.assert_allclose(hands["left"].model.shapedirs[:, 0].numpy(), -right["shapedirs"][:, 0], atol=1e-7)


def test_subdividing_one_triangle_gives_its_four_corner_and_centre_triangles():
    faces, edges = subdivide_faces(np.array([[0, 1, 2]]), 3)
    # new vertices 3, 4, 5 are the midpoints of the sorted edges (0, 1), (0, 2), (1, 2)
    assert edges.tolist() == [[0, 1], [0, 2], [1, 2]]
    assert faces.tolist() == [[0, 3, 4], [3, 1, 5], [4, 5, 2], [3, 5, 4]]


def test_mano_hd_standin_is_one_surface_with_mano_hd_counts():
    data = build_standin("right")
    edges, _ = mesh_edges(data["f"])
    hands = load_hands("standin", mesh="mano-hd")
    for side, model in hands.items():
        # MANO's topology (778 vertices, 1538 faces, a 16-edge wrist opening) has 2315 edges: HandAvatar's 3093
        assert model.num_vertices == NUM_VERTICES + len(edges) == 3093 and model.faces.shape == (4 * NUM_FACES, 3)
        assert model.mesh == "mano-hd" and model.lbs_weights.shape == (3093, 16)
        f = model.faces
        directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        assert len(np.unique(directed, axis=0)) == len(directed)  # consistently wound
        _, uses = np.unique(np.sort(directed, 1), axis=0, return_counts=True)
        assert set(uses.tolist()) == {1, 2} and (uses == 1).sum() == 2 * 16  # each wrist edge split in two
        np.testing.assert_allclose(model.lbs_weights.sum(1).numpy(), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="hand mesh 'smooth'"):
        load_hands("standin", mesh="smooth")


def _pose_offsets(posedirs: np.ndarray, full_pose: np.ndarray) -> np.ndarray:
    """(V, 3) MANO's pose-corrective offsets: posedirs times the 15 non-root (R - I), flattened row-major."""
    rotations = Rotation.from_rotvec(full_pose.reshape(16, 3)[1:]).as_matrix()
    return posedirs @ (rotations - np.eye(3)).reshape(-1)


def test_mano_hd_keeps_manos_vertices_and_skins_new_ones_from_their_edge(tmp_path):
    # A MANO-format file with pose correctives (the stand-in has none), loaded as MANO and as MANO-HD.
    rng = np.random.default_rng(0)
    folder = write_standin(tmp_path / "mano")
    for side in ("left", "right"):
        data = build_standin(side)
        data["posedirs"] = 1e-3 * rng.standard_normal(data["posedirs"].shape)
        np.savez(folder / f"MANO_{side.upper()}.npz", **data)
    mano, hd = load_hands(str(folder), flat_hand_mean=True), load_hands(str(folder), True, mesh="mano-hd")
    data = build_standin("right")
    data["posedirs"] = np.load(folder / "MANO_RIGHT.npz")["posedirs"]
    edges, _ = mesh_edges(data["f"])
    params = random_parameters(7)
    for side in ("left", "right"):
        a, b = mano[side](**params), hd[side](**params)
        # MANO's vertices, joints and bones, bit for bit
        assert torch.equal(b.vertices[:, :NUM_VERTICES], a.vertices) and torch.equal(b.joints, a.joints)
        assert torch.equal(b.transforms, a.transforms)
    # Zero pose, any shape and translation: every new vertex is its edge's midpoint.
    rest = {**params, "global_orient": torch.zeros(3, 3), "hand_pose": torch.zeros(3, 45)}
    vertices = hd["right"](**rest).vertices.numpy()
    np.testing.assert_allclose(vertices[:, NUM_VERTICES:], vertices[:, edges].mean(2), atol=1e-7)
    # Posed: LBS of the edge's mean weights applied to the edge's mean rest point (shape and pose correctives),
    # recomputed here from the file's arrays and MANO's own bone transforms.
    out, bones = hd["right"](**params), mano["right"](**params).transforms.numpy()
    for k in range(len(params["betas"])):
        full_pose = torch.cat([params["global_orient"][k], params["hand_pose"][k]]).numpy()
        shaped = data["v_template"] + data["shapedirs"] @ params["betas"][k].numpy()
        rest_points = shaped + _pose_offsets(data["posedirs"], full_pose)
        blended = np.einsum("ej,jmn->emn", data["weights"][edges].mean(1), bones[k])
        expected = np.einsum("emn,en->em", blended[:, :3, :3], rest_points[edges].mean(1)) + blended[:, :3, 3]
        np.testing.assert_allclose(out.vertices[k, NUM_VERTICES:].numpy(), expected, atol=2e-6)


def test_mano_hd_new_vertices_stay_near_their_posed_edge_midpoints(relaxed):
    """Exact where an edge's endpoints share their weights (one affine map moves both); elsewhere blending weights is
    not blending skinned points: measured on grasp-like poses."""
    hd = load_hands("standin", mesh="mano-hd")["right"]
    edges, _ = mesh_edges(relaxed["right"].faces)
    params = random_parameters(8, batch=8)
    mean = torch.as_tensor(relaxed["right"].hand_mean, dtype=torch.float32)
    params["hand_pose"] = 0.3 * params["hand_pose"] + 2 * mean  # the relaxed hand curled further, and some noise
    vertices = hd(**params).vertices.numpy()
    off = np.linalg.norm(vertices[:, NUM_VERTICES:] - vertices[:, edges].mean(2), axis=-1)
    weights = relaxed["right"].lbs_weights.numpy()
    rigid = (weights[edges[:, 0]] == weights[edges[:, 1]]).all(1)
    assert rigid.mean() > 0.5 and off[:, rigid].max() < 1e-6
    # the stand-in's blends across joints are 12 mm wide, so the edges crossing them bend most: 2.2 mm at most here
    assert off.max() < 5e-3, off.max()
    print(f"MANO-HD new vertices on edges across a weight change, off their posed edge midpoints: "
          f"median {1e3 * np.median(off[:, ~rigid]):.3f} mm, max {1e3 * off.max():.2f} mm")
