"""Fitting a HOGS model to a sequence's calibrated images (HOGSA section 3.2, Eq. 6).

Views are (image, camera, scene pose) triples; each step renders one view with all three actors and minimizes
L_HOGS = (1 - 0.2) L1 + 0.2 (1 - SSIM) + 0.5 L_R over the mesh offsets, barycentric weights, scales, SH colours
and opacities. Colours start from the images: every face takes the mean colour of the pixels where a z-buffer
of the posed meshes shows it (faces never seen start grey), so the fit refines rather than discovers colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from models.gaussians.fit import LAMBDA_R, LAMBDA_SSIM, LearningRates
from models.gaussians.ssim import ssim
from models.hogsa.hogs import ACTORS, HANDS, HOGS, Camera, ScenePose
from models.render.raster import rasterize


@dataclass
class View:
    image: torch.Tensor  # (H, W, 3) float in [0, 1]
    camera: Camera
    pose: ScenePose


def hogs_loss(model: HOGS, rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    l1 = (rendered - target).abs().mean()
    return (1 - LAMBDA_SSIM) * l1 + LAMBDA_SSIM * (1 - ssim(rendered, target)) + LAMBDA_R * model.regularization()


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
        hit, colours = torch.from_numpy(face_index[seen]), view.image.cpu()[torch.from_numpy(seen)]
        start = 0
        for actor, count in owners:
            mine = (hit >= start) & (hit < start + count)
            sums[actor].index_add_(0, hit[mine] - start, colours[mine])
            counts[actor].index_add_(0, hit[mine] - start, torch.ones(int(mine.sum())))
            start += count
    for actor in ACTORS:
        colour = torch.where(counts[actor][:, None] > 0, sums[actor] / counts[actor].clamp_min(1)[:, None], 0.5)
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
        rendered = model.render(view.camera, view.pose)["image"]
        loss = hogs_loss(model, rendered, view.image)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    return losses
