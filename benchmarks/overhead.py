"""Factory overhead and worker scaling on a CPU stage with a fixed per-item cost.

The same work (the synthetic pipeline's FixedCostWork: `busy_wait` spins on this process's CPU time, then
the item's seeded values), in one run on the same machine, interleaved and repeated (bare, in-process,
Ray 1, Ray 2, bare, ...):
- a bare Python loop doing the work, nothing stored (what a user would otherwise run);
- the factory in-process (executor `local`: plan, stages, Parquet shards, checksums, manifest, report pictures);
- the factory on local Ray (executor `ray`) with 1 worker and with 2 workers (Ray already started, as on a
  cluster).
Wall time throughout (Ray runs the work in other processes), so run it on an otherwise idle machine.
Printed: items/s of each (median, min-max); ratios of medians: factory / bare loop (overhead, in-process and
on Ray) and 2 workers / 1 worker (scaling: at most 2 on 2 cores, since the work is CPU time).

    python -m benchmarks [--count 2000] [--work-ms 10] [--repeats 3] [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.results_table import interleaved, median, show_and_save
from hoi_factory.config import Settings
from hoi_factory.ids import sample_seed
from hoi_factory.run import run_pipeline
from tasks.synthetic.pipeline import FixedCostWork, SyntheticConfig, SyntheticPipeline, busy_wait, seeded_value_rows


def bare_loop(config: SyntheticConfig) -> float:
    """Items/s of a plain loop over the same work."""
    started = time.perf_counter()
    config_hash = config.config_hash()
    for start in range(0, config.count, FixedCostWork.batch_size):  # as the stage: one draw per batch
        indices = range(start, min(start + FixedCostWork.batch_size, config.count))
        busy_wait(config.work_ms / 1000 * len(indices))
        seeded_value_rows([sample_seed(config_hash, "synthetic", i) for i in indices], config.values).sum(axis=1)
    return config.count / (time.perf_counter() - started)


def factory(config: SyntheticConfig, executor: str, workers: int) -> float:
    """Items/s of a whole run (plan to manifest) into a fresh store."""
    config = config.model_copy(update={"execution": config.execution.model_copy(
        update={"executor": executor, "workers": workers})})
    with tempfile.TemporaryDirectory() as store:
        started = time.perf_counter()
        result = run_pipeline(SyntheticPipeline(), config, Settings(store_url=store))
        seconds = time.perf_counter() - started
    assert not result.reused and result.dataset.manifest.num_samples == config.count, "lost samples"
    return config.count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="items per measurement")
    parser.add_argument("--work-ms", type=float, default=10.0, help="CPU milliseconds per item")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.json"))
    args = parser.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    config = SyntheticConfig(count=args.count, work_ms=args.work_ms, execution={"shard_size": args.shard_size})
    warm = config.model_copy(update={"count": 4})
    factory(warm, "local", 1), factory(warm, "ray", 1), factory(warm, "ray", 2)  # imports, Ray Data's first start

    rates = interleaved({
        "bare_loop": lambda: bare_loop(config),
        "factory_in_process": lambda: factory(config, "local", 1),
        "factory_ray_1_worker": lambda: factory(config, "ray", 1),
        "factory_ray_2_workers": lambda: factory(config, "ray", 2),
    }, args.repeats)
    ray.shutdown()
    bare = median(rates["bare_loop"])
    ratios = {
        "overhead_in_process_vs_bare": median(rates["factory_in_process"]) / bare,
        "overhead_ray_1_worker_vs_bare": median(rates["factory_ray_1_worker"]) / bare,
        "overhead_ray_2_workers_vs_bare": median(rates["factory_ray_2_workers"]) / bare,
        "scaling_2_vs_1_workers": median(rates["factory_ray_2_workers"]) / median(rates["factory_ray_1_worker"]),
    }
    show_and_save(f"{args.count} items x {args.work_ms} ms CPU each, shards of {args.shard_size} "
                  "(wall time: Ray runs in other processes)", "items/s", rates, ratios, args.out,
                  benchmark="overhead", timing="wall", count=args.count, work_ms=args.work_ms,
                  shard_size=args.shard_size)


if __name__ == "__main__":
    main()
