"""Fitting mesh-bound Gaussians to calibrated images of one instance (HOGS training, HOGSA eq. 6 and appendix 1.1).

Loss: (1 - 0.2) L1 + 0.2 (1 - SSIM) + 0.5 L_R, with Adam, one training view per step, as the paper sets it.
L_R is what keeps the geometry honest: the canonical mesh vertices are trainable (`MeshGaussians.vertex_offsets`),
and L_R = mean over vertices of the distance (mesh units, metres) from the refined vertex to the initial mesh.
The distance is taken to the vertex's initial incident faces, which equals the distance to the whole mesh for
the small moves this allows and never underestimates it. Everything else the paper trains is trained too:
barycentric logits, scale multipliers, SH colours and opacities.

Initial colours: every Gaussian starts at the mean colour of the training pixels its centre projects to where
it is visible (a z-buffer of the mesh per training view), which a fit of real images can do just the same.
Views with a mask are fitted over the renderer's background colour outside the mask (one instance per model).
Views of several frames (a moving object, a skinned hand) are fitted through `deform`, which places the canonical
mesh in each view's frame; only the canonical mesh and the Gaussians' own parameters are trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from models.gaussians.mesh_gaussians import MeshGaussians
from models.gaussians.ssim import psnr, ssim
from models.render.camera import project
from models.render.raster import rasterize

LAMBDA_SSIM, LAMBDA_R = 0.2, 0.5


class FitView(NamedTuple):
    """One calibrated training image; x_cam = R x + t, pixels = K x_cam (OpenCV)."""
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) bool: the instance's pixels, or None when the whole image is the instance
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray


@dataclass
class LearningRates:
    """Adam step sizes per parameter group: 3DGS's (Kerbl et al. 2023) for SH, opacity, scale, and its position
    step (times the mesh's bounding-box diagonal) for the vertex offsets; barycentric logits have no 3DGS
    counterpart."""
    sh_dc: float = 2.5e-3
    sh_rest: float = 2.5e-3 / 20
    opacity: float = 0.05
    scale: float = 5e-3
    barycentric: float = 0.01
    vertex_offset: float = 1.6e-4


@dataclass
class FitResult:
    model: MeshGaussians
    psnr: list[float]  # per training view, after the fit
    ssim: list[float]
    losses: list[float] = field(default_factory=list)  # per step


Deform = Callable[[int, torch.Tensor], torch.Tensor]


def fit_mesh_gaussians(mesh_vertices, faces, views: Sequence[FitView | tuple], iterations: int = 3000,
                       per_face: int = 2, sh_degree: int = 3, background=(0.0, 0.0, 0.0),
                       learning_rates: LearningRates = LearningRates(), optimize_vertices: bool = True,
                       deform: Deform | None = None, progress: Callable[[int, int, float], None] | None = None,
                       seed: int = 0, device: str | torch.device = "cpu") -> FitResult:
    """Fit `MeshGaussians` on the canonical mesh (vertices (V, 3), faces (F, 3)) to the views.

    `deform(view_index, canonical_vertices) -> (V, 3)` places the mesh in a view's world frame, differentiably:
    the frame's rigid pose for an object, MANO skinning for a hand; by default the mesh is static in the views'
    world frame. `progress(step, iterations, loss)` is called after every step. On a CUDA `device` the render
    uses gsplat when it is installed."""
    views = [_checked(FitView(*view), i) for i, view in enumerate(views)]
    if not views:
        raise ValueError("fit_mesh_gaussians needs at least one view")
    deform = deform or _static
    initial = torch.as_tensor(np.asarray(mesh_vertices), dtype=torch.float32)
    faces = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    model = MeshGaussians(initial, faces, per_face, sh_degree)
    model.set_colors(initial_colors(model, views, deform))
    model = model.to(device)
    model.vertex_offsets.requires_grad_(optimize_vertices)
    background = torch.as_tensor(background, dtype=torch.float32, device=device)
    targets = [_target(view, background) for view in views]
    initial, faces = initial.to(device), faces.to(device)
    incident = incident_faces(faces, len(initial))
    extent = float((initial.max(0).values - initial.min(0).values).norm())
    rates = learning_rates
    groups = [(model.vertex_offsets, rates.vertex_offset * extent), (model.barycentric_logits, rates.barycentric),
              (model.log_scale_multipliers, rates.scale), (model.opacity_logits, rates.opacity),
              (model.sh_dc, rates.sh_dc), (model.sh_rest, rates.sh_rest)]
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in groups if p.requires_grad and p.numel()],
                                 eps=1e-15)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(iterations):
        if step % len(views) == 0:  # every view once per epoch, in a fresh order
            order = torch.randperm(len(views), generator=generator).tolist()
        index = order[step % len(views)]
        image = render_view(model, views[index], background, deform(index, model.canonical_vertices()))
        loss = ((1 - LAMBDA_SSIM) * (image - targets[index]).abs().mean()
                + LAMBDA_SSIM * (1 - ssim(image, targets[index]))
                + LAMBDA_R * distance_to_initial_mesh(model.canonical_vertices(), initial, faces, incident))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, iterations, losses[-1])
    psnrs, ssims = evaluate_views(model, views, background, deform)
    return FitResult(model.eval(), psnrs, ssims, losses)


def render_view(model: MeshGaussians, view: FitView, background: torch.Tensor, vertices: torch.Tensor | None = None,
                **options) -> torch.Tensor:
    """The model's image (H, W, 3) in the view's camera (vertices: posed ones, default canonical)."""
    height, width = view.image.shape[:2]
    viewmat = torch.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = torch.as_tensor(view.R), torch.as_tensor(view.t)
    return model.render(viewmat, torch.as_tensor(view.K), width, height, vertices, background, **options)["image"]


@torch.no_grad()
def evaluate_views(model: MeshGaussians, views: Sequence[FitView | tuple], background=(0.0, 0.0, 0.0),
                   deform: Deform | None = None, **options) -> tuple[list[float], list[float]]:
    """PSNR and SSIM of the model's render against each view (masked views over `background`)."""
    background = torch.as_tensor(background, dtype=torch.float32)
    deform = deform or _static
    scores = []
    for i, view in enumerate(views):
        view = _checked(FitView(*view), i)
        vertices = deform(i, model.canonical_vertices())
        image = render_view(model, view, background, vertices, **options).clamp(0, 1)
        target = _target(view, background.to(image.device))
        scores.append((psnr(image, target), float(ssim(image, target))))
    return [p for p, _ in scores], [s for _, s in scores]


@torch.no_grad()
def initial_colors(model: MeshGaussians, views: Sequence[FitView], deform: Deform | None = None) -> torch.Tensor:
    """(N, 3) in [0, 1]: each Gaussian's mean colour over the training pixels its centre projects to where
    it is the visible surface (z-buffer depth within an edge length) and not on a silhouette edge (those
    pixels are part background); grey for Gaussians no view sees."""
    deform, faces = deform or _static, model.faces.numpy()
    canonical = model.canonical_vertices().numpy()
    tolerance = float(np.linalg.norm(canonical[faces[:, 1]] - canonical[faces[:, 0]], axis=1).mean())
    sums, counts = np.zeros((model.num_gaussians, 3)), np.zeros(model.num_gaussians)
    for index, view in enumerate(views):
        posed = deform(index, model.canonical_vertices()).cpu()
        vertices, means = posed.numpy(), model.gaussians(posed)[0].numpy()
        height, width = view.image.shape[:2]
        depth, face_index = rasterize(vertices @ view.R.T + view.t, faces, view.K, width, height)
        covered = face_index >= 0 if view.mask is None else (face_index >= 0) & view.mask
        interior = covered.copy()
        interior[1:] &= covered[:-1]
        interior[:-1] &= covered[1:]
        interior[:, 1:] &= covered[:, :-1]
        interior[:, :-1] &= covered[:, 1:]
        x, y, z = project(means, view.K, view.R, view.t).T
        column, row = np.floor(x).astype(int), np.floor(y).astype(int)
        seen = (z > 0) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
        seen[seen] &= interior[row[seen], column[seen]] & (depth[row[seen], column[seen]] > z[seen] - tolerance)
        sums[seen] += view.image[row[seen], column[seen]] / 255.0
        counts[seen] += 1
    return torch.as_tensor(np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.5),
                           dtype=torch.float32)


