"""From a Sequence's numpy records to what HOGS renders with: cameras, scene poses (MANO bone transforms through
the hand models), and JSON forms of poses and cameras for dataset rows."""

from __future__ import annotations

import numpy as np
import torch

from models.hand import HandModel
from models.hogsa.hogs import HANDS, Camera, ScenePose
from tasks.hogsa.sequence import CameraView, Frame, HandPose


def camera_of(view: CameraView) -> Camera:
    return Camera(torch.as_tensor(view.K, dtype=torch.float32), torch.as_tensor(view.R, dtype=torch.float32),
                  torch.as_tensor(view.t, dtype=torch.float32), int(view.width), int(view.height))


def hand_output(model: HandModel, pose: HandPose):
    return model.forward(*(torch.as_tensor(np.asarray(v), dtype=torch.float32)[None]
                           for v in (pose.global_orient, pose.hand_pose, pose.betas, pose.transl)))


@torch.no_grad()
def scene_pose(hands: dict[str, HandModel], frame: Frame) -> ScenePose:
    return ScenePose({side: hand_output(hands[side], pose).transforms[0] for side, pose in frame.hands.items()},
                     torch.as_tensor(frame.object_rotation, dtype=torch.float32),
                     torch.as_tensor(frame.object_translation, dtype=torch.float32), float(frame.articulation))


def sequence_betas(frames: list[Frame], side: str) -> np.ndarray:
    """The hand's shape: its betas in the first frame that has the hand (zeros when it never appears)."""
    return next((np.asarray(f.hands[side].betas, dtype=np.float64) for f in frames if side in f.hands), np.zeros(10))


# -- JSON forms (dataset rows) ----------------------------------------------------------------------------------
def hand_pose_to_json(pose: HandPose) -> dict:
    return {k: np.asarray(getattr(pose, k), dtype=float).tolist()
            for k in ("global_orient", "hand_pose", "betas", "transl")}


def hand_pose_from_json(data: dict) -> HandPose:
    return HandPose(**{k: np.asarray(data[k], dtype=np.float64) for k in ("global_orient", "hand_pose", "betas",
                                                                          "transl")})


def frame_to_json(frame: Frame) -> dict:
    return {"index": frame.index, "hands": {s: hand_pose_to_json(p) for s, p in frame.hands.items()},
            "object_rotation": np.asarray(frame.object_rotation, dtype=float).tolist(),
            "object_translation": np.asarray(frame.object_translation, dtype=float).tolist(),
            "articulation": float(frame.articulation)}


def frame_from_json(data: dict) -> Frame:
    return Frame(int(data["index"]), {s: hand_pose_from_json(p) for s, p in data["hands"].items() if s in HANDS},
                 np.asarray(data["object_rotation"]), np.asarray(data["object_translation"]),
                 float(data["articulation"]))


def camera_to_json(view: CameraView) -> dict:
    return {"name": view.name, "K": np.asarray(view.K, float).tolist(), "R": np.asarray(view.R, float).tolist(),
            "t": np.asarray(view.t, float).tolist(), "width": int(view.width), "height": int(view.height)}
