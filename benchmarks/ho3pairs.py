"""HO3Pairs throughput: pairs per second through the factory vs. a bare diffusers loop, same model, same batch.

Measured in one run on procedural hand–object scenes with the `tiny` diffusers models (or any you name),
interleaved and repeated (bare, in-process, Ray, bare, ...), wall time (Ray runs in other processes; run it
on an otherwise idle machine):
- a bare loop: read image and hand mask, crop, extract the layout (dropping what the factory drops there),
  grow the mask, inpaint and SDEdit in batches, nothing stored;
- the factory in-process (plus layout, sanity checks, quality figures, Parquet shards, manifest, report);
- the factory on local Ray with 2 workers.
Both load the models once per run (the factory once per worker) and inpaint the same crops; the sanity
thresholds are off so every inpainted pair is kept. Printed: pairs/s of each (median, min-max); ratios of
medians: factory / bare loop.

    python -m benchmarks.ho3pairs [--count 48] [--steps 10] [--repeats 3] [--out benchmarks/results/ho3pairs.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.results_table import interleaved, median, show_and_save
from hoi_factory.config import Settings
from hoi_factory.context import device_for
from hoi_factory.run import run_pipeline
from hoi_factory.stage import Reject
from models.diffusion import Sampling, inpaint, load_diffusion, sdedit
from tasks.ho3pairs.crop import CropAroundInteraction, ExtractLayout
from tasks.ho3pairs.inpaint import InpaintHands, grow
from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline
from tasks.procedural.hand_object import write_hand_object_folder


def bare_loop(folder: Path, config: PairsConfig, pairs: list[int]) -> float:
    """Pairs/s of the pipeline's own steps called in a plain loop, nothing stored; appends the pair count."""
    started = time.perf_counter()
    inpainter = load_diffusion(config.inpainter.model, "inpainting", device_for(1))
    editor = load_diffusion(config.sdedit.model, "image-to-image", device_for(1))
    sampling = Sampling(config.steps, config.guidance_scale, config.size)
    # the pipeline's own stages, called directly
    crop, layout = CropAroundInteraction(config.size), ExtractLayout(config.min_layout_iou)
    boxes = json.loads((folder / "hand_boxes.json").read_text())
    crops = []
    for path in sorted((folder / "images").iterdir()):
        row = {"sample_id": path.stem, "hand_box": boxes.get(path.stem),
               "image_array": np.asarray(Image.open(path).convert("RGB")),
               "hand_mask_array": np.asarray(Image.open(folder / "hand_masks" / path.name)) > 0,
               "object_mask_array": np.asarray(Image.open(folder / "object_masks" / path.name)) > 0}
        row = layout.process_row(crop.process_row(row))
        if not isinstance(row, Reject):
            crops.append((row["image_array"], grow(row["hand_mask_array"])))
    batch = InpaintHands.batch_size
    for start in range(0, len(crops), batch):
        images, masks = zip(*crops[start : start + batch])
        seeds = list(range(start, start + len(images)))
        painted = inpaint(inpainter, list(images), list(masks), ["object"] * len(images), seeds, sampling)
        sdedit(editor, painted, ["object"] * len(images), seeds, config.sdedit.strength, sampling)
    seconds = time.perf_counter() - started
    pairs.append(len(crops))
    return len(crops) / seconds


def factory(folder: Path, config: PairsConfig, executor: str, workers: int, pairs: list[int]) -> float:
    """Pairs/s of a whole run (plan to manifest) into a fresh store; appends the pair count."""
    config = config.model_copy(update={"execution": config.execution.model_copy(
        update={"executor": executor, "workers": workers})})
    with tempfile.TemporaryDirectory() as store:
        started = time.perf_counter()
        dataset = run_pipeline(PairsPipeline(), config, Settings(store_url=store)).dataset
        seconds = time.perf_counter() - started
    pairs.append(dataset.manifest.num_samples)
    return dataset.manifest.num_samples / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=48, help="hand-object scenes")
    parser.add_argument("--size", type=int, default=64, help="crop side, pixels")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--model", default="tiny", help="inpainting model (SDEdit uses 'tiny' or --sdedit-model)")
    parser.add_argument("--sdedit-model", default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ho3pairs.json"))
    args = parser.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    folder = Path(tempfile.mkdtemp(prefix="ho3pairs-bench-"))
    write_hand_object_folder(folder, args.count, seed=0, with_bad_files=False)
    config = PairsConfig(inputs=str(folder), inpainter={"model": args.model}, sdedit={"model": args.sdedit_model},
                         steps=args.steps, size=args.size, max_hand_residue=1.0, max_seam_score=1e9,
                         execution={"shard_size": 8})
    load_diffusion(args.model, "inpainting")  # warm-up: build / cache the models once
    load_diffusion(args.sdedit_model, "image-to-image")
    warm_folder = Path(tempfile.mkdtemp(prefix="ho3pairs-bench-warm-"))  # first calls, Ray Data's first start
    write_hand_object_folder(warm_folder, 4, seed=1, with_bad_files=False)
    warm = config.model_copy(update={"inputs": str(warm_folder)})
    bare_loop(warm_folder, warm, [])
    factory(warm_folder, warm, "local", 1, []), factory(warm_folder, warm, "ray", 2, [])

    pairs: dict[str, list[int]] = {"bare_diffusers_loop": [], "factory_in_process": [], "factory_ray_2_workers": []}
    rates = interleaved({
        "bare_diffusers_loop": lambda: bare_loop(folder, config, pairs["bare_diffusers_loop"]),
        "factory_in_process": lambda: factory(folder, config, "local", 1, pairs["factory_in_process"]),
        "factory_ray_2_workers": lambda: factory(folder, config, "ray", 2, pairs["factory_ray_2_workers"]),
    }, args.repeats)
    ray.shutdown()
    shutil.rmtree(folder), shutil.rmtree(warm_folder)
    counts = {count for made in pairs.values() for count in made}
    assert len(counts) == 1, f"the runs made different numbers of pairs: {pairs}"
    bare = median(rates["bare_diffusers_loop"])
    ratios = {"factory_in_process_vs_bare": median(rates["factory_in_process"]) / bare,
              "factory_ray_2_workers_vs_bare": median(rates["factory_ray_2_workers"]) / bare}
    show_and_save(f"{args.count} scenes ({counts.pop()} pairs), {args.size} px crops, {args.steps} steps, model "
                  f"{args.model}, batch {InpaintHands.batch_size} (wall time: Ray runs in other processes)", "pairs/s",
                  rates, ratios, args.out, benchmark="ho3pairs", timing="wall", pairs=pairs, count=args.count,
                  size=args.size, steps=args.steps, model=args.model, batch_size=InpaintHands.batch_size,
                  device=device_for(1))


if __name__ == "__main__":
    main()