def distance_to_initial_mesh(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor,
                             incident: torch.Tensor | None = None) -> torch.Tensor:
    """L_R: mean distance from each refined vertex (`points`, (V, 3)) to its initial incident faces
    (`incident_faces(faces, V)`, computed when not given)."""
    incident = incident_faces(faces, len(vertices)) if incident is None else incident
    triangles = vertices[faces[incident.clamp_min(0)]]  # (V, most incident faces, 3, 3)
    distances = _point_triangle_distance(points[:, None, :].expand(-1, incident.shape[1], -1), *triangles.unbind(2))
    distances = torch.where(incident >= 0, distances, torch.full_like(distances, torch.inf)).min(1).values
    return torch.where(torch.isfinite(distances), distances, torch.zeros_like(distances)).mean()


def _point_triangle_distance(p, a, b, c):
    """Distance from points to triangles (all (..., 3)): to the plane when the foot point is inside the
    triangle, else to the nearest edge. Square roots are clamped so the gradient at distance 0 is 0, not NaN."""
    ab, ac, ap = b - a, c - a, p - a
    d00, d01, d11 = (ab * ab).sum(-1), (ab * ac).sum(-1), (ac * ac).sum(-1)
    d20, d21 = (ap * ab).sum(-1), (ap * ac).sum(-1)
    denominator = (d00 * d11 - d01 * d01).clamp_min(1e-30)
    v, w = (d11 * d20 - d01 * d21) / denominator, (d00 * d21 - d01 * d20) / denominator
    inside = (v >= 0) & (w >= 0) & (v + w <= 1)
    normal = torch.cross(ab, ac, dim=-1)
    plane = (ap * normal).sum(-1).abs() / normal.norm(dim=-1).clamp_min(1e-30)

    def to_segment(start, end):
        direction, offset = end - start, p - start
        along = ((offset * direction).sum(-1) / (direction * direction).sum(-1).clamp_min(1e-30)).clamp(0, 1)
        return ((offset - along[..., None] * direction) ** 2).sum(-1).clamp_min(1e-20).sqrt()

    edges = torch.minimum(torch.minimum(to_segment(a, b), to_segment(b, c)), to_segment(c, a))
    return torch.where(inside, plane, edges)


