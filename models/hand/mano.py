"""MANO hands through `smplx.MANO`: vertices, 21 OpenPose-order joints and the rest -> posed bone transforms.

Sources: `"standin"` (the procedural STAND-IN of standin.py) or a folder with the user's licensed MANO_LEFT.npz and
MANO_RIGHT.npz (converted once from MANO's pickles, with dense arrays; `.pkl` files are refused because unpickling can
run code). Both go through `smplx.MANO` with a `data_struct`, so smplx never unpickles anything.

Pose convention: full 45-d axis-angle finger pose (no PCA). With `flat_hand_mean=False` (the default: smplx's and
MANO's default, and ARCTIC's) `hand_pose` is relative to the file's `hands_mean` (a relaxed hand), so zero is the
relaxed hand; with `flat_hand_mean=True` (H2O's labels, manopth's flat_hand_mean=True) it is absolute, so zero is the
flat template. `HandModel.hand_mean` is what forward adds: absolute pose = hand_pose + hand_mean.
Frames: MANO rotates the hand about its rest wrist joint (which depends on `betas`), then adds `transl`. Metres.

Meshes (`mesh`): "mano" (the file's own: 778 vertices for MANO) or "mano-hd" (mano_hd.py: subdivided once, 3,093
vertices for MANO, the first 778 MANO's own); joints, bone transforms and fingertips are the same in both.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.hand import standin
from models.hand.mano_hd import HAND_MESHES, MANO, subdivide_mano

STANDIN = "standin"
SIDES = ("left", "right")
NUM_BETAS = 10
# OpenPose hand order from MANO's 16 joints + 5 fingertips (16 thumb, 17 index, 18 middle, 19 ring, 20 pinky):
# wrist, thumb 1-4, index 1-4, middle 1-4, ring 1-4, pinky 1-4.
OPENPOSE_FROM_MANO = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]
FINGERTIP_ORDER = ("thumb", "index", "middle", "ring", "pinky")


@dataclass
class HandOutput:
    vertices: torch.Tensor  # (B, V, 3)
    joints: torch.Tensor  # (B, 21, 3) OpenPose hand order
    transforms: torch.Tensor  # (B, 16, 4, 4) rest (shaped template) -> posed, per bone, transl included


class HandModel:
    """One MANO hand (`side` "left" or "right") wrapped around `smplx.MANO`; `mesh` names the mesh `data` holds."""

    def __init__(self, data: dict[str, np.ndarray], side: str, label: str, flat_hand_mean: bool = False,
                 mesh: str = MANO):
        import smplx
        from smplx.vertex_ids import vertex_ids

        self.side, self.label, self.flat_hand_mean, self.mesh = side, label, flat_hand_mean, mesh
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a notice for every 10-beta model file
            self.model = smplx.MANO(model_path=label, is_rhand=side == "right", data_struct=smplx.utils.Struct(**data),
                                    use_pca=False, flat_hand_mean=flat_hand_mean, num_betas=NUM_BETAS)
        self.faces = np.asarray(self.model.faces, dtype=np.int64)
        self.num_vertices = int(self.model.v_template.shape[0])
        self.fingertips = torch.tensor([vertex_ids["mano"][name] for name in FINGERTIP_ORDER])

    @property
    def lbs_weights(self) -> torch.Tensor:
        return self.model.lbs_weights  # (V, 16)

    @property
    def parents(self) -> torch.Tensor:
        return self.model.parents

    @property
    def hand_mean(self) -> np.ndarray:
        """(45,) the pose forward adds to `hand_pose`: the file's hands_mean, or zeros with flat_hand_mean=True."""
        return self.model.hand_mean.detach().cpu().numpy().astype(np.float64)

    @property
    def is_standin(self) -> bool:
        return self.label == STANDIN

    def to(self, device) -> HandModel:
        self.model.to(device)
        self.fingertips = self.fingertips.to(device)
        return self

    def shaped_template(self, betas: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) rest vertices with the shape blend shapes applied."""
        from smplx.lbs import blend_shapes

        return self.model.v_template + blend_shapes(betas, self.model.shapedirs)

    def rest_joints(self, betas: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 16, 3) rest joints for `betas` (zeros when None); joint 0 is the wrist MANO rotates about."""
        return self.model.J_regressor @ self.shaped_template(self._betas(betas))  # matmul: faster than einsum on CPU

    def forward(self, global_orient: torch.Tensor, hand_pose: torch.Tensor, betas: torch.Tensor | None = None,
                transl: torch.Tensor | None = None) -> HandOutput:
        """global_orient (B, 3) and hand_pose (B, 45) axis-angle, betas (B, 10), transl (B, 3); differentiable."""
        from smplx.lbs import batch_rigid_transform, batch_rodrigues

        like = {"dtype": self.model.v_template.dtype, "device": self.model.v_template.device}
        global_orient = torch.as_tensor(global_orient, **like).reshape(-1, 3)
        batch = global_orient.shape[0]
        hand_pose = torch.as_tensor(hand_pose, **like).reshape(batch, 45)
        betas = self._betas(betas, batch)
        transl = torch.zeros(batch, 3, **like) if transl is None else torch.as_tensor(transl, **like).reshape(batch, 3)
        out = self.model(global_orient=global_orient, hand_pose=hand_pose, betas=betas, transl=transl)
        full_pose = torch.cat([global_orient, hand_pose], 1) + self.model.pose_mean
        rotations = batch_rodrigues(full_pose.reshape(-1, 3)).reshape(batch, 16, 3, 3)
        _, transforms = batch_rigid_transform(rotations, self.rest_joints(betas), self.parents)
        shift = torch.zeros(batch, 1, 4, 4, **like)
        shift[:, 0, :3, 3] = transl
        joints = torch.cat([out.joints, out.vertices[:, self.fingertips]], 1)[:, OPENPOSE_FROM_MANO]
        return HandOutput(vertices=out.vertices, joints=joints, transforms=transforms + shift)

    __call__ = forward

    def _betas(self, betas, batch: int = 1) -> torch.Tensor:
        """(batch, 10) betas: zeros when None, one row repeated for the batch."""
        like = {"dtype": self.model.v_template.dtype, "device": self.model.v_template.device}
        if betas is None:
            return torch.zeros(batch, NUM_BETAS, **like)
        betas = torch.as_tensor(betas, **like).reshape(-1, NUM_BETAS)
        return betas.expand(batch, -1) if len(betas) == 1 else betas


