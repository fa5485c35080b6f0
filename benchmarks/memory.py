"""Worker memory against shard size: ingest 16 photos of 3000x3000 into 256 px images, shard sizes 1, 4 and 16.

Each run is a fresh process (the in-process executor, so the worker is that process) and its peak RSS is read
from the kernel; runs are interleaved and repeated. Shards stream through their stages row by row
(hoi_factory.stage.run_stages), so the peak should not grow with the shard size: one image at full size plus
the shard at output size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.results_table import interleaved, median, show_and_save

# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork and exec).
RUN = """
import sys
from hoi_factory.config import Settings
from hoi_factory.run import run_pipeline
from tasks.images.ingest import IngestConfig, IngestPipeline
config = IngestConfig(source=sys.argv[1], max_side=256, max_pixels=20_000_000,
                      execution={"executor": "local", "shard_size": int(sys.argv[2])})
run_pipeline(IngestPipeline(), config, Settings(store_url=sys.argv[3]))
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def write_photos(folder: Path, count: int, side: int) -> None:
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for index in range(count):
        pixels = np.stack([np.add.outer(ramp, ramp * (index + 1) / count) / 2, np.tile(ramp, (side, 1)),
                           np.full((side, side), 10.0 * index)], axis=-1)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"photo-{index:02d}.png",
                                                                  compress_level=1)


def peak_mb(photos: Path, shard_size: int) -> float:
    with tempfile.TemporaryDirectory() as store:
        out = subprocess.run([sys.executable, "-c", RUN, str(photos), str(shard_size), store], check=True,
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        photos = Path(folder)
        write_photos(photos, args.photos, args.side)
        sizes = (1, 4, args.photos)
        measured = interleaved({f"shard_size_{s}": (lambda s=s: peak_mb(photos, s)) for s in sizes}, args.repeats)
    largest, smallest = median(measured[f"shard_size_{args.photos}"]), median(measured["shard_size_1"])
    ratios = {f"peak_{args.photos}_vs_1": largest / smallest}
    show_and_save(f"ingest of {args.photos} photos of {args.side}x{args.side} to 256 px: peak RSS of the worker",
                  "MB", measured, ratios, args.out, benchmark="memory", photos=args.photos, side=args.side)


if __name__ == "__main__":
    main()
