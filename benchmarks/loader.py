"""A shuffled training epoch through torch: shard reads and samples per CPU-second, the streaming loader against
what a user would otherwise run.

- map_style_shuffled: `DataLoader(ds.to_torch(transform=decode_row), shuffle=True)`, the map-style view, which
  keeps one shard in memory and reads a shard again whenever the next random index lies in another one.
- stream_shuffled: `DataLoader(ds.to_torch_stream(shuffle=True))`, each shard read once per epoch, shuffled by
  shard order and a buffer (hoi_factory/torch_views.py).

Both decode every cell (PNG -> uint8 tensor) and yield every sample once. The dataset is the `ingest` pipeline
over procedural scenes (PNG images of `--side` px) in a local store, `--shard-size` inputs a shard. Interleaved
repeats (map, stream, map, ...), CPU time of this process (`time.process_time`, DataLoader without worker
processes, one torch thread). Shard reads are counted by wrapping the store's read; on an object store each
read is a GET of the whole shard, so reads x shard size is the epoch's I/O.

    python -m benchmarks.loader [--samples 512] [--shard-size 64] [--side 128] [--repeats 3]
        [--out benchmarks/results/loader.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.results_table import interleaved, median, show_and_save
from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.run import run_pipeline
from hoi_factory.torch_views import decode_row
from tasks.images.ingest import IngestConfig, IngestPipeline
from tasks.procedural.image_folder import write_image_folder


def make_dataset(root: Path, samples: int, shard_size: int, side: int):
    write_image_folder(root / "images", samples, seed=1, with_bad_files=False)
    config = IngestConfig(source=str(root / "images"), max_side=side,
                          execution=ExecutionConfig(executor="local", shard_size=shard_size))
    return run_pipeline(IngestPipeline(), config, Settings(store_url=str(root / "store"))).dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loader.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp), args.samples, args.shard_size, args.side)
        reads: dict[str, list[int]] = {"map_style_shuffled": [], "stream_shuffled": []}
        read_bytes = dataset.store.read_bytes
        counting = {"now": 0}

        def counted(*parts):
            counting["now"] += parts[-1].startswith("data/")
            return read_bytes(*parts)

        dataset.store.read_bytes = counted
        assert dataset.shards  # the shard index: read once, before any read is counted
        epochs = {"map_style_shuffled": 0, "stream_shuffled": 0}

        def epoch(name: str, loader_of) -> float:
            epochs[name] += 1
            counting["now"] = 0
            started = time.process_time()
            seen = sum(1 for _ in loader_of(epochs[name]))
            seconds = time.process_time() - started
            assert seen == len(dataset), (name, seen)
            reads[name].append(counting["now"])
            return seen / seconds

        def map_style(n: int):
            return DataLoader(dataset.to_torch(transform=decode_row), batch_size=None, shuffle=True,
                              generator=torch.Generator().manual_seed(n))

        def stream(n: int):
            view = dataset.to_torch_stream(shuffle=True, seed=0)
            view.set_epoch(n)
            return DataLoader(view, batch_size=None)

        measured = interleaved({"map_style_shuffled": lambda: epoch("map_style_shuffled", map_style),
                                "stream_shuffled": lambda: epoch("stream_shuffled", stream)}, args.repeats)
        shards = sum(1 for s in dataset.shards if s.rows)
        show_and_save(
            f"shuffled epoch of {len(dataset)} samples in {shards} shards ({args.side} px PNG)", "samples/CPU-s",
            measured,
            {"stream / map-style samples per CPU-second": median(measured["stream_shuffled"])
             / median(measured["map_style_shuffled"]),
             "map-style shard reads per epoch (median)": median(reads["map_style_shuffled"]),
             "stream shard reads per epoch (median)": median(reads["stream_shuffled"])},
            args.out, samples=len(dataset), shards=shards, shard_size=args.shard_size, side=args.side,
            shard_reads=reads, shard_bytes=sum(s.bytes for s in dataset.shards))


if __name__ == "__main__":
    main()
