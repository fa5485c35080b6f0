"""SMPL bodies through `smplx`: vertices, joints, the bone transforms LBS needs, and COCO keypoints.

Frame: person-centric, pelvis at the origin, global orientation zero (the camera carries the view), as in
CHORUS. The licensed SMPL file (as `.npz`: pickled `.pkl` files are refused, they can run code) or the
procedural stand-in (`"standin"`) load through the same `smplx.SMPL` class.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from models.body import standin

STANDIN = "standin"
NUM_BODY_JOINTS = 23
# COCO-17 keypoints from SMPL joints (0-23) and smplx's extra vertex joints (24 nose, 25 reye, 26 leye,
# 27 rear, 28 lear).
COCO_KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
]
COCO_FROM_SMPL = [24, 26, 25, 28, 27, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8]


@dataclass
class Posed:
    vertices: torch.Tensor  # (B, V, 3)
    joints: torch.Tensor  # (B, 24, 3)
    keypoints: torch.Tensor  # (B, 17, 3) COCO order
    transforms: torch.Tensor  # (B, 24, 4, 4): rest pose -> this pose, per bone


class BodyModel:
    """An SMPL-format body: `pose(body_pose)` gives vertices, joints, keypoints and bone transforms."""

    def __init__(self, data: dict[str, np.ndarray], vertex_ids: dict[str, int] | None, label: str):
        import smplx

        self.label = label
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a notice for every 10-beta SMPL file
            self.model = smplx.SMPL(model_path=label, data_struct=smplx.utils.Struct(**data),
                                    vertex_ids=vertex_ids, create_transl=False)
        self.faces = np.asarray(self.model.faces, dtype=np.int64)
        self.lbs_weights = self.model.lbs_weights  # (V, 24)
        self.parents = self.model.parents

    @property
    def rest_pelvis(self) -> np.ndarray:
        """Where SMPL's root joint sits in the rest pose (mean shape): SMPL rotates the body about it."""
        return (self.model.J_regressor @ self.model.v_template)[0].numpy()

    @property
    def is_standin(self) -> bool:
        return self.label == STANDIN

    def pose(self, body_pose: torch.Tensor, betas: torch.Tensor | None = None) -> Posed:
        """body_pose: (B, 69) axis-angle of joints 1..23."""
        from smplx.lbs import batch_rigid_transform, batch_rodrigues, blend_shapes, vertices2joints

        body_pose = torch.as_tensor(body_pose, dtype=torch.float32).reshape(-1, NUM_BODY_JOINTS * 3)
        batch = body_pose.shape[0]
        betas = torch.zeros(batch, self.model.num_betas) if betas is None else torch.as_tensor(betas).float()
        orient = torch.zeros(batch, 3)
        out = self.model(betas=betas, body_pose=body_pose, global_orient=orient)
        shaped = self.model.v_template + blend_shapes(betas, self.model.shapedirs)
        rest_joints = vertices2joints(self.model.J_regressor, shaped)
        rotations = batch_rodrigues(torch.cat([orient, body_pose], 1).reshape(-1, 3)).reshape(batch, 24, 3, 3)
        _, transforms = batch_rigid_transform(rotations, rest_joints, self.parents)
        pelvis = out.joints[:, :1]
        to_origin = torch.eye(4).repeat(batch, 1, 1)
        to_origin[:, :3, 3] = -pelvis[:, 0]
        return Posed(vertices=out.vertices - pelvis, joints=out.joints[:, :24] - pelvis,
                     keypoints=out.joints[:, COCO_FROM_SMPL] - pelvis,
                     transforms=to_origin[:, None] @ transforms)

    def rest_to(self, body_pose: torch.Tensor, reference_pose: torch.Tensor) -> torch.Tensor:
        """Bone transforms from `reference_pose` space (e.g. the canonical star pose) to `body_pose` space."""
        target = self.pose(body_pose).transforms
        reference = self.pose(reference_pose).transforms
        return target @ torch.linalg.inv(reference)


def star_pose() -> torch.Tensor:
    """CHORUS's canonical pose: rest pose with the hips rotated +-pi/6 about z (legs apart)."""
    pose = torch.zeros(NUM_BODY_JOINTS, 3)
    pose[standin.JOINT_NAMES.index("left_hip") - 1, 2] = np.pi / 6
    pose[standin.JOINT_NAMES.index("right_hip") - 1, 2] = -np.pi / 6
    return pose.reshape(1, -1)


def _read_model_file(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"body model file {str(path)!r} does not exist")
    if path.suffix != ".npz":
        raise ValueError(f"body model file {str(path)!r}: expected an SMPL .npz (pickled .pkl files can run code "
                         "when loaded; convert yours to .npz once, in an environment you trust)")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@lru_cache(maxsize=4)
def load_body_model(source: str = STANDIN) -> BodyModel:
    """`"standin"` for the procedural stand-in, or a path to the user's SMPL model file."""
    if source == STANDIN:
        data = standin.build_standin()
        return BodyModel(data, standin.landmark_vertex_ids(data["v_template"]), STANDIN)
    return BodyModel(_read_model_file(Path(source)), None, source)
