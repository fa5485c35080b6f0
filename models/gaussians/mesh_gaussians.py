"""Mesh-bound Gaussians (GaMeS, Waczynska et al. 2024, as HOGSA section 3.2 and its appendix 1.1 use them).

k Gaussians sit on every triangle of a mesh and are rebuilt from the triangle's current vertices each time:
- centre: barycentric combination of the three vertices, weights = softmax of trainable logits (sum to 1);
- rotation: columns r1 = face normal, r2 = direction from the face centroid m to v1, r3 = r1 x r2;
- scales: along r2 ||v1 - m||, along r3 |<v2 - m, r3>|, each times a trainable multiplier (log-space);
  along the normal a fixed small fraction of the in-plane size, so the Gaussians stay flat on the surface.
Because everything is rebuilt from vertices, any deformation of the mesh moves, turns and stretches the
Gaussians with it: pass MANO-skinned vertices for a hand, rigidly transformed vertices for an object.

Colour: per-Gaussian SH coefficients, evaluated for the view direction expressed in the Gaussian's face frame
(not the world frame as in 3DGS), so view-dependent appearance moves with the surface in novel poses.

Trainable too (as in the paper): the SH coefficients and opacity logits, and per-vertex offsets
of the canonical mesh (`canonical_vertices()` = rest vertices + offsets; a fit keeps them near the initial mesh
with L_R). Saved and loaded by `save_pretrained` / `from_pretrained` (models/pretrained.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.gaussians.projection import matrix_to_quaternion
from models.gaussians.render import rasterize_gaussians
from models.gaussians.spherical_harmonics import rgb_to_sh_dc, sh_to_rgb
from models.pretrained import PretrainedMixin

NORMAL_SCALE = 0.01  # thickness along the normal, as a fraction of the in-plane scale
MIN_SCALE = 1e-7  # metres: keeps degenerate (zero-area) faces from producing zero or NaN scales
# Initial barycentric positions of the k Gaussians of a face: the centroid for k = 1, else halfway from the
# centroid to each vertex, then to each edge midpoint, then the centroid itself.
_THIRD, _NEAR, _FAR = 1 / 3, 2 / 3, 1 / 6
INITIAL_BARYCENTRICS = [
    (_NEAR, _FAR, _FAR), (_FAR, _NEAR, _FAR), (_FAR, _FAR, _NEAR),
    (5 / 12, 5 / 12, 1 / 6), (1 / 6, 5 / 12, 5 / 12), (5 / 12, 1 / 6, 5 / 12), (_THIRD, _THIRD, _THIRD)]


class MeshGaussians(PretrainedMixin, nn.Module):
    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor, per_face: int = 2, sh_degree: int = 3,
                 initial_opacity: float = 0.9, initial_scale: float | None = None):
        """vertices (V, 3) float: the canonical (rest) mesh; faces (F, 3) int. `initial_scale` multiplies the
        GaMeS face scales; by default 0.6 / sqrt(k), so that the k Gaussians of a face together cover it."""
        super().__init__()
        if not 1 <= per_face <= len(INITIAL_BARYCENTRICS):
            raise ValueError(f"per_face must be 1..{len(INITIAL_BARYCENTRICS)}, got {per_face}")
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3, got {sh_degree}")
        vertices = torch.as_tensor(vertices, dtype=torch.float32)
        faces = torch.as_tensor(faces, dtype=torch.long)
        if vertices.dim() != 2 or vertices.shape[1] != 3 or faces.dim() != 2 or faces.shape[1] != 3:
            raise ValueError(f"vertices must be (V, 3) and faces (F, 3), got {tuple(vertices.shape)} and "
                             f"{tuple(faces.shape)}")
        if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ValueError(f"faces must index vertices 0..{len(vertices) - 1}, found "
                             f"{int(faces.min())}..{int(faces.max())}")
        self.per_face, self.sh_degree = per_face, sh_degree
        count = len(faces) * per_face
        self.register_buffer("rest_vertices", vertices)
        self.register_buffer("faces", faces)
        self.vertex_offsets = nn.Parameter(torch.zeros_like(vertices))
        chosen = INITIAL_BARYCENTRICS[-1:] if per_face == 1 else INITIAL_BARYCENTRICS[:per_face]
        self.barycentric_logits = nn.Parameter(torch.tensor(chosen).log().expand(len(faces), -1, -1).clone())
        scale = initial_scale if initial_scale is not None else 0.6 / math.sqrt(per_face)
        self.log_scale_multipliers = nn.Parameter(torch.full((len(faces), per_face, 2), math.log(scale)))
        # SH colour: the view-independent term and the rest apart, as gsplat's sh0 / shN (they train at different rates)
        self.sh_dc = nn.Parameter(torch.zeros(count, 1, 3))
        self.sh_rest = nn.Parameter(torch.zeros(count, (sh_degree + 1) ** 2 - 1, 3))
        self.opacity_logits = nn.Parameter(torch.full((count,), math.log(initial_opacity / (1 - initial_opacity))))

    @property
    def num_gaussians(self) -> int:
        return self.sh_dc.shape[0]

    @property
    def sh(self) -> torch.Tensor:
        """(N, (degree + 1)^2, 3) SH coefficients, for directions in each face's frame (see `colors`)."""
        return torch.cat([self.sh_dc, self.sh_rest], 1)

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    def set_colors(self, rgb: torch.Tensor) -> None:
        """Start every Gaussian at a view-independent colour ((N, 3) in [0, 1])."""
        with torch.no_grad():
            self.sh_rest.zero_()
            self.sh_dc[:, 0] = rgb_to_sh_dc(rgb.to(self.sh_dc))

    def canonical_vertices(self) -> torch.Tensor:
        """The refined canonical mesh: pose these (skinning, rigid transform) and pass them to `gaussians`."""
        return self.rest_vertices + self.vertex_offsets

    def gaussians(self, vertices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """means (N, 3), quats (N, 4) w-x-y-z, scales (N, 3) for the mesh with these (posed) vertices
        (default: the canonical ones). Gaussian i lives on face i // per_face."""
        means, axes, scales = self._geometry(vertices)
        return means, self._quaternions(axes), scales

    def colors(self, camera_centre: torch.Tensor, vertices: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3) RGB seen from `camera_centre` (world). The SH are evaluated in each face's own frame, so that
        view-dependent colour turns with the surface under any deformation (rigid pose, skinning)."""
        means, axes, _ = self._geometry(vertices)
        return self._colors(means, axes, camera_centre)

    def splats(self, camera_centre: torch.Tensor, vertices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """means, quats, scales, opacities and colors (seen from `camera_centre`): the arguments of
        `rasterize_gaussians`. To render several models together, concatenate theirs and rasterize once."""
        means, axes, scales = self._geometry(vertices)
        return {"means": means, "quats": self._quaternions(axes), "scales": scales, "opacities": self.opacities,
                "colors": self._colors(means, axes, camera_centre.to(means))}

    def render(self, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
               vertices: torch.Tensor | None = None, background: torch.Tensor | None = None, **options
               ) -> dict[str, torch.Tensor]:
        """This model alone in one camera (`rasterize_gaussians`' outputs)."""
        viewmat = viewmat.to(self.rest_vertices)
        splats = self.splats(-viewmat[:3, :3].T @ viewmat[:3, 3], vertices)
        return rasterize_gaussians(**splats, viewmat=viewmat, K=K.to(viewmat), width=width, height=height,
                                   background=background, **options)

    def _geometry(self, vertices: torch.Tensor | None):
        """means (N, 3), face frames (F, 3, 3) (columns: normal, towards v1, their cross product), scales (N, 3)."""
        vertices = self.canonical_vertices() if vertices is None else vertices
        if vertices.shape != self.rest_vertices.shape:
            raise ValueError(f"vertices must be {tuple(self.rest_vertices.shape)}, got {tuple(vertices.shape)}")
        triangles = vertices[self.faces]  # (F, 3 vertices, 3)
        weights = torch.softmax(self.barycentric_logits, -1)  # (F, k, 3)
        means = torch.einsum("fkv,fvc->fkc", weights, triangles).reshape(-1, 3)
        v1, v2, v3 = triangles.unbind(1)
        centroid = triangles.mean(1)
        normal = F.normalize(torch.cross(v2 - v1, v3 - v1, dim=-1), dim=-1)
        to_first = v1 - centroid
        r2 = F.normalize(to_first - (to_first * normal).sum(-1, keepdim=True) * normal, dim=-1)
        r3 = torch.cross(normal, r2, dim=-1)
        in_plane = torch.stack([to_first.norm(dim=-1), ((v2 - centroid) * r3).sum(-1).abs()], -1).clamp_min(MIN_SCALE)
        planar = in_plane[:, None, :] * self.log_scale_multipliers.exp()  # (F, k, 2)
        thickness = NORMAL_SCALE * planar.min(-1, keepdim=True).values
        return means, torch.stack([normal, r2, r3], -1), torch.cat([thickness, planar], -1).reshape(-1, 3)

    def _quaternions(self, axes: torch.Tensor) -> torch.Tensor:
        return matrix_to_quaternion(axes).repeat_interleave(self.per_face, 0)

    def _colors(self, means: torch.Tensor, axes: torch.Tensor, camera_centre: torch.Tensor) -> torch.Tensor:
        directions = (means - camera_centre).reshape(len(axes), self.per_face, 3)
        local = torch.einsum("fji,fkj->fki", axes, directions).reshape(-1, 3)  # axes^T d, per face
        return sh_to_rgb(self.sh, local)

    def config(self) -> dict:
        """What HOGS's dataset-row blob records of each of its meshes (models/hogsa/hogs.py)."""
        return {"num_vertices": len(self.rest_vertices), "num_faces": len(self.faces), "per_face": self.per_face,
                "sh_degree": self.sh_degree}
