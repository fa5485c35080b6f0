"""HOGSA augmentation speed: milliseconds per augmented 224 x 224 image through the `hogsa` pipeline's stages
(novel pose, HOGS render of hands + object and of the object alone, super-resolution when configured,
compositing, crop, annotations), against the paper's 0.06 s per augmented image (RTX 4090, POM not counted there).

Configurations, per scene: without POM, with POM (200 iterations per hand), without POM + SRM, with POM + SRM.
The SRM is the pipeline's own stage (`SuperResolve`, loaded from a folder as `super_resolution=<folder>`) on an
SRM of the architecture's default size (`SRMConfig()`: 256 px renders -> 512 px, 21.9M generator parameters)
with random weights, saved to a temporary folder: speed does not depend on the weights. As in the pipeline, the
SRM takes renders of its input size, so the SRM runs render at 256 px (not 224), super-resolve both renders
(hands + object and object alone) to 512 px, composite at 512 and crop 224; the runs without SRM render at 224.

Scenes: the procedural stand-in bimanual grasp of a ball, the ball's mesh an icosphere whose size and the number
of Gaussians per face set the count. "10k" and "50k" keep MANO's 1538 faces per hand (`hand_mesh` "mano", the
figures' baseline since the first measurement); "25k-hd" is the pipelines' defaults: hands on "mano-hd"
(MANO subdivided once, 4x the faces) with hogsa-models' default 2 Gaussians per face (the object a 320-face
icosphere), and the augmentation's vertex and contact columns on "mano-hd". The models are built, not fitted:
speed does not depend on the colours.

Every configuration is set up and warmed up once, then measured interleaved and repeated, each on the same
seeds; CPU time of this process (`time.process_time`: the work is single-process CPU work) with `--threads`
torch threads (default 1; POM runs on one thread whatever the setting), the wall time kept in the JSON.
Printed: CPU ms per image (median, min-max) and ratios of medians (vs the paper's 60 ms; with POM and / or SRM
vs without either).

    python -m benchmarks.hogsa [--samples 3] [--repeats 3] [--out benchmarks/results/hogsa.json]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import trimesh

from benchmarks.results_table import interleaved, median, show_and_save
from hoi_factory.config import Settings
from hoi_factory.context import StageContext
from models.hand import MANO, MANO_HD
from models.hogsa.super_resolution import SRMConfig, SuperResolution
from tasks.hogsa.augment import AugmentConfig, AugmentPipeline
from tasks.hogsa.hogs_models import FitHOGS, HOGSModelsConfig
from tasks.hogsa.posing import frame_to_json
from tasks.hogsa.standin_sequences import procedural_sequence

PAPER_SECONDS_PER_IMAGE = 0.06
SIZE = 224
# name -> (icosphere subdivisions, Gaussians per face, hand mesh)
SCENES = {"10k": (2, 3, MANO), "50k": (4, 6, MANO), "25k-hd": (2, 2, MANO_HD)}


def model_row(subdivisions: int, per_face: int, hand_mesh: str = MANO) -> tuple[dict, int]:
    """A `hogsa-models` row (what the pipeline's workers read) and its Gaussian count; the hands' Gaussians on
    `hand_mesh`."""
    sequence = procedural_sequence(0, "ball", frames=1, cameras=1, width=32, height=32)
    sequence.object_mesh = trimesh.creation.icosphere(subdivisions, 0.08)
    stage = FitHOGS(HOGSModelsConfig(sequences=["ball"], gaussians_per_face=per_face, sh_degree=1,
                                     hand_mesh=hand_mesh))
    stage.setup(StageContext(Settings()))
    model = stage.build(sequence)
    # object_colours None, as a real capture's row: the stand-ins' per-sample stain check is not timed
    row = {"sequence": "ball", "object_name": "ball", "hogs": model.to_bytes(), "hand_model": "standin",
           "flat_hand_mean": False, "frames": json.dumps([frame_to_json(f) for f in sequence.frames]),
           "object_colours": None}
    return row, sum(m.num_gaussians for m in model.actors.values())


def augmenter(row: dict, pose_optimization: bool, device: str = "cpu", size: int = SIZE,
              hand_mesh: str = MANO, super_resolution: str | None = None,
              render_size: int | None = None) -> Callable[[int], None]:
    """The pipeline's stages set up as a worker sets them up, warmed up on one image: a function that makes
    the augmented `size` x `size` crop of one seed, rendered at `render_size` (default `size`; with
    `super_resolution`, an SRM folder, the SRM's input size). `device="cuda"` runs them as a GPU worker does
    (gpus=1): the HOGS model on CUDA, rendered by the "auto" backend (gsplat when installed, else the torch
    rasterizer)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    config = AugmentConfig(pose_optimization=pose_optimization, render_size=render_size or size, crop_size=size,
                           gpus=1.0 if device == "cuda" else 0.0, hand_mesh=hand_mesh,
                           super_resolution=super_resolution)
    # the pipeline's own stage list, less its first stage (it reads the model rows; here `row` is in memory)
    stages = AugmentPipeline().stages(config)[1:]
    context = StageContext(Settings(), device=device)
    for stage in stages:
        stage.setup(context)

    def augment(seed: int) -> None:
        item = {**row, "sample_id": f"s{seed}", "input_id": "ball", "seed": seed}
        for stage in stages:
            item = stage.process_row(item)

    augment(0)  # warm-up: hand models loaded, the HOGS blob decoded (and, on CUDA, kernels loaded)
    return augment


def augment_timings(row: dict, pose_optimization: bool, samples: int, device: str = "cpu", repeats: int = 1,
                    size: int = SIZE) -> list[float]:
    """Wall seconds per augmented `size` x `size` image, one figure per repeat of `samples` images (seeds
    1, 2, ...), after one warm-up image (benchmarks.gpu_check)."""
    augment = augmenter(row, pose_optimization, device, size)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timings, seed = [], 1
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        for _ in range(samples):
            augment(seed)
            seed += 1
        synchronize()
        timings.append((time.perf_counter() - started) / samples)
    return timings


def cpu_ms_per_image(augment: Callable[[int], None], samples: int, seeds: Iterator[int], walls: list[float]) -> float:
    """CPU milliseconds of this process per image over the next `samples` seeds; appends wall ms per image."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(samples):
        augment(next(seeds))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    walls.append(1000 * wall / samples)
    return 1000 * cpu / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3, help="augmented images per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (POM always uses one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hogsa.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    srm_folder = tempfile.TemporaryDirectory(prefix="hogsa-srm-")
    srm = SRMConfig()
    SuperResolution(srm).save_pretrained(srm_folder.name)  # random weights: speed does not depend on them
    with_srm = {"super_resolution": srm_folder.name, "render_size": srm.input_size}
    configurations = {"without_pom": {"pose_optimization": False}, "with_pom": {"pose_optimization": True},
                      "without_pom_srm": {"pose_optimization": False, **with_srm},
                      "with_pom_srm": {"pose_optimization": True, **with_srm}}
    runs, gaussians = {}, {}
    walls: dict[str, list[float]] = {}
    for scene, (subdivisions, per_face, hand_mesh) in SCENES.items():
        row, gaussians[scene] = model_row(subdivisions, per_face, hand_mesh)
        for label, options in configurations.items():
            augment = augmenter(row, hand_mesh=hand_mesh, **options)
            seeds = itertools.count(1)  # the same seeds for every configuration
            name = f"{scene}_{label}"
            walls[name] = []
            runs[name] = functools.partial(cpu_ms_per_image, augment, args.samples, seeds, walls[name])
    ms = interleaved(runs, args.repeats)
    srm_folder.cleanup()
    paper_ms = 1000 * PAPER_SECONDS_PER_IMAGE
    ratios = {f"{name}_vs_paper_0.06s": median(values) / paper_ms for name, values in ms.items()}
    for scene in SCENES:
        for label in ("with_pom", "without_pom_srm", "with_pom_srm"):
            ratios[f"{scene}_{label}_vs_without_pom"] = median(ms[f"{scene}_{label}"]) / median(
                ms[f"{scene}_without_pom"])
    show_and_save(f"HOGSA augmentation, {SIZE}x{SIZE} crops, CPU torch renderer, {args.samples} images per run "
                  f"(CPU time, {args.threads} torch thread{'s' if args.threads > 1 else ''})", "CPU ms/image", ms,
                  ratios, args.out, benchmark="hogsa", timing="process_time", wall_ms_per_image=walls,
                  gaussians=gaussians, hand_mesh={scene: mesh for scene, (*_, mesh) in SCENES.items()},
                  srm={"config": "SRMConfig()", "input_size": srm.input_size, "scale": srm.scale,
                       "weights": "random"}, samples=args.samples, paper_seconds_per_image=PAPER_SECONDS_PER_IMAGE,
                  torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
