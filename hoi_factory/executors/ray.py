"""Ray Data execution: one row per shard job flows through an actor pool of ShardRunners.

Each actor sets its stages up once and then writes whole shards to the store; the driver sees only the
small shard records. Ray Data restarts a dead actor and re-runs its shard (shards are deterministic and
written atomically, so a re-run shard is the same file). Actors ask for a fraction of a CPU when the cluster is small, because a pool that
takes every CPU leaves none for Ray Data's own tasks and deadlocks (seen on 2-core machines).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from hoi_factory.datasets import ShardRecord
from hoi_factory.optional import require
from hoi_factory.pipeline import ShardJob, ShardRunner

ray = require("ray", "ray", "The Ray executor")



def ensure_ray(address: str | None) -> str | None:
    """Connect to `address` (a cluster) or start Ray locally, once per process; returns the dashboard URL."""
    global _dashboard_url
    if not ray.is_initialized():
        context = ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                           logging_level=logging.WARNING)
        _dashboard_url = context.dashboard_url or None
    return _dashboard_url


_dashboard_url: str | None = None


class _ShardActor:
    def __init__(self, runner: ShardRunner):
        self.runner = runner
        self.runner.setup()

    def __call__(self, batch: dict) -> dict:
        records = [self.runner.run(ShardJob(**json.loads(job))) for job in batch["job"]]
        return {"record": [r.model_dump_json() for r in records]}


class RayExecutor:
    def __init__(self, address: str | None = None, workers: int = 2):
        self.address = address
        self.workers = workers

    def describe(self) -> str:
        return f"ray ({self.address or 'local'}, {self.workers} workers)"

    def actor_cpus(self, wanted: float) -> float:
        available = ray.cluster_resources().get("CPU", 1.0)
        share = (available - 0.5) / self.workers  # keep half a CPU for Ray Data's read and scheduling tasks
        return round(max(0.1, min(wanted, share)), 2)

    def execute(self, runner: ShardRunner, jobs: list[ShardJob], on_done) -> None:
        if not jobs:
            return
        ensure_ray(self.address)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the factory draws its own progress
        context.print_on_execution_start = False
        resources = runner.resources
        jobs_ds = ray.data.from_items([{"job": json.dumps(asdict(job))} for job in jobs], override_num_blocks=len(jobs))
        records = jobs_ds.map_batches(
            _ShardActor,
            fn_constructor_args=(runner,),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(jobs))),
            num_cpus=self.actor_cpus(resources.num_cpus),
            num_gpus=resources.num_gpus or None,
        )
        for row in records.iter_rows():
            on_done(ShardRecord.model_validate_json(row["record"]))
