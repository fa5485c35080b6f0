"""LayoutNet's two image encoders on the same held-out pairs: `small` (a CNN from scratch, the project's first)
vs `diffusion` (the encoder half of the pretrained inpainting UNet ContentNet starts from, as the official code
starts from GLIDE's; here the `tiny` model unless --base names a real one).

HO3Pairs made from procedural hand–object scenes (biharmonic inpainting, no SDEdit): training pairs and held-out
pairs from other scenes. Each run trains a fresh `tiny`-preset LayoutNet with the task's own loss (augmentation
included: crop, flip, blur, noise) for --steps steps, then generates one layout per held-out object image. The
figure: mean IoU of the hard splat of the generated layout with the true hand mask (the task's `evaluate`), beside
random layouts and the true layouts (the ceiling). Runs alternate (small, diffusion, small, ...), each repeat with
its own seed; also recorded: each run's training CPU time (time.process_time, one thread). With random `tiny`
weights the "pretrained" encoder brings an architecture, not knowledge: the benefit of real pretraining needs
--base stable-diffusion-v1-5/stable-diffusion-inpainting (and a larger --size).

    python -m benchmarks.layoutnet_encoders [--train 100] [--held-out 40] [--steps 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.results_table import interleaved, median, show_and_save
from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.run import run_pipeline
from hoi_factory.training import training_batch
from models.affordance.layoutnet import LayoutNet, LayoutNetConfig
from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline
from tasks.procedural.hand_object import write_hand_object_folder
from tasks.training.layoutnet import LayoutNetTask, load_pairs, mean_iou, random_layouts


def make_pairs(root: Path, store: str, name: str, count: int, seed: int, size: int):
    write_hand_object_folder(root / name, count, seed=seed, with_bad_files=False)
    config = PairsConfig(inputs=str(root / name), inpainter="biharmonic", sdedit="none", size=size,
                         max_seam_score=1e9, execution=ExecutionConfig(executor="local", shard_size=64),
                         output={"dataset": name})
    return run_pipeline(PairsPipeline(), config, Settings(store_url=store)).dataset


def train_and_score(config: LayoutNetConfig, train: dict, held_out: dict, steps: int, batch_size: int, seed: int,
                    cpu_seconds: list[float]) -> float:
    """Mean IoU of generated layouts with the held-out hand masks after `steps` training steps."""
    torch.manual_seed(seed)
    model, task = LayoutNet(config), LayoutNetTask()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    started = time.process_time()
    for step in range(steps):
        batch, generator = training_batch(train, len(train["layouts"]), batch_size, seed, step)
        loss = task.loss(model, batch, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cpu_seconds.append(time.process_time() - started)
    layouts = model.eval().generate(held_out["objects"], steps=25, generator=torch.Generator().manual_seed(seed))
    return mean_iou(layouts, held_out["hands"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=100, help="training scenes")
    parser.add_argument("--held-out", type=int, default=40, help="held-out scenes")
    parser.add_argument("--size", type=int, default=32, help="LayoutNet image size")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--base", default="tiny", help="the inpainting model whose UNet encoder `diffusion` uses")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/layoutnet_encoders.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # CPU time per run comparable on a shared machine

    root = Path(tempfile.mkdtemp(prefix="layoutnet-encoders-"))
    store = str(root / "store")
    train = load_pairs([make_pairs(root, store, "train", args.train, 11, 64)], args.size)
    held_out = load_pairs([make_pairs(root, store, "held-out", args.held_out, 12, 64)], args.size)
    base = replace(LayoutNetConfig.tiny(), image_size=args.size, encoder_base=args.base)
    configs = {"small": base, "diffusion": replace(base, encoder="diffusion")}
    LayoutNet(configs["diffusion"])  # warm-up: build / cache the base model once
    cpu = {name: [] for name in configs}
    seeds = {name: iter(range(args.repeats)) for name in configs}
    ious = interleaved({name: (lambda name=name: train_and_score(
        configs[name], train, held_out, args.steps, args.batch_size, next(seeds[name]), cpu[name]))
        for name in configs}, args.repeats)
    generator = torch.Generator().manual_seed(0)
    reference = {"random_layouts": mean_iou(random_layouts(len(held_out["layouts"]), train["layouts"][:, 2],
                                                           generator), held_out["hands"]),
                 "true_layouts": mean_iou(held_out["layouts"], held_out["hands"])}
    ratios = {"diffusion_vs_small_iou": median(ious["diffusion"]) / median(ious["small"]),
              "diffusion_vs_small_cpu_s": median(cpu["diffusion"]) / median(cpu["small"])}
    print(f"reference IoU: {reference}; training CPU seconds: {cpu}")
    show_and_save(f"LayoutNet encoders: held-out layout IoU ({len(held_out['layouts'])} pairs, trained on "
                  f"{len(train['layouts'])}, {args.steps} steps x {args.batch_size}, {args.size} px, base "
                  f"{args.base})", "IoU", ious, ratios, args.out, benchmark="layoutnet_encoders",
                  reference=reference, training_cpu_seconds=cpu, steps=args.steps, batch_size=args.batch_size,
                  size=args.size, base=args.base, pairs={"train": len(train["layouts"]),
                                                         "held_out": len(held_out["layouts"])})


if __name__ == "__main__":
    main()
