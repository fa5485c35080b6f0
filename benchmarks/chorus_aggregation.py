"""CHORUS occupancy aggregation speed: views aggregated per second at 48^3 (target >= 100 on 2 cores), and
the vectorized code against the per-voxel Python reference of the same formula on a small grid, measured
side by side in one run on procedural stand-in views.

    python -m benchmarks.chorus_aggregation [--views 256] [--out benchmarks/results/chorus_aggregation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from models.body import load_body_model
from models.body.smpl import star_pose
from models.chorus.aggregate import Views, aggregate, aggregate_reference
from models.chorus.canonical import Grid, canonical_weights
from tasks.chorus.scenes import render_scene


def stand_in_views(count: int, size: int) -> Views:
    body = load_body_model()
    star = body.pose(star_pose())
    scenes = [render_scene(body, "backpack", "wearing", seed=s, image_size=size) for s in range(count)]
    poses = torch.tensor(np.stack([s.body_pose for s in scenes])).float()
    return Views([s.instances[-1].mask for s in scenes], torch.tensor(np.stack([s.K for s in scenes])).float(),
                 torch.tensor(np.stack([s.R for s in scenes])).float(),
                 torch.tensor(np.stack([s.t for s in scenes])).float(),
                 body.pose(poses).transforms @ torch.linalg.inv(star.transforms), torch.tensor([s.azimuth for s in scenes]))


def weights_for(grid: Grid) -> torch.Tensor:
    body = load_body_model()
    return canonical_weights(grid, body.pose(star_pose()).vertices[0].numpy(), body.lbs_weights.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--small-resolution", type=int, default=8, help="grid of the reference comparison")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/chorus_aggregation.json"))
    args = parser.parse_args()
    console = Console()

    views = stand_in_views(args.views, args.image_size)
    grid = Grid(48)
    weights = weights_for(grid)
    aggregate(grid.centres(), weights, Views(views.masks[:4], views.K[:4], views.R[:4], views.t[:4],
                                             views.bones[:4], views.azimuths[:4]))  # warm-up
    started = time.perf_counter()
    aggregate(grid.centres(), weights, views)
    full_seconds = time.perf_counter() - started

    small = Grid(args.small_resolution)
    small_weights = weights_for(small)
    subset = Views(views.masks[:16], views.K[:16], views.R[:16], views.t[:16], views.bones[:16], views.azimuths[:16])
    started = time.perf_counter()
    fast = aggregate(small.centres(), small_weights, subset)
    fast_seconds = time.perf_counter() - started
    started = time.perf_counter()
    slow = aggregate_reference(small.centres().numpy(), small_weights.numpy(), subset)
    slow_seconds = time.perf_counter() - started
    assert np.allclose(fast.numpy(), slow, atol=1e-5), "vectorized and reference aggregation disagree"

    result = {
        "benchmark": "chorus_aggregation", "views": args.views, "image_size": args.image_size,
        "views_per_second_48": args.views / full_seconds, "seconds_48": full_seconds,
        "small_grid": args.small_resolution, "small_views": 16,
        "vectorized_seconds_small": fast_seconds, "reference_seconds_small": slow_seconds,
        "speedup_vs_reference": slow_seconds / fast_seconds,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "platform": platform.platform()},
    }
    console.print(f"48^3 grid: {args.views} views in {full_seconds:.2f} s = [bold]{result['views_per_second_48']:.0f} "
                  "views/s[/] (target >= 100)")
    console.print(f"{args.small_resolution}^3 grid, 16 views: vectorized {fast_seconds * 1000:.1f} ms, per-voxel "
                  f"reference {slow_seconds:.2f} s: [bold]{result['speedup_vs_reference']:.0f}x[/]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"written: {args.out}")


if __name__ == "__main__":
    main()
