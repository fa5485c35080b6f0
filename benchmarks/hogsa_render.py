"""HOGS rendering speed: milliseconds per 224x224 image (forward only) for 10k and 50k mesh-bound Gaussians,
against the paper's 0.06 s per augmented image (HOGSA, Qu et al. 2025, on an RTX 4090, which includes its
super-resolution and compositing; the render is only a part of it).

Scene: MeshGaussians (2 per face, SH degree 3 with random view-dependent colours) on a torus that fills most
of the crop, seen from several orbit cameras, so that splats overlap and occlude as on a hand-object crop.
Backends: the pure-torch CPU rasterizer always; gsplat on CUDA when both are available.

Each (backend, scene) is set up and warmed up once, then measured interleaved and repeated (10k, 50k, 10k,
...). The torch CPU renders are single-process CPU work: measured in CPU time of this process
(`time.process_time`) with `--threads` torch threads (default 1, so no thread waits at a barrier while
counted); gsplat on CUDA in synchronized wall time. Printed: ms per image (median, min-max) and ratios of
medians (vs the paper's 60 ms, 50k vs 10k).

    python -m benchmarks.hogsa_render [--views 8] [--threads 1] [--repeats 3]
        [--out benchmarks/results/hogsa_render.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh

from benchmarks.results_table import interleaved, median, show_and_save
from models.gaussians.mesh_gaussians import MeshGaussians
from models.gaussians.render import rasterize_gaussians
from models.render.camera import intrinsics, orbit_camera

PAPER_SECONDS_PER_IMAGE = 0.06
SIZE = 224
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
def renderer(gaussians, K, views, backend: str) -> Callable[[], float]:
    """After one warm-up render (and gsplat's kernel load): a function that renders every view once and returns
    milliseconds per image, CPU time of this process on the CPU, wall time (synchronized) on CUDA."""
    cuda = gaussians[0].is_cuda
    clock = time.perf_counter if cuda else time.process_time
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)

    @torch.no_grad()
    def render_all() -> float:
        synchronize()
        started = clock()
        for view in views:
            rasterize_gaussians(*gaussians, view, K, SIZE, SIZE, backend=backend)
        synchronize()
        return 1000 * (clock() - started) / len(views)

    rasterize_gaussians(*gaussians, views[0], K, SIZE, SIZE, backend=backend)
    synchronize()
    return render_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=8, help="camera views rendered per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hogsa_render.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    backends = [("torch_cpu", "torch", "cpu")]
    if torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None:
        backends.append(("gsplat_cuda", "gsplat", "cuda"))
    runs = {}
    for run, backend, device in backends:
        K, views = cameras(args.views, device)
        for name, sections in SCENES.items():
            runs[f"{run}_{name}"] = renderer(scene(sections, device), K, views, backend)
    ms = interleaved(runs, args.repeats)
    paper_ms = 1000 * PAPER_SECONDS_PER_IMAGE
    ratios = {f"{name}_vs_paper_0.06s": median(values) / paper_ms for name, values in ms.items()}
    for run, _, _ in backends:
        ratios[f"{run}_50k_vs_10k"] = median(ms[f"{run}_50k"]) / median(ms[f"{run}_10k"])
    clocks = "CPU time" + (", gsplat_cuda wall time" if len(backends) > 1 else "")
    show_and_save(f"HOGS render, {SIZE}x{SIZE}, forward only, {args.views} views per run ({clocks}, "
                  f"{args.threads} torch thread{'s' if args.threads > 1 else ''})", "ms/image", ms, ratios, args.out,
                  benchmark="hogsa_render", timing={run: "wall" if device == "cuda" else "process_time"
                                                    for run, _, device in backends},
                  size=SIZE, views=args.views,
                  gaussians={name: 4 * major * minor for name, (major, minor) in SCENES.items()},
                  paper_seconds_per_image=PAPER_SECONDS_PER_IMAGE, torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