def _refuse_pickle(path: Path) -> ValueError:
    return ValueError(f"MANO file {str(path)!r}: pickled .pkl files are refused (unpickling can run code); convert it "
                      "once, in an environment you trust, to an .npz of plain dense arrays named "
                      f"{path.with_suffix('.npz').name}")


def _read_mano_file(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file() and path.with_suffix(".pkl").is_file():
        raise _refuse_pickle(path.with_suffix(".pkl"))
    if not path.is_file():
        raise FileNotFoundError(f"MANO file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as exc:
        raise ValueError(f"MANO file {str(path)!r} holds pickled objects (e.g. a sparse J_regressor); save every "
                         f"array dense and numeric ({exc})") from None


def _fix_left_shapedirs(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> None:
    """MANO's released MANO_LEFT has the x column of its shape directions unmirrored (equal to the right hand's
    instead of negated), a known bug of the files; negate it when found, as the hand-reconstruction codes do."""
    if np.abs(left["shapedirs"][:, 0] - right["shapedirs"][:, 0]).sum() < 1:
        left["shapedirs"] = left["shapedirs"].copy()
        left["shapedirs"][:, 0] *= -1


def load_hands(source: str = STANDIN, flat_hand_mean: bool = False, mesh: str = MANO) -> dict[str, HandModel]:
    """{"left", "right"} hand models from `"standin"` or a folder holding MANO_LEFT.npz and MANO_RIGHT.npz, with
    the file's own mesh (`mesh="mano"`) or its subdivided MANO-HD-like twin (`"mano-hd"`)."""
    if mesh not in HAND_MESHES:
        raise ValueError(f"hand mesh {mesh!r}: expected one of {', '.join(HAND_MESHES)}")
    if source == STANDIN:
        data = {side: standin.build_standin(side) for side in SIDES}
    else:
        folder = Path(source)
        if folder.suffix == ".pkl":
            raise _refuse_pickle(folder)
        if folder.suffix == ".npz":
            raise ValueError(f"MANO source {source!r}: give the folder that holds MANO_LEFT.npz and MANO_RIGHT.npz")
        data = {side: _read_mano_file(folder / f"MANO_{side.upper()}.npz") for side in SIDES}
        _fix_left_shapedirs(data["left"], data["right"])
    if mesh != MANO:
        data = {side: subdivide_mano(arrays) for side, arrays in data.items()}
    return {side: HandModel(data[side], side, source, flat_hand_mean, mesh) for side in SIDES}
