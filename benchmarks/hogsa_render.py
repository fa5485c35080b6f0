"""HOGS rendering speed: milliseconds per 224x224 image (forward only; and a fitting step's render with its
backward pass, below) for 10k and 50k mesh-bound Gaussians,
against the paper's 0.06 s per augmented image (HOGSA, Qu et al. 2025, on an RTX 4090, which includes its
super-resolution and compositing; the render is only a part of it).

Scene: MeshGaussians (2 per face, SH degree 3 with random view-dependent colours) on a torus that fills most
of the crop, seen from several orbit cameras, so that splats overlap and occlude as on a hand-object crop.
Backends: the pure-torch CPU rasterizer always, and beside it `main_rasterize_torch`, a copy of the torch
rasterizer it replaced (one global (pixel, depth) sort of all pairs, coverage labels in a second pass), kept here
as the baseline of the speed-up; gsplat on CUDA when both are available.

Each (backend, scene) is set up and warmed up once, then measured interleaved and repeated (10k, 50k, 10k,
...). The torch CPU renders are single-process CPU work: measured in CPU time of this process
(`time.process_time`) with `--threads` torch threads (default 1, so no thread waits at a barrier while
counted); gsplat on CUDA in synchronized wall time. Printed: ms per image (median, min-max) and ratios of
medians (vs the paper's 60 ms, 50k vs 10k, main's torch rasterizer vs this one). The `labels_10k` runs add
the per-actor coverage render that every augmented image needs (HOGS.render(labels=True)). The
`fit_step_10k_96px` run times what a HOGS fitting step spends in the renderer: a 96x96 render of the 10k scene
with gradients and its backward pass (main's baseline is forward-only, so it has no such run).
The baseline shares this module's projection (models/gaussians/projection.py), which got faster too, so the
ratios understate the speed-up over main slightly.

    python -m benchmarks.hogsa_render [--views 8] [--threads 1] [--repeats 3]
        [--out benchmarks/results/hogsa_render.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh

from benchmarks.results_table import interleaved, median, show_and_save
from models.gaussians.mesh_gaussians import MeshGaussians
from models.gaussians.projection import ALPHA_THRESHOLD, MAX_ALPHA, project
from models.gaussians.render import TRANSMITTANCE_STOP, rasterize_gaussians
from models.gaussians.spherical_harmonics import sh_to_rgb
from models.render.camera import intrinsics, orbit_camera

PAPER_SECONDS_PER_IMAGE = 0.06
SIZE = 224
FIT_SIZE = 96  # the HOGS fit's image side (tasks/hogsa/hogs_models.py)
# Gaussians -> torus sections (major, minor): 2 x major x minor faces, 2 Gaussians per face
SCENES = {"10k": (50, 50), "50k": (125, 100)}


def scene(sections: tuple[int, int], device: str):
    torus = trimesh.creation.torus(0.07, 0.03, major_sections=sections[0], minor_sections=sections[1])
    model = MeshGaussians(torch.tensor(torus.vertices), torch.tensor(torus.faces), per_face=2, sh_degree=3)
    with torch.no_grad():
        model.sh_dc.uniform_(-1, 1)
        model.sh_rest.normal_(0, 0.1)
        means, quats, scales = model.gaussians()
    return [x.to(device) for x in (means, quats, scales, model.opacities.detach(), model.sh.detach())]


def cameras(count: int, device: str):
    K = torch.tensor(intrinsics(SIZE, SIZE), dtype=torch.float32, device=device)
    views = []
    for azimuth in np.linspace(0, 360, count, endpoint=False):
        rotation, translation = orbit_camera(azimuth, 35, 0.3)
        view = torch.eye(4)
        view[:3, :3], view[:3, 3] = torch.tensor(rotation), torch.tensor(translation)
        views.append(view.to(device))
    return K, views


@torch.no_grad()
def renderer(gaussians, K, views, backend: str, labels: bool = False) -> Callable[[], float]:
    """After one warm-up render (and gsplat's kernel load): a function that renders every view once and returns
    milliseconds per image, CPU time of this process on the CPU, wall time (synchronized) on CUDA. Backend
    "main_torch" is the baseline below. With `labels`, each Gaussian also carries a one-hot actor label whose
    coverage is rendered too, as HOGS.render(labels=True) does for every augmented image: main rendered the
    labels as colours in a second pass; now they are composited in the same pass."""
    cuda = gaussians[0].is_cuda
    clock = time.perf_counter if cuda else time.process_time
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    actor = torch.randint(0, 3, (len(gaussians[0]),), generator=torch.Generator().manual_seed(0))
    one_hot = torch.eye(3, dtype=gaussians[0].dtype)[actor].to(gaussians[0].device) if labels else None

    def render(view):
        if backend == "main_torch":
            out = main_rasterize_torch(*gaussians, view, K, SIZE, SIZE)
            return (out, main_rasterize_torch(*gaussians[:4], one_hot, view, K, SIZE, SIZE)) if labels else out
        return rasterize_gaussians(*gaussians, view, K, SIZE, SIZE, backend=backend, features=one_hot)

    @torch.no_grad()
    def render_all() -> float:
        synchronize()
        started = clock()
        for view in views:
            render(view)
        synchronize()
        return 1000 * (clock() - started) / len(views)

    render(views[0])
    synchronize()
    return render_all


def fit_step(gaussians, views, size: int) -> Callable[[], float]:
    """After one warm-up: a function that renders every view at size x size with gradients, backpropagates an L1
    loss to every Gaussian parameter (as a fitting step does, without the optimizer) and returns milliseconds
    per view, CPU time of this process."""
    parameters = [x.clone().requires_grad_() for x in gaussians]
    K = torch.tensor(intrinsics(size, size), dtype=torch.float32)

    def step(view):
        image = rasterize_gaussians(*parameters, view, K, size, size, backend="torch")["image"]
        (image - 0.5).abs().mean().backward()
        for parameter in parameters:
            parameter.grad = None

    def steps() -> float:
        started = time.process_time()
        for view in views:
            step(view)
        return 1000 * (time.process_time() - started) / len(views)

    step(views[0])
    return steps


# -- Baseline: main's torch rasterizer before the tiled one (per-pixel pairs, global (pixel, depth) sort) --------
MAIN_PAIRS_PER_BAND = 1 << 22


@torch.no_grad()
def main_rasterize_torch(means, quats, scales, opacities, colors, viewmat, K, width, height):
    """main's `_rasterize_torch` over black (forward only; its non-stable depth argsort kept as it was)."""
    splats = project(means, quats, scales, opacities, viewmat, K, width, height)
    if colors.dim() == 3:
        colors = sh_to_rgb(colors, means + viewmat[:3, :3].T @ viewmat[:3, 3])
    ids = torch.nonzero(splats.visible).squeeze(1)
    centre, half = splats.means2d[ids], splats.half_sizes[ids]
    first = torch.ceil(centre - half - 0.5).long().clamp_min(0)
    last = torch.minimum(torch.floor(centre + half - 0.5).long(), torch.tensor([width - 1, height - 1]))
    accumulated = torch.zeros(height * width, 5, dtype=means.dtype)
    inputs = (splats.means2d[ids], splats.conics[ids], opacities[ids], colors[ids], splats.depths[ids])
    for top, bottom in _main_bands(first[:, 1], last[:, 1], (last[:, 0] - first[:, 0] + 1).clamp_min(0), height):
        pixels, values = _main_composite_band(top, bottom, first, last, splats.depths[ids], inputs, width)
        accumulated = accumulated.index_copy(0, pixels, values) if len(pixels) else accumulated
    accumulated = accumulated.reshape(height, width, 5)
    alpha = accumulated[..., 3]
    return {"image": accumulated[..., :3], "alpha": alpha, "depth": accumulated[..., 4] / alpha.clamp_min(1e-10)}


def _main_bands(first_row, last_row, row_width, height):
    rows = torch.zeros(height + 1, dtype=torch.long)
    spans = last_row >= first_row
    rows.index_add_(0, first_row[spans], row_width[spans])
    rows.index_add_(0, last_row[spans] + 1, -row_width[spans])
    top, total = 0, 0
    for row, count in enumerate(torch.cumsum(rows[:height], 0).tolist()):
        if total and total + count > MAIN_PAIRS_PER_BAND:
            yield top, row
            top, total = row, 0
        total += count
    yield top, height


def _main_pairs(top, bottom, first, last, depths, width):
    row0, row1 = first[:, 1].clamp_min(top), last[:, 1].clamp_max(bottom - 1)
    columns, rows = (last[:, 0] - first[:, 0] + 1).clamp_min(0), (row1 - row0 + 1).clamp_min(0)
    by_depth = torch.argsort(depths)
    per_gaussian = (columns * rows)[by_depth]
    gaussian = torch.repeat_interleave(by_depth, per_gaussian)
    box = torch.stack([-(torch.cumsum(per_gaussian, 0) - per_gaussian), first[by_depth, 0], row0[by_depth],
                       columns[by_depth]], 1).int()
    local, left, row, span = torch.repeat_interleave(box, per_gaussian, 0).unbind(1)
    local = local + torch.arange(len(gaussian), dtype=torch.int32)
    pixel, order = torch.sort((row + local // span) * width + left + local % span, stable=True)
    gaussian = gaussian.index_select(0, order)
    pixels, counts = torch.unique_consecutive(pixel, return_counts=True)
    segment = torch.repeat_interleave(torch.arange(len(pixels)), counts)
    return gaussian, pixel, pixels.long(), segment, torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)


def _main_composite_band(top, bottom, first, last, depths, inputs, width):
    gaussian, pixel, pixels, segment, segment_start = _main_pairs(top, bottom, first, last, depths, width)
    means2d, conics, opacities, colors, z = inputs
    pairs = torch.cat([means2d, conics, opacities[:, None], colors, z[:, None]], 1).index_select(0, gaussian)
    dx = (pixel % width).to(pairs.dtype) + 0.5 - pairs[:, 0]
    dy = (pixel // width).to(pairs.dtype) + 0.5 - pairs[:, 1]
    power = 0.5 * (pairs[:, 2] * dx * dx + pairs[:, 4] * dy * dy) + pairs[:, 3] * dx * dy
    alpha = (pairs[:, 5] * torch.exp(-power)).clamp_max(MAX_ALPHA)
    alpha = alpha * (alpha >= ALPHA_THRESHOLD)
    alpha = alpha * (_main_log_transmittance(alpha, segment_start) > math.log(TRANSMITTANCE_STOP))
    log_after = _main_log_transmittance(alpha, segment_start)
    weights = alpha * torch.exp(log_after - torch.log1p(-alpha).to(log_after)).to(alpha)
    values = torch.cat([pairs[:, 6:9], torch.ones_like(alpha)[:, None], pairs[:, 9:]], 1) * weights[:, None]
    return pixels, torch.zeros(len(pixels), 5, dtype=values.dtype).index_add(0, segment, values)


def _main_log_transmittance(alpha, segment_start):
    log_keep = torch.log1p(-alpha).double()
    running = torch.cumsum(log_keep, 0)
    return running - (running - log_keep).index_select(0, segment_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=8, help="camera views rendered per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hogsa_render.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    backends = [("torch_cpu", "torch", "cpu"), ("main_torch_cpu", "main_torch", "cpu")]
    if torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None:
        backends.append(("gsplat_cuda", "gsplat", "cuda"))
    runs = {}
    for run, backend, device in backends:
        K, views = cameras(args.views, device)
        for name, sections in SCENES.items():
            runs[f"{run}_{name}"] = renderer(scene(sections, device), K, views, backend)
        if device == "cpu":  # the render each augmented image needs: colours and coverage labels
            runs[f"{run}_labels_10k"] = renderer(scene(SCENES["10k"], device), K, views, backend, labels=True)
    runs[f"torch_cpu_fit_step_10k_{FIT_SIZE}px"] = fit_step(scene(SCENES["10k"], "cpu"), cameras(args.views, "cpu")[1],
                                                           FIT_SIZE)
    ms = interleaved(runs, args.repeats)
    paper_ms = 1000 * PAPER_SECONDS_PER_IMAGE
    ratios = {f"{name}_vs_paper_0.06s": median(values) / paper_ms for name, values in ms.items()
              if "fit_step" not in name}
    for run, _, _ in backends:
        ratios[f"{run}_50k_vs_10k"] = median(ms[f"{run}_50k"]) / median(ms[f"{run}_10k"])
    for name in [*SCENES, "labels_10k"]:
        ratios[f"main_torch_vs_torch_{name}"] = median(ms[f"main_torch_cpu_{name}"]) / median(ms[f"torch_cpu_{name}"])
    clocks = "CPU time" + (", gsplat_cuda wall time" if any(device == "cuda" for _, _, device in backends) else "")
    show_and_save(f"HOGS render, {SIZE}x{SIZE}, forward only, {args.views} views per run ({clocks}, "
                  f"{args.threads} torch thread{'s' if args.threads > 1 else ''})", "ms/image", ms, ratios, args.out,
                  benchmark="hogsa_render", timing={run: "wall" if device == "cuda" else "process_time"
                                                    for run, _, device in backends},
                  size=SIZE, views=args.views,
                  gaussians={name: 4 * major * minor for name, (major, minor) in SCENES.items()},
                  paper_seconds_per_image=PAPER_SECONDS_PER_IMAGE, torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
