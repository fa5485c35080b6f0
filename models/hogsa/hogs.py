"""HOGS: the hand-object Gaussian splatting model of one sequence (HOGSA section 3.2).

Three mesh-bound Gaussian sets (models/gaussians/mesh_gaussians.py) in canonical space: the left and the right
hand on their MANO meshes (shaped by the sequence's betas), the object on its mesh. To render a frame:
- hand Gaussians follow linear blend skinning of their canonical vertices with the frame's MANO bone
  transforms, x_t = (sum_i w_i B_i) x_c (Eq. 3), weights initialised from MANO's;
- object Gaussians follow the articulation (moving part about its axis) and then the rigid pose (Eq. 4);
- all of them are splatted together (models/gaussians/render.py), so hands and object occlude each other.

A dataset row of `hogsa-models` holds the model as one safetensors blob (`to_bytes` / `from_bytes`: the state
dict, and the config in its metadata); `save_pretrained` / `from_pretrained` are models/pretrained.py's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import roma
import torch
from torch import nn

from models.gaussians.fit import distance_to_initial_mesh, incident_faces
from models.gaussians.mesh_gaussians import MeshGaussians
from models.gaussians.render import rasterize_gaussians
from models.pretrained import PretrainedMixin, safetensors_bytes, safetensors_metadata

HANDS = ("left", "right")
ACTORS = (*HANDS, "object")
LABEL_COLOURS = torch.eye(3)  # left, right, object: rendering these gives each actor's coverage per pixel


@dataclass
class ScenePose:
    """What a render needs of one frame: per present hand its (16, 4, 4) rest -> posed bone transforms
    (models/hand HandOutput.transforms), and the object's articulation and rigid pose (object -> world)."""

    hand_transforms: dict[str, torch.Tensor] = field(default_factory=dict)
    object_rotation: torch.Tensor = field(default_factory=lambda: torch.eye(3))
    object_translation: torch.Tensor = field(default_factory=lambda: torch.zeros(3))
    articulation: float = 0.0


@dataclass
class Camera:
    K: torch.Tensor  # (3, 3)
    R: torch.Tensor  # (3, 3) world -> camera
    t: torch.Tensor  # (3,)
    width: int
    height: int

    @property
    def viewmat(self) -> torch.Tensor:
        view = torch.eye(4, dtype=self.R.dtype)
        view[:3, :3], view[:3, 3] = self.R, self.t
        return view


