"""CHORUS occupancy aggregation speed: views aggregated per CPU-second at 48^3, the factory's code against the
official CHORUS code's approach, on procedural stand-in views.

- official_per_view_loop: what jellyheadandrew/CHORUS does (utils/aggregation/aggregator.py,
  `Aggregator.aggregate_single_input` with `skinning_deformation_smpl` and
  utils/transformations.py `perspective_projection_grid`), ported to the CPU with the factory's
  formula: for each view, blend that view's 24 bone matrices per voxel ((N, 24) @ (24, 16) -> N 4x4),
  warp every voxel centre with its matrix, project the posed grid with the view's K, R, t, look the pixels
  up in the view's object mask, accumulate r_k x mask and r_k x inside. Vectorized over voxels, one view at
  a time, as there.
- factory_vectorized: models/chorus/aggregate.py `aggregate`: each view's camera folded into its bone matrices,
  a chunk of voxels projected into all views by one matrix product (no posed grid; voxels bound to one bone
  take only that bone's block), the masks looked up through one padded table of votes, one gather per chunk.

Both give the same occupancy: checked to 1e-5 on the benchmark's own inputs in float64 before timing (in
float32, the timed precision, a voxel whose projection is within rounding of a pixel edge may fall on the
other side in one view: such voxels are counted in the JSON and the output). Interleaved
and repeated (official, factory, official, ...), CPU time of this process (`time.process_time`) with
`--threads` torch threads (default 1, so no thread waits at a barrier while counted), plus the wall time
for reference. Printed: views per CPU-second of each (median, min-max) and the ratio of medians.

    python -m benchmarks.chorus_aggregation [--views 256] [--threads 1] [--repeats 3]
        [--out benchmarks/results/chorus_aggregation.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.results_table import interleaved, median, show_and_save
from models.body import load_body_model
from models.body.smpl import star_pose
from models.chorus.aggregate import Views, aggregate, view_weights
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
                 body.pose(poses).transforms @ torch.linalg.inv(star.transforms),
                 torch.tensor([s.azimuth for s in scenes]))


def weights_for(grid: Grid) -> torch.Tensor:
    body = load_body_model()
    return canonical_weights(grid, body.pose(star_pose()).vertices[0].numpy(), body.lbs_weights.numpy())


def official_per_view_loop(points: torch.Tensor, weights: torch.Tensor, views: Views) -> torch.Tensor:
    """The official code's loop (one view at a time, all voxels at once), with models/chorus/aggregate.py's
    formula: floor to the pixel, points behind the camera (depth <= 1e-6) unseen, r_k = 1 / views in k's
    azimuth bin, occupancy = sum r_k M_k / max(sum r_k I_k, 1e-7)."""
    count = len(points)
    r = view_weights(views.azimuths)
    mask_votes = torch.zeros(count)  # the official `visual_hull`
    image_votes = torch.zeros(count)  # the official `full_image_visual_hull`
    homogeneous = torch.cat([points, torch.ones(count, 1)], 1)[None]  # 1 x N x 4
    for k, mask in enumerate(views.masks):
        # skinning_deformation_smpl: per-voxel blend of the view's bone matrices, applied to each voxel
        canon_to_posed = torch.matmul(weights[None], views.bones[k].reshape(1, 24, 16)).view(1, -1, 4, 4)
        posed = torch.matmul(canon_to_posed, homogeneous[..., None])[0, :, :3, 0]  # N x 3
        # perspective_projection_grid
        pixels = torch.matmul(views.K[k], torch.matmul(views.R[k], posed.T) + views.t[k].reshape(3, 1))  # 3 x N
        # uplift_mask_image_occupancy (floor and the depth test: this project's formula)
        mask = torch.as_tensor(mask)
        height, width = mask.shape
        depth = pixels[2]
        front = depth > 1e-6
        safe = torch.where(front, depth, torch.ones_like(depth))
        u, v = torch.floor(pixels[0] / safe), torch.floor(pixels[1] / safe)
        inside = front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
        mask_occupancy = torch.zeros(count)
        mask_occupancy[inside] = mask[v[inside].long(), u[inside].long()].float()
        mask_votes += mask_occupancy * r[k]
        image_votes += inside.float() * r[k]
    return mask_votes / image_votes.clamp(min=1e-7)


def views_per_second(function, points: torch.Tensor, weights: torch.Tensor, views: Views, walls: list[float]) -> float:
    """Views per CPU-second of one call; appends the call's wall seconds to `walls`."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(points, weights, views)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    walls.append(wall)
    return len(views.masks) / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=48, help="grid side (voxels)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/chorus_aggregation.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    views = stand_in_views(args.views, args.image_size)
    grid = Grid(args.resolution)
    points, weights = grid.centres(), weights_for(grid)
    # The same formula: checked in float64 on these inputs, where no projection lands on a pixel edge by
    # rounding. The timed float32 runs may still differ in a voxel or two whose projection falls within
    # float32 rounding of a pixel edge (the two codes multiply in different orders): counted, not asserted.
    exact = Views(views.masks, *(x.double() for x in (views.K, views.R, views.t, views.bones)), views.azimuths)
    difference = float((official_per_view_loop(points.double(), weights.double(), exact)
                        - aggregate(points.double(), weights.double(), exact)).abs().max())
    assert difference <= 1e-5, f"the official loop and the factory's aggregation disagree by {difference}"
    float32_difference = (official_per_view_loop(points, weights, views) - aggregate(points, weights, views)).abs()
    float32_voxels_differing = int((float32_difference > 1e-5).sum())  # the calls above are the warm-up too

    walls: dict[str, list[float]] = {"official_per_view_loop": [], "factory_vectorized": []}
    rates = interleaved({
        "official_per_view_loop": lambda: views_per_second(official_per_view_loop, points, weights, views,
                                                           walls["official_per_view_loop"]),
        "factory_vectorized": lambda: views_per_second(aggregate, points, weights, views, walls["factory_vectorized"]),
    }, args.repeats)
    ratios = {"factory_vs_official_loop": median(rates["factory_vectorized"]) / median(rates["official_per_view_loop"])}
    print(f"same occupancy: max difference {difference:.1e} in float64; in float32 {float32_voxels_differing} of "
          f"{len(points)} voxels differ by more than 1e-5 (pixel-edge rounding)")
    show_and_save(f"CHORUS aggregation, {args.resolution}^3 grid, {args.views} views of {args.image_size} px "
                  f"(CPU time, {args.threads} torch thread{'s' if args.threads > 1 else ''})", "views/CPU-s", rates,
                  ratios, args.out, benchmark="chorus_aggregation", timing="process_time", wall_seconds=walls,
                  max_abs_difference_float64=difference,
                  max_abs_difference_float32=float(float32_difference.max()),
                  voxels_differing_float32=float32_voxels_differing, views=args.views, image_size=args.image_size,
                  resolution=args.resolution, voxels=len(points), torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
