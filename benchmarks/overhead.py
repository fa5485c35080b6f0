"""Factory overhead and worker scaling on a CPU stage with a fixed per-item cost.

Measured in one run, on the same machine, the same work (the synthetic pipeline's FixedCostWork):
- a bare Python loop doing the work, nothing stored;
- the factory in-process (plan, stages, Parquet shards, checksums, manifest, report pictures);
- the factory on local Ray with 1 worker and with 2 workers (Ray already started, as on a cluster).
Ratios: factory throughput / bare loop throughput (overhead), 2 workers / 1 worker (scaling).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.results_table import show_and_save
from hoi_factory.config import Settings
from hoi_factory.ids import sample_seed
from hoi_factory.run import run_pipeline
from tasks.synthetic.pipeline import (
    SyntheticConfig,
    SyntheticPipeline,
    busy_wait,
    seeded_values,
)


def bare_loop(config: SyntheticConfig) -> float:
    started = time.perf_counter()
    config_hash = config.config_hash()
    for index in range(config.count):
        busy_wait(config.work_ms / 1000)
        seeded_values(sample_seed(config_hash, "synthetic", index), config.values).sum()
    return time.perf_counter() - started


def factory(config: SyntheticConfig, executor: str, workers: int) -> float:
    config = config.model_copy(update={"execution": config.execution.model_copy(
        update={"executor": executor, "workers": workers})})
    with tempfile.TemporaryDirectory() as store:
        started = time.perf_counter()
        run_pipeline(SyntheticPipeline(), config, Settings(store_url=store))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="items per measurement")
    parser.add_argument("--work-ms", type=float, default=10.0, help="CPU milliseconds per item")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.json"))
    args = parser.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    config = SyntheticConfig(count=args.count, work_ms=args.work_ms, execution={"shard_size": args.shard_size})
    factory(config.model_copy(update={"count": 4}), "ray", 1)  # warm-up: imports, Ray Data start

    seconds = {
        "bare_loop": bare_loop(config),
        "factory_in_process": factory(config, "local", 1),
        "factory_ray_1_worker": factory(config, "ray", 1),
        "factory_ray_2_workers": factory(config, "ray", 2),
    }
    throughput = {name: args.count / s for name, s in seconds.items()}
    ratios = {
        "overhead_in_process": throughput["factory_in_process"] / throughput["bare_loop"],
        "overhead_ray_1_worker": throughput["factory_ray_1_worker"] / throughput["bare_loop"],
        "scaling_2_vs_1_workers": throughput["factory_ray_2_workers"] / throughput["factory_ray_1_worker"],
    }
    ray.shutdown()

    show_and_save(f"{args.count} items x {args.work_ms} ms CPU each, shards of {args.shard_size}", "items/s",
                  seconds, throughput, ratios, args.out, benchmark="overhead", count=args.count,
                  work_ms=args.work_ms, shard_size=args.shard_size)

if __name__ == "__main__":
    main()