class HOGS(PretrainedMixin, nn.Module):
    def __init__(self, hand_vertices: dict[str, torch.Tensor], hand_faces: dict[str, torch.Tensor],
                 lbs_weights: dict[str, torch.Tensor], object_vertices: torch.Tensor, object_faces: torch.Tensor,
                 object_part: torch.Tensor | None = None, articulation_axis: torch.Tensor | None = None,
                 per_face: int = 2, sh_degree: int = 1):
        """hand_vertices: per side the shaped rest mesh (V, 3) whose bone transforms the frames give;
        object_part (V_o,) bool and articulation_axis (2, 3) origin + direction, for articulated objects."""
        super().__init__()
        self.per_face, self.sh_degree = per_face, sh_degree
        self.actors = nn.ModuleDict({side: MeshGaussians(hand_vertices[side], hand_faces[side], per_face, sh_degree)
                                     for side in HANDS})
        self.actors["object"] = MeshGaussians(object_vertices, object_faces, per_face, sh_degree)
        for side in HANDS:
            self.register_buffer(f"{side}_lbs_weights", torch.as_tensor(lbs_weights[side], dtype=torch.float32))
        for actor, model in self.actors.items():  # L_R's faces around each vertex, found once, not every step
            self.register_buffer(f"{actor}_incident", incident_faces(model.faces, len(model.rest_vertices)),
                                 persistent=False)
        part = torch.zeros(len(object_vertices), dtype=torch.bool) if object_part is None else object_part.bool()
        self.register_buffer("object_part", part)
        self.register_buffer("articulation_axis", torch.zeros(2, 3) if articulation_axis is None
                             else torch.as_tensor(articulation_axis, dtype=torch.float32))

    # -- posing --------------------------------------------------------------------------------------------
    def posed_vertices(self, actor: str, pose: ScenePose, refined: bool = True) -> torch.Tensor:
        """The actor's mesh vertices in `pose`: the refined canonical mesh the Gaussians sit on, or with
        `refined=False` the input mesh (no learned offsets). Exact geometry (signed distances, contact, boxes) wants
        the latter: the offsets can fold small faces over, and a folded surface turns the sign of the distance."""
        actor_model = self.actors[actor]
        canonical = actor_model.canonical_vertices() if refined else actor_model.rest_vertices
        if actor in HANDS:
            blended = torch.einsum("vj,jab->vab", getattr(self, f"{actor}_lbs_weights"),
                                   pose.hand_transforms[actor].to(canonical))
            return (blended[:, :3, :3] @ canonical[:, :, None])[:, :, 0] + blended[:, :3, 3]
        if pose.articulation and self.object_part.any():
            origin, direction = self.articulation_axis
            turn = roma.rotvec_to_rotmat(direction / direction.norm() * pose.articulation).to(canonical)
            moved = (canonical - origin) @ turn.T + origin
            canonical = torch.where(self.object_part[:, None], moved, canonical)
        return canonical @ pose.object_rotation.to(canonical).T + pose.object_translation.to(canonical)

    def splats(self, pose: ScenePose, camera_centre: torch.Tensor, actors=ACTORS) -> dict[str, torch.Tensor]:
        """The rasterizer's arguments (means, quats, scales, opacities, colours seen from `camera_centre`) of
        every Gaussian drawn, and `actor`: its index in ACTORS."""
        parts = []
        for actor in actors:
            if actor in HANDS and actor not in pose.hand_transforms:
                continue  # that hand is not in this frame
            splats = self.actors[actor].splats(camera_centre, self.posed_vertices(actor, pose))
            parts.append({**splats, "actor": torch.full((len(splats["means"]),), ACTORS.index(actor),
                                                        device=splats["means"].device)})
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

    def render(self, camera: Camera, pose: ScenePose, actors=ACTORS, labels: bool = False,
               background: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """image (H, W, 3) over `background` (black), alpha, depth; with `labels`, also `coverage` (H, W, 3):
        how much of each pixel each actor (left, right, object) covers."""
        viewmat = camera.viewmat
        splats = self.splats(pose, -viewmat[:3, :3].T @ viewmat[:3, 3], actors)
        actor, colors = splats.pop("actor"), splats.pop("colors")
        out = rasterize_gaussians(**splats, colors=colors, viewmat=viewmat.to(colors), K=camera.K.to(colors),
                                  width=camera.width, height=camera.height, background=background,
                                  features=LABEL_COLOURS.to(colors)[actor] if labels else None)  # one pass
        if labels:
            out["coverage"] = out.pop("features")
        return out

    def regularization(self) -> torch.Tensor:
        """L_R (appendix Eq. 9): mean distance of the canonical vertices from the initial meshes."""
        return torch.stack([distance_to_initial_mesh(model.canonical_vertices(), model.rest_vertices, model.faces,
                                                     getattr(self, f"{actor}_incident"))
                            for actor, model in self.actors.items()]).mean()

    # -- persistence -----------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"per_face": self.per_face, "sh_degree": self.sh_degree,
                **{actor: self.actors[actor].config() for actor in ACTORS}}

    def to_bytes(self) -> bytes:
        return safetensors_bytes(self.state_dict(), metadata={"config": json.dumps(self.config())})

    @classmethod
    def from_bytes(cls, data: bytes) -> HOGS:
        """The model in eval mode, its meshes taken from the weights."""
        import safetensors.torch

        state = safetensors.torch.load(data)
        config = json.loads(safetensors_metadata(data)["config"])
        model = cls({s: state[f"actors.{s}.rest_vertices"] for s in HANDS},
                     {s: state[f"actors.{s}.faces"] for s in HANDS},
                     {s: state[f"{s}_lbs_weights"] for s in HANDS},
                     state["actors.object.rest_vertices"], state["actors.object.faces"],
                     per_face=config["per_face"], sh_degree=config["sh_degree"])
        model.load_state_dict(state)
        return model.eval()