def incident_faces(faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """(V, most incident faces) face ids around each vertex, padded with -1."""
    vertex = faces.reshape(-1)
    face = torch.arange(len(faces), device=faces.device).repeat_interleave(3)
    order = torch.argsort(vertex, stable=True)
    vertex, face = vertex[order], face[order]
    counts = torch.bincount(vertex, minlength=num_vertices)
    slot = torch.arange(len(vertex), device=faces.device) - (torch.cumsum(counts, 0) - counts)[vertex]
    incident = torch.full((num_vertices, int(counts.max()) if len(vertex) else 0), -1, device=faces.device)
    incident[vertex, slot] = face
    return incident


def _static(index: int, vertices: torch.Tensor) -> torch.Tensor:
    return vertices


def _target(view: FitView, background: torch.Tensor) -> torch.Tensor:
    image = torch.as_tensor(view.image, dtype=torch.float32, device=background.device) / 255
    if view.mask is None:
        return image
    mask = torch.as_tensor(view.mask, dtype=torch.float32, device=background.device)[..., None]
    return image * mask + background * (1 - mask)


def _checked(view: FitView, index: int) -> FitView:
    image = np.asarray(view.image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"view {index}: image must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    if view.mask is not None and np.shape(view.mask) != image.shape[:2]:
        raise ValueError(f"view {index}: mask {np.shape(view.mask)} does not match image {image.shape[:2]}")
    if np.shape(view.K) != (3, 3) or np.shape(view.R) != (3, 3) or np.shape(view.t) != (3,):
        raise ValueError(f"view {index}: K and R must be (3, 3) and t (3,)")
    mask = None if view.mask is None else np.asarray(view.mask, dtype=bool)
    return FitView(image, mask, *(np.asarray(x, dtype=np.float64) for x in (view.K, view.R, view.t)))
