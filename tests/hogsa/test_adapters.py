"""ARCTIC and H2O adapters: tiny datasets written in the real formats must read back exactly as written (poses,
cameras, units), malformed files must be named in the error or reject, and pickles may only ever build arrays."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from hoi_factory.pipeline import PlanError
from support.arctic_fixture import write_arctic_fixture
from support.h2o_fixture import write_h2o_fixture
from tasks.hogsa.arctic import read_arctic
from tasks.hogsa.h2o import read_h2o
from tasks.hogsa.sequence import posed_object_vertices

SUBJECT, SEQUENCE = "s01", "box_grab_01"
TAKE = ("subject1", "h1/0")
HAND_MEAN = {side: np.random.default_rng(i).normal(0, 0.3, 45) for i, side in enumerate(("left", "right"))}


@pytest.fixture
def arctic(tmp_path):
    return tmp_path, write_arctic_fixture(tmp_path, SUBJECT, SEQUENCE)


@pytest.fixture
def h2o(tmp_path):
    return tmp_path, write_h2o_fixture(tmp_path, *TAKE, hand_mean=HAND_MEAN)


def assert_cameras_equal(read, truth):
    assert [c.name for c in read] == [c.name for c in truth]
    for a, b in zip(read, truth):
        assert (a.width, a.height) == (b.width, b.height)
        np.testing.assert_allclose(a.K, b.K, atol=1e-12)
        np.testing.assert_allclose(a.R, b.R, atol=1e-12)
        np.testing.assert_allclose(a.t, b.t, atol=1e-12)


def assert_poses_equal(read, truth):
    assert [f.index for f in read.frames] == [f.index for f in truth.frames]
    for a, b in zip(read.frames, truth.frames):
        assert a.hands.keys() == b.hands.keys()
        for side in a.hands:
            for field in ("global_orient", "hand_pose", "betas", "transl"):
                np.testing.assert_allclose(getattr(a.hands[side], field), getattr(b.hands[side], field), atol=1e-12)
        np.testing.assert_allclose(a.object_rotation, b.object_rotation, atol=1e-12)
        np.testing.assert_allclose(a.object_translation, b.object_translation, atol=1e-12)
        assert a.articulation == pytest.approx(b.articulation, abs=1e-12)
        np.testing.assert_allclose(posed_object_vertices(read, a), posed_object_vertices(truth, b), atol=1e-9)


# --- ARCTIC ---------------------------------------------------------------------------------------------------------


def test_arctic_reads_back_what_was_written(arctic):
    root, truth = arctic
    rejects = []
    read = read_arctic(str(root), SUBJECT, SEQUENCE, rejects=rejects)
    assert rejects == []
    assert (read.id, read.object_name) == (truth.id, "box")
    assert_cameras_equal(read.cameras, truth.cameras)  # views 1 and 2: those with image folders
    assert_poses_equal(read, truth)
    np.testing.assert_allclose(read.object_mesh.vertices, truth.object_mesh.vertices, atol=1e-12)
    np.testing.assert_array_equal(read.object_part, truth.object_part)
    for a, b in zip(read.frames, truth.frames):
        for name, image in b.images.items():  # JPEG: close, not equal
            assert a.images[name].shape == image.shape and a.images[name].dtype == np.uint8
            assert np.abs(a.images[name].astype(int) - image).mean() < 3


def test_arctic_units_and_articulation_follow_arctics_own_formulas(arctic):
    """Recomputed from the raw files as ARCTIC's code does (object_tensors.py): millimetres, the vertices labelled 0
    in parts.json turned about (0, 0, -1) by the articulation, then rotated and translated (mm / 1000)."""
    root, _ = arctic
    read = read_arctic(str(root), SUBJECT, SEQUENCE, images=False)
    params = np.load(root / "raw_seqs" / SUBJECT / f"{SEQUENCE}.object.npy", allow_pickle=False)
    template = root / "meta" / "object_vtemplates" / "box"
    vertices_mm = np.array([line.split()[1:] for line in (template / "mesh.obj").read_text().splitlines()
                            if line.startswith("v ")], dtype=float)
    turned = np.array(json.loads((template / "parts.json").read_text())) == 0
    np.testing.assert_allclose(read.object_mesh.vertices * 1000, vertices_mm, atol=1e-9)
    for frame in read.frames:
        arti, rotvec, transl_mm = params[frame.index, 0], params[frame.index, 1:4], params[frame.index, 4:7]
        local = vertices_mm / 1000
        local[turned] = Rotation.from_rotvec(np.array([0, 0, -1.0]) * arti).apply(local[turned])
        expected = Rotation.from_rotvec(rotvec).apply(local) + transl_mm / 1000
        np.testing.assert_allclose(posed_object_vertices(read, frame), expected, atol=1e-9)
    assert [c.name for c in read.cameras] == [str(v) for v in range(1, 9)]  # poses only: every calibrated view


def test_arctic_frames_cameras_and_image_scale(arctic):
    root, truth = arctic
    read = read_arctic(str(root), SUBJECT, SEQUENCE, cameras=[2], frames=[2], image_scale=2)
    camera, frame = read.cameras[0], read.frames[0]
    assert (camera.name, camera.width, camera.height, frame.index) == ("2", 32, 24, 2)
    np.testing.assert_allclose(camera.K[:2], truth.cameras[1].K[:2] / 2)
    assert frame.images["2"].shape == (24, 32, 3)
    halved = truth.frames[2].images["2"].reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(frame.images["2"] - halved).mean() < 3


def test_arctic_bad_frames_are_skipped_with_their_reason(arctic):
    root, _ = arctic
    params_path = root / "raw_seqs" / SUBJECT / f"{SEQUENCE}.object.npy"
    params = np.load(params_path)
    params[0, 5] = np.nan
    np.save(params_path, params)
    images = root / "images" / SUBJECT / SEQUENCE
    (images / "1" / "00003.jpg").unlink()  # frame 1 (ioi_offset 2)
    (images / "2" / "00004.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")  # frame 2
    rejects = []
    read = read_arctic(str(root), SUBJECT, SEQUENCE, rejects=rejects)
    assert read.frames == []
    assert [(r.frame, r.reason) for r in rejects] == [(0, "non-finite values"), (1, "missing file"),
                                                     (2, "unreadable image")]
    assert "object pose of frame 0" in rejects[0].detail and rejects[1].detail.endswith("1/00003.jpg")
    assert "2/00004.jpg: OSError" in rejects[2].detail


def test_arctic_image_of_the_wrong_size_is_rejected(arctic):
    root, _ = arctic
    Image.new("RGB", (32, 24)).save(root / "images" / SUBJECT / SEQUENCE / "1" / "00002.jpg")
    rejects = []
    read_arctic(str(root), SUBJECT, SEQUENCE, rejects=rejects)
    assert [(r.frame, r.reason) for r in rejects] == [(0, "image size mismatch")]
    assert "32x24, the calibration says 64x48" in rejects[0].detail


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _mano_without_pose(path: Path) -> None:
    from tasks.hogsa.arctic import load_npy
    mano = load_npy(path.read_bytes(), str(path))
    mano["left"]["pose"] = mano["left"]["pose"][:, :40]
    np.save(path, mano)


def _edit_json(path: Path, edit) -> None:
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


ARCTIC_PLAN_ERRORS = {
    "truncated MANO file": (lambda r: _truncate(r / "raw_seqs" / SUBJECT / f"{SEQUENCE}.mano.npy"),
                            "box_grab_01.mano.npy: not a readable .npy"),
    "wrong MANO pose shape": (lambda r: _mano_without_pose(r / "raw_seqs" / SUBJECT / f"{SEQUENCE}.mano.npy"),
                              r"left.pose: shape \(3, 40\), expected \('F', 45\)"),
    "missing object file": (lambda r: (r / "raw_seqs" / SUBJECT / f"{SEQUENCE}.object.npy").unlink(),
                            "box_grab_01.object.npy does not exist"),
    "wrong object shape": (lambda r: np.save(r / "raw_seqs" / SUBJECT / f"{SEQUENCE}.object.npy", np.zeros((3, 6))),
                           r"object.npy: shape \(3, 6\), expected \('F', 7\)"),
    "object frames disagree": (lambda r: np.save(r / "raw_seqs" / SUBJECT / f"{SEQUENCE}.object.npy",
                                                 np.zeros((4, 7))), "4 frames, the MANO file has 3"),
    "unknown subject": (lambda r: _edit_json(r / "meta" / "misc.json", lambda m: m.pop(SUBJECT)),
                        "misc.json: no entry for subject 's01'"),
    "non-rigid world2cam": (lambda r: _edit_json(r / "meta" / "misc.json",
                                                 lambda m: m[SUBJECT]["world2cam"][0][0].__setitem__(0, 2.0)),
                            "view 1 world2cam: the 3x3 block is not a rotation"),
    "parts of the wrong length": (lambda r: (r / "meta/object_vtemplates/box/parts.json").write_text("[0, 1]"),
                                  "parts.json: expected one 0/1 label per mesh vertex"),
    "missing mesh": (lambda r: (r / "meta/object_vtemplates/box/mesh.obj").unlink(), "mesh.obj does not exist"),
}


@pytest.mark.parametrize("case", ARCTIC_PLAN_ERRORS)
def test_arctic_malformed_files_stop_the_read_naming_the_file(arctic, case):
    root, _ = arctic
    damage, message = ARCTIC_PLAN_ERRORS[case]
    damage(root)
    with pytest.raises(PlanError, match=message):
        read_arctic(str(root), SUBJECT, SEQUENCE)


@pytest.mark.parametrize(("request_", "message"), [
    ({"cameras": [0]}, "egocentric camera, which moves every frame"),
    ({"cameras": ["9"]}, "unknown ARCTIC camera '9'"),
    ({"frames": [3]}, r"frames \[3\] are outside"),
    ({"image_scale": 5}, "64x48 is not divisible by 5"),
])
def test_arctic_bad_requests_are_plan_errors(arctic, request_, message):
    root, _ = arctic
    with pytest.raises(PlanError, match=message):
        read_arctic(str(root), SUBJECT, SEQUENCE, **request_)


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_is_refused_and_never_run(arctic):
    root, _ = arctic
    marker = root / "pwned"
    np.save(root / "raw_seqs" / SUBJECT / f"{SEQUENCE}.mano.npy", {"right": Exploit(marker)})
    with pytest.raises(PlanError, match=r"mano.npy: refused to load .*touch"):
        read_arctic(str(root), SUBJECT, SEQUENCE)
    assert not marker.exists()


def test_dicts_pickled_by_numpy_1_load(arctic):
    """ARCTIC's files come from numpy 1 (np.save: protocol 3, globals under numpy.core)."""
    from tasks.hogsa.arctic import load_npy
    root, truth = arctic
    value = {"rot": np.arange(6.0).reshape(2, 3), "n": np.int64(7), "names": np.array(["a", "bc"])}
    payload = pickle.dumps(np.array(value, dtype=object), protocol=3).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in payload
    handle = io.BytesIO()
    np.lib.format.write_array_header_1_0(handle, {"descr": "|O", "fortran_order": False, "shape": ()})
    loaded = load_npy(handle.getvalue() + payload, "numpy1.npy")
    np.testing.assert_array_equal(loaded["rot"], value["rot"])
    assert loaded["n"] == 7 and loaded["names"].tolist() == ["a", "bc"]


