"""HOGS rendering speed: milliseconds per 224x224 image (forward only) for 10k and 50k mesh-bound Gaussians,
against the paper's 0.06 s per augmented image (HOGSA, Qu et al. 2025, on an RTX 4090, which includes its
super-resolution and compositing; the render is only a part of it).

Scene: MeshGaussians (2 per face, SH degree 3 with random view-dependent colours) on a torus that fills most
of the crop, seen from several orbit cameras, so that splats overlap and occlude as on a hand-object crop.
Backends: the pure-torch CPU rasterizer always; gsplat on CUDA when both are available.

    python -m benchmarks.hogsa_render [--views 8] [--threads N] [--out benchmarks/results/hogsa_render.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from benchmarks.results_table import show_and_save
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
def seconds_per_image(gaussians, K, views, backend: str) -> float:
    render = lambda view: rasterize_gaussians(*gaussians, view, K, SIZE, SIZE, backend=backend)  # noqa: E731
    render(views[0])  # warm-up (and gsplat's kernel load)
    if gaussians[0].is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for view in views:
        render(view)
    if gaussians[0].is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / len(views)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=8, help="camera views rendered per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hogsa_render.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = [("torch_cpu", "torch", "cpu")]
    if torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None:
        runs.append(("gsplat_cuda", "gsplat", "cuda"))
    per_image = {}
    for run, backend, device in runs:
        K, views = cameras(args.views, device)
        for name, sections in SCENES.items():
            per_image[f"{run}_{name}"] = seconds_per_image(scene(sections, device), K, views, backend)
    seconds = {name: s * args.views for name, s in per_image.items()}
    images_per_second = {name: 1 / s for name, s in per_image.items()}
    ratios = {f"{name}_seconds_per_image_vs_paper_0.06s": s / PAPER_SECONDS_PER_IMAGE for name, s in per_image.items()}
    show_and_save(f"HOGS render, {SIZE}x{SIZE}, forward only, {args.views} views per run", "images/s", seconds,
                  images_per_second, ratios, args.out, benchmark="hogsa_render", size=SIZE, views=args.views,
                  gaussians={name: 4 * major * minor for name, (major, minor) in SCENES.items()},
                  milliseconds_per_image={name: 1000 * s for name, s in per_image.items()},
                  paper_seconds_per_image=PAPER_SECONDS_PER_IMAGE, torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
