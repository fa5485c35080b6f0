"""Fitting a HOGS model to a sequence's calibrated images (HOGSA section 3.2, Eq. 6).

Views are (image, camera, scene pose) triples with an optional foreground mask (hands and object); each step
renders one view with all three actors and minimizes L_HOGS = (1 - 0.2) L1 + 0.2 (1 - SSIM) + 0.5 L_R over the
mesh offsets, barycentric weights, scales, SH colours and opacities. As in the paper, only hands and object are
fitted: a masked view's target is its photo inside the mask composited on the render's (black) background, so the
photometric terms compare photo and render inside the mask and push the Gaussians off the rest (the room, the
body, the forearms). Object colours learn from the object's own visible pixels only (`fit_render`): otherwise
the object Gaussians under the fingers take the hand's colour where they show through at the hand's edges, and
the object-only renders (HO3Pairs' truth) come out stained. Colours start from the targets: every face takes
the mean colour of the pixels where a z-buffer of the posed meshes shows it, a face never seen (e.g. under the
fingers, where its colour gets no gradient either) the nearest seen face's, so the fit refines rather than
discovers colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree

from models.gaussians.fit import LAMBDA_R, LAMBDA_SSIM, LearningRates
from models.gaussians.render import rasterize_gaussians
from models.gaussians.ssim import ssim
from models.hogsa.hogs import ACTORS, HANDS, HOGS, Camera, ScenePose
from models.render.raster import rasterize


@dataclass
class View:
    image: torch.Tensor  # (H, W, 3) float in [0, 1]: the photo
    camera: Camera
    pose: ScenePose
    mask: torch.Tensor | None = None  # (H, W) bool: hands and object; None fits the whole photo
    object_mask: torch.Tensor | None = None  # (H, W) bool: the object's visible pixels (None: no such limit)

    @property
    def target(self) -> torch.Tensor:
        """What the render should reproduce: the photo inside the mask, black (the render's background) outside."""
        return self.image if self.mask is None else torch.where(self.mask[..., None], self.image, 0.0)


def hogs_loss(model: HOGS, rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    l1 = (rendered - target).abs().mean()
    return (1 - LAMBDA_SSIM) * l1 + LAMBDA_SSIM * (1 - ssim(rendered, target)) + LAMBDA_R * model.regularization()


def fit_render(model: HOGS, view: View) -> torch.Tensor:
    """The (H, W, 3) render the loss compares. With an object mask, the object's colours reach the loss only
    through the object's visible pixels: they enter the image detached, and a zero-valued extra channel (the
    colours minus themselves detached) carries their gradient, masked. Image values and every other gradient are
    the plain render's (the channel's zero value adds none to the geometry)."""
    if view.object_mask is None:
        return model.render(view.camera, view.pose)["image"]
    camera = view.camera
    viewmat = camera.viewmat
    splats = model.splats(view.pose, -viewmat[:3, :3].T @ viewmat[:3, 3])
    on_object = (splats.pop("actor") == ACTORS.index("object"))[:, None]
    colors = splats.pop("colors")
    out = rasterize_gaussians(**splats, colors=torch.where(on_object, colors.detach(), colors),
                              viewmat=viewmat.to(colors), K=camera.K.to(colors), width=camera.width,
                              height=camera.height, features=torch.where(on_object, colors - colors.detach(), 0.0))
    return out["image"] + view.object_mask[..., None] * out["features"]


@torch.no_grad()
def initialize_colours(model: HOGS, views: list[View]) -> None:
    """Each face's mean colour over the pixels where it is the visible surface, for every actor."""
    sums = {actor: torch.zeros(len(model.actors[actor].faces), 3) for actor in ACTORS}
    counts = {actor: torch.zeros(len(model.actors[actor].faces)) for actor in ACTORS}
    for view in views:
        vertices, faces, owners, offset = [], [], [], 0
        for actor in ACTORS:
            if actor in HANDS and actor not in view.pose.hand_transforms:
                continue
            posed = model.posed_vertices(actor, view.pose)
            vertices.append(posed)
            faces.append(model.actors[actor].faces + offset)
            owners += [(actor, len(model.actors[actor].faces))]
            offset += len(posed)
        world = torch.cat(vertices).detach().cpu().double().numpy()
        camera = view.camera
        cam = world @ camera.R.double().numpy().T + camera.t.double().numpy()
        _, face_index = rasterize(cam, torch.cat(faces).cpu().numpy(), camera.K.double().numpy(), camera.width,
                                  camera.height)
        seen = face_index >= 0
        hit, colours = torch.from_numpy(face_index[seen]), view.target.cpu()[torch.from_numpy(seen)]
        start = 0
        for actor, count in owners:
            mine = (hit >= start) & (hit < start + count)
            sums[actor].index_add_(0, hit[mine] - start, colours[mine])
            counts[actor].index_add_(0, hit[mine] - start, torch.ones(int(mine.sum())))
            start += count
    for actor in ACTORS:
        seen = counts[actor] > 0
        colour = torch.full((len(seen), 3), 0.5)
        colour[seen] = sums[actor][seen] / counts[actor][seen, None]
        if seen.any() and not seen.all():  # a hidden face (under the fingers) continues the nearest seen surface
            centres = model.actors[actor].rest_vertices[model.actors[actor].faces].mean(1).cpu().numpy()
            _, nearest = cKDTree(centres[seen.numpy()]).query(centres[~seen.numpy()])
            colour[~seen] = colour[seen][torch.as_tensor(nearest)]
        model.actors[actor].set_colors(colour.repeat_interleave(model.per_face, 0))


def fit_hogs(model: HOGS, views: list[View], iterations: int, seed: int = 0, rates: LearningRates = LearningRates(),
             progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Fits in place; returns the loss per iteration. Views are drawn in a seeded random order."""
    if not views:
        raise ValueError("fit_hogs needs at least one view with an image")
    initialize_colours(model, views)
    optimizer = torch.optim.Adam([
        {"params": [m.vertex_offsets],
         "lr": rates.vertex_offset * float(np.ptp(m.rest_vertices.cpu().numpy(), 0).max())}
        for m in model.actors.values()] + [
        {"params": [getattr(m, name) for m in model.actors.values()], "lr": lr}
        for name, lr in (("barycentric_logits", rates.barycentric), ("log_scale_multipliers", rates.scale),
                         ("opacity_logits", rates.opacity), ("sh_dc", rates.sh_dc), ("sh_rest", rates.sh_rest))
        if getattr(model.actors["object"], name).numel()], eps=1e-15)
    order = np.random.default_rng(seed).integers(0, len(views), iterations)
    losses = []
    for step, index in enumerate(order):
        view = views[index]
        loss = hogs_loss(model, fit_render(model, view), view.target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    return losses