# --- H2O ------------------------------------------------------------------------------------------------------------


def test_h2o_reads_back_what_was_written(h2o):
    root, truth = h2o
    rejects = []
    read = read_h2o(str(root), *TAKE, hand_mean=HAND_MEAN, rejects=rejects)
    assert rejects == []
    assert (read.id, read.object_name) == ("h2o/subject1/h1/0", "book")
    assert_cameras_equal(read.cameras, truth.cameras)
    np.testing.assert_allclose(read.cameras[0].R, np.eye(3), atol=1e-12)  # the reference camera is the world
    assert_poses_equal(read, truth)
    assert "left" not in read.frames[1].hands  # flag 0: not annotated
    np.testing.assert_allclose(read.object_mesh.vertices, truth.object_mesh.vertices, atol=1e-6)  # float32 .ply
    np.testing.assert_array_equal(read.object_mesh.visual.vertex_colors, truth.object_mesh.visual.vertex_colors)
    for a, b in zip(read.frames, truth.frames):
        assert a.images.keys() == b.images.keys()
        for name in a.images:
            np.testing.assert_array_equal(a.images[name], b.images[name])  # PNG: exact


def test_h2o_hands_pose_the_hand_model_as_h2os_flat_hand_mean_labels_do(tmp_path):
    """H2O's labels are absolute poses (manopth flat_hand_mean=True): the hand model in HandPose's convention
    (flat_hand_mean=False) posed with what the adapter reads must give the vertices a flat-hand-mean model gives from
    the raw file."""
    from models.hand import load_hands
    hands, flat = load_hands("standin"), load_hands("standin", flat_hand_mean=True)
    write_h2o_fixture(tmp_path, *TAKE, num_frames=1, hand_mean={side: m.hand_mean for side, m in hands.items()})
    read = read_h2o(str(tmp_path), *TAKE, images=False, hand_mean={side: m.hand_mean for side, m in hands.items()})
    raw = np.loadtxt(tmp_path / "subject1/h1/0/cam0/hand_pose_mano/000000.txt").reshape(2, 62)
    for side, values in zip(("left", "right"), raw):
        expected = flat[side](values[4:7][None], values[7:52][None], values[52:62][None], values[1:4][None])
        pose = read.frames[0].hands[side]
        got = hands[side](pose.global_orient[None], pose.hand_pose[None], pose.betas[None], pose.transl[None])
        assert np.abs(hands[side].hand_mean).max() > 0.1  # the conversion is not a no-op
        np.testing.assert_allclose(got.vertices.numpy(), expected.vertices.numpy(), atol=1e-5)
    absolute = read_h2o(str(tmp_path), *TAKE, images=False).frames[0].hands["right"]  # for flat-hand-mean models
    np.testing.assert_allclose(absolute.hand_pose, raw[1, 7:52], atol=1e-12)


