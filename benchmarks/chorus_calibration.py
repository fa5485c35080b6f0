"""CHORUS calibration accuracy and cost: the MAP fit of tasks/chorus/calibration.py on procedural scenes
with exact 2D keypoints, at two iteration counts (the default and twice it), against the scenes' truth.

Measured per configuration, on `--scenes` scenes of one interaction (default: the 32 'hat' scenes of
issue #17):
- MPJPE, median over scenes, metres, 24 SMPL joints: in camera coordinates with each pelvis at the origin
  (Human3.6M protocol 1, the figure the views report carries) and in the body frame (pose alone, pelvis
  aligned, the camera's rotation not counted);
- camera azimuth error, median and max, degrees; mean reprojection error, median, pixels;
- occupancy truth IoU at 0.5 (48^3 grid), the views aggregated with the fitted poses and cameras next to the
  same views with the true ones;
- CPU seconds per image (`time.process_time`, `--threads` torch threads, default 1), interleaved repeats.

The fit before issue #17 (Adam, 200 steps, 4 azimuths, an L2 pose prior), measured the same way on the same
32 hat scenes: body-frame MPJPE 12.5 cm, camera-frame 10.1 cm, azimuth error 13.8° (median), truth IoU 0.40
against 0.675 with the true poses, 0.48 CPU-s per image.

    python -m benchmarks.chorus_calibration [--scenes 32] [--category hat] [--verb wearing] [--repeats 2]
        [--out benchmarks/results/chorus_calibration.json]
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
from models.chorus.aggregate import Views, aggregate
from models.chorus.canonical import Grid, canonical_weights
from models.render.camera import camera_azimuth
from tasks.chorus.calibration import fit_views, pose_errors
from tasks.chorus.scenes import canonical_object_voxels, render_scene


def truth_iou(body, scenes, category: str, verb: str, poses, Ks, Rs, ts, resolution: int) -> float:
    """IoU at 0.5 of the occupancy the views aggregate to (with these poses and cameras) and the exact voxels."""
    grid = Grid(resolution, 1.5)
    star = body.pose(star_pose())
    weights = canonical_weights(grid, star.vertices[0].numpy(), body.lbs_weights.numpy())
    bones = body.pose(torch.from_numpy(np.asarray(poses)).float()).transforms @ torch.linalg.inv(star.transforms)
    views = Views([s.instances[-1].mask for s in scenes], *(torch.from_numpy(np.asarray(x)).float()
                                                             for x in (Ks, Rs, ts)), bones,
                  torch.tensor([camera_azimuth(R, t) for R, t in zip(Rs, ts)]).float())
    occupied = aggregate(grid.centres(), weights, views).numpy() >= 0.5
    exact = canonical_object_voxels(body, category, verb, grid.centres().numpy(), star_pose())
    return float((occupied & exact).sum() / (occupied | exact).sum())


def body_frame_mpjpe(body, poses: np.ndarray, true_poses: np.ndarray) -> np.ndarray:
    joints = [body.pose(torch.from_numpy(np.asarray(p)).float()).joints.numpy() for p in (poses, true_poses)]
    return np.linalg.norm(joints[0] - joints[1], axis=-1).mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--category", default="hat")
    parser.add_argument("--verb", default="wearing")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20], help="iteration counts compared")
    parser.add_argument("--resolution", type=int, default=48, help="occupancy grid side for the truth IoU")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/chorus_calibration.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    body = load_body_model()
    scenes = [render_scene(body, args.category, args.verb, seed=s) for s in range(args.scenes)]
    keypoints, Ks = np.stack([s.instances[0].keypoints for s in scenes]), np.stack([s.K for s in scenes])
    truth = [np.stack([getattr(s, key) for s in scenes]) for key in ("body_pose", "R", "t")]
    fits: dict[str, dict] = {}

    def seconds_per_image(steps: int) -> float:
        cpu = time.process_time()
        fits[f"steps_{steps}"] = fit_views(keypoints, Ks, steps=steps)
        return (time.process_time() - cpu) / len(scenes)

    seconds = interleaved({f"steps_{steps}": (lambda steps=steps: seconds_per_image(steps)) for steps in args.steps},
                          args.repeats)
    accuracy = {"true_pose_truth_iou": truth_iou(body, scenes, args.category, args.verb, truth[0], Ks, *truth[1:],
                                                 args.resolution)}
    for name, fitted in fits.items():  # the fit is deterministic: every repeat gives these figures
        mpjpe, azimuth_error = pose_errors(body, fitted["body_pose"], fitted["R"], fitted["t"], *truth)
        accuracy[name] = {
            "median_mpjpe_camera_frame_m": float(np.median(mpjpe)),
            "median_mpjpe_body_frame_m": float(np.median(body_frame_mpjpe(body, fitted["body_pose"], truth[0]))),
            "median_azimuth_error_deg": float(np.median(azimuth_error)),
            "max_azimuth_error_deg": float(azimuth_error.max()),
            "median_reprojection_error_px": float(np.median(fitted["error"])),
            "truth_iou": truth_iou(body, scenes, args.category, args.verb, fitted["body_pose"], fitted["K"],
                                   fitted["R"], fitted["t"], args.resolution)}
        print(name, {key: round(value, 4) for key, value in accuracy[name].items()})
    print(f"truth IoU with the true poses and cameras: {accuracy['true_pose_truth_iou']:.3f}")
    names = list(seconds)
    ratios = {f"{names[-1]}_vs_{names[0]}_cpu": median(seconds[names[-1]]) / median(seconds[names[0]])}
    show_and_save(f"CHORUS calibration, {args.scenes} '{args.category} {args.verb}' scenes (CPU time, "
                  f"{args.threads} torch thread{'s' if args.threads > 1 else ''})", "CPU-s/image", seconds, ratios,
                  args.out, benchmark="chorus_calibration", timing="process_time", accuracy=accuracy,
                  scenes=args.scenes, category=args.category, verb=args.verb, torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
