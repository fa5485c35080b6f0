"""A pool per stage group vs one fused pool, on a CPU stage followed by an accelerator stage.

The synthetic pipeline with `accelerator_ms`: stage A spins `item_ms` of CPU time per item; stage B waits
`item_ms` per item holding one unit of the Ray resource `accelerator` (one unit on this local cluster: a
stand-in for one GPU, its work a sleep that uses no CPU). Equal per-item times.

- fused (the executor before core v2, and what a single `map_batches` over the whole chain gives): one pool
  whose actors run A then B, each sized by the largest need, so only one actor exists (one accelerator
  unit) and the accelerator idles while that actor does A's CPU work;
- per-pool: A in a CPU pool (`--workers` actors), B in its own pool, shards streaming between them.

Both run the same shards through the executor in the same Ray session, interleaved (fused, per-pool,
fused, ...). Printed: items/s of each, the ratio of medians, and B's busy fraction (the accelerator
stage's own seconds over the execution's wall time) in each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.results_table import interleaved, median, show_and_save
from hoi_factory.config import Settings
from hoi_factory.context import StageContext
from hoi_factory.datasets import DatasetStore
from hoi_factory.executors.ray import RayExecutor
from hoi_factory.ids import fingerprint
from hoi_factory.pipeline import assign_ids, cut_shards, group_runners
from hoi_factory.storage import Store
from tasks.synthetic.pipeline import ACCELERATOR, AcceleratorWork, SyntheticConfig, SyntheticPipeline


def execute(config: SyntheticConfig, fuse: bool, busy: list[float]) -> float:
    """Items/s through the executor alone (plan, lease and commit excluded: the same for both);
    appends B's busy fraction to `busy`."""
    pipeline = SyntheticPipeline()
    stages = pipeline.stages(config)
    items = assign_ids(pipeline.plan(config, StageContext(Settings())), config.config_hash())
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(store_url=folder)
        writer = DatasetStore(Store.from_settings(settings)).begin("synthetic", "v1", fingerprint(items),
                                                                    pipeline.schema)
        executor = RayExecutor(workers=config.execution.workers, fuse=fuse)
        records = []
        started = time.perf_counter()
        executor.execute(group_runners(pipeline, config, settings, writer.sink, stages), stages,
                         cut_shards(items, config.execution.shard_size), records.append)
        wall = time.perf_counter() - started
        writer.lease.release()
    assert sum(r.rows for r in records) == config.count, "lost samples"
    accelerator_seconds = sum(r.stages[AcceleratorWork.__name__]["seconds"] for r in records)
    busy.append(accelerator_seconds / wall)
    return config.count / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1600,
                        help="items per measurement (~40 s of accelerator work: amortizes ~4 s of pool start-up)")
    parser.add_argument("--item-ms", type=float, default=25.0, help="per-item time of each stage")
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="actors of the CPU pool")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pools.json"))
    args = parser.parse_args()

    import ray

    ray.init(resources={ACCELERATOR: 1}, include_dashboard=False, log_to_driver=False)
    config = SyntheticConfig(count=args.count, work_ms=args.item_ms, accelerator_ms=args.item_ms, values=4,
                             execution={"executor": "ray", "workers": args.workers, "shard_size": args.shard_size})
    warm = config.model_copy(update={"count": 2 * args.shard_size})
    execute(warm, True, []), execute(warm, False, [])  # imports, Ray Data's first start

    busy: dict[str, list[float]] = {"fused": [], "per_pool": []}
    rates = interleaved({"fused": lambda: execute(config, True, busy["fused"]),
                         "per_pool": lambda: execute(config, False, busy["per_pool"])}, args.repeats)
    ray.shutdown()
    ratios = {"per_pool_vs_fused_throughput": median(rates["per_pool"]) / median(rates["fused"]),
              "accelerator_busy_fraction_per_pool": median(busy["per_pool"]),
              "accelerator_busy_fraction_fused": median(busy["fused"])}
    show_and_save(f"{args.count} items, A: {args.item_ms} ms CPU, B: {args.item_ms} ms on the accelerator, "
                  f"shards of {args.shard_size}, {args.workers} CPU actors", "items/s", rates, ratios, args.out,
                  benchmark="pools", busy_fraction=busy, count=args.count, item_ms=args.item_ms,
                  shard_size=args.shard_size, workers=args.workers)


if __name__ == "__main__":
    main()