def test_h2o_cameras_agree_with_each_cameras_own_object_pose(h2o):
    """cam_pose is camera -> world: camera 1's recovered extrinsics times the object pose (read from camera 0's file)
    must give the object pose camera 1's own obj_pose_rt file holds, which the adapter never reads."""
    root, _ = h2o
    read = read_h2o(str(root), *TAKE, hand_mean=HAND_MEAN, images=False)
    camera = read.cameras[1]
    for frame in read.frames:
        own = np.loadtxt(root / "subject1/h1/0/cam1/obj_pose_rt" / f"{frame.index:06d}.txt")[1:].reshape(4, 4)
        np.testing.assert_allclose(camera.R @ frame.object_rotation, own[:3, :3], atol=1e-9)
        np.testing.assert_allclose(camera.R @ frame.object_translation + camera.t, own[:3, 3], atol=1e-9)


def test_h2o_frames_and_image_scale(h2o):
    root, truth = h2o
    read = read_h2o(str(root), *TAKE, hand_mean=HAND_MEAN, cameras=["cam0"], frames=[2], image_scale=4)
    assert [f.index for f in read.frames] == [2] and [c.name for c in read.cameras] == ["cam0"]
    np.testing.assert_allclose(read.cameras[0].K[:2], truth.cameras[0].K[:2] / 4)
    quartered = truth.frames[2].images["cam0"].reshape(12, 4, 16, 4, 3).mean(axis=(1, 3))
    assert np.abs(read.frames[0].images["cam0"] - quartered).max() <= 1


def _h2o_file(root: Path, camera: str, folder: str, frame: int) -> Path:
    return root / "subject1/h1/0" / camera / folder / f"{frame:06d}.txt"


def _replace_numbers(path: Path, edit) -> None:
    values = np.array(path.read_text().split(), dtype=float)
    edit(values)
    path.write_text(" ".join(repr(float(v)) for v in values))


def test_h2o_bad_frames_are_skipped_with_their_reason(tmp_path):
    root = tmp_path
    write_h2o_fixture(root, *TAKE, num_frames=5, hand_mean=HAND_MEAN)
    _replace_numbers(_h2o_file(root, "cam0", "hand_pose_mano", 0), lambda v: v.__setitem__(70, np.nan))
    path = _h2o_file(root, "cam0", "obj_pose_rt", 1)
    path.write_text(" ".join(path.read_text().split()[:10]))  # truncated
    _replace_numbers(_h2o_file(root, "cam1", "cam_pose", 4), lambda v: v.__setitem__(3, v[3] + 0.01))  # moved 1 cm
    rejects = []
    read = read_h2o(str(root), *TAKE, hand_mean=HAND_MEAN, rejects=rejects)
    assert [f.index for f in read.frames] == [2, 3]
    assert [(r.frame, r.reason) for r in rejects] == [(0, "non-finite values"), (1, "malformed file"),
                                                     (4, "camera moved")]
    assert rejects[0].detail.endswith("cam0/hand_pose_mano/000000.txt")
    assert rejects[1].detail.endswith("cam0/obj_pose_rt/000001.txt: 10 numbers, expected 17")
    assert "['cam1'] cam_pose of frame 4 differs" in rejects[2].detail


@pytest.mark.parametrize(("damage", "reason", "detail"), [
    (lambda r: _replace_numbers(_h2o_file(r, "cam0", "obj_pose_rt", 1), lambda v: v.__setitem__(0, 0)),
     "no object", "obj_pose_rt/000001.txt: class 0"),
    (lambda r: _replace_numbers(_h2o_file(r, "cam0", "obj_pose_rt", 1), lambda v: v.__setitem__(1, 3.0)),
     "malformed file", "obj_pose_rt/000001.txt: the 3x3 block is not a rotation"),
    (lambda r: _replace_numbers(_h2o_file(r, "cam0", "hand_pose_mano", 1), lambda v: v.__setitem__(62, 0.5)),
     "malformed file", "right hand flag 0.5 is not 0 or 1"),
    (lambda r: (r / "subject1/h1/0/cam1/rgb/000001.png").unlink(), "missing file", "cam1/rgb/000001.png"),
    (lambda r: (r / "subject1/h1/0/cam1/rgb/000001.png").write_bytes(b"not a png"), "unreadable image",
     "cam1/rgb/000001.png"),
])
def test_h2o_one_bad_file_rejects_one_frame(h2o, damage, reason, detail):
    root, _ = h2o
    damage(root)
    rejects = []
    read = read_h2o(str(root), *TAKE, hand_mean=HAND_MEAN, rejects=rejects)
    assert [f.index for f in read.frames] == [0, 2]
    assert [(r.frame, r.reason) for r in rejects] == [(1, reason)] and detail in rejects[0].detail


@pytest.mark.parametrize(("damage", "message"), [
    (lambda r: (r / "subject1/h1/0/cam1/cam_intrinsics.txt").unlink(), "cam1/cam_intrinsics.txt"),
    (lambda r: (r / "subject1/h1/0/cam0/cam_intrinsics.txt").write_text("600 600 32 24 64"),
     "cam_intrinsics.txt: 5 numbers, expected 6"),
    (lambda r: (r / "object/book/book.ply").unlink(), "no mesh for object 'book'"),
    (lambda r: (r / "object/book/book.ply").write_bytes(b"ply\nformat nonsense\n"), "book.ply: not a readable mesh"),
])
def test_h2o_malformed_calibration_or_mesh_stops_the_read(h2o, damage, message):
    root, _ = h2o
    damage(root)
    with pytest.raises(PlanError, match=message):
        read_h2o(str(root), *TAKE, hand_mean=HAND_MEAN)


@pytest.mark.parametrize(("request_", "message"), [
    ({"cameras": ["cam4"]}, "head-mounted camera, which moves every frame"),
    ({"cameras": ["cam7"]}, "unknown H2O camera 'cam7'"),
    ({"frames": [9]}, "no usable frame"),
    ({"sequence": "h2/0"}, "h2/0 does not exist"),
    ({"hand_mean": {"left": np.zeros(45)}}, "hand_mean must map 'left' and 'right' to 45 numbers"),
])
def test_h2o_bad_requests_are_plan_errors(h2o, request_, message):
    root, _ = h2o
    arguments = {"subject": TAKE[0], "sequence": TAKE[1], "hand_mean": HAND_MEAN, **request_}
    with pytest.raises(PlanError, match=message):
        read_h2o(str(root), **arguments)
