"""Ray Data execution: one actor pool per stage group, shards streaming from pool to pool.

A stage group is a run of consecutive stages with equal resources (hoi_factory.pipeline.stage_groups). Each
group gets its own Ray Data actor pool, sized for its need: CPU groups `execution.workers` actors, GPU or
custom-resource groups as many actors as the cluster has units for (or `execution.accelerator_workers`).
A shard enters the first pool as its work items and leaves each pool as a `ShardWork` (its live rows,
rejects, errors, stats), so while the GPU pool works on shard k the CPU pools decode shard k+1 and encode
shard k-1. Shards stream from the plan in windows (WINDOW_SHARDS), one Ray Data execution each. The last
pool writes the shard when it needs no accelerator; otherwise a light writer task pool does (as many light
actors as the accelerator pool has, started with the others: a task per shard would start fresh worker
processes), so no GPU waits on Parquet encoding or uploads. The driver sees only the small
shard records.

Ray Data restarts a dead actor and re-runs its block (shards are deterministic and written atomically, so
a re-run shard is the same file). Actors ask for a fraction of a CPU when the cluster is small, because
pools that take every CPU leave none for Ray Data's own tasks and deadlock (seen on 2-core machines).
A ShardWork crosses pools as a Python object in a Ray Data column (serialized by Ray itself).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict

import numpy as np

from hoi_factory.datasets import ShardRecord
from hoi_factory.optional import require
from hoi_factory.pipeline import ShardJob, ShardWork, StageGroupRunner, group_resources
from hoi_factory.stage import Resources, Stage

ray = require("ray", "ray", "The Ray executor")

_dashboard_url: str | None = None
WRITER_CPUS = 0.25  # a shard writer encodes Parquet and uploads: light, and it must not wait for a full CPU
# Shards per Ray Data execution. Its pools start (and load their models) once per window: at 1024 shards of 64+
# samples that is under 1 % of a GPU pool's time, and the driver holds one window of work items, not the plan.
WINDOW_SHARDS = 1024


class NoResourcesForStage(RuntimeError):
    """A stage group needs a resource the Ray cluster does not have: it would wait forever."""


def ensure_ray(address: str | None) -> str | None:
    """Connect to `address` (a cluster) or start Ray locally, once per process; returns the dashboard URL."""
    global _dashboard_url
    if not ray.is_initialized():
        context = ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                           logging_level=logging.WARNING)
        _dashboard_url = context.dashboard_url or None
    return _dashboard_url


class _GroupActor:
    """One worker of a stage group's pool: sets its stages up once, then runs shards through them."""

    def __init__(self, runner: StageGroupRunner, first: bool, writes: bool):
        self.runner, self.first, self.writes = runner, first, writes
        self.runner.setup(worker_id=ray.get_runtime_context().get_actor_id() or "ray")

    def __call__(self, batch: dict) -> dict:
        if self.first:
            works = [ShardWork.start(ShardJob(**json.loads(job))) for job in batch["job"]]
        else:
            works = list(batch["work"])
        works = [self.runner.run(work) for work in works]
        if self.writes:
            return {"record": [self.runner.finish(work).model_dump_json() for work in works]}
        return {"work": _objects(works)}


def _objects(items: list) -> np.ndarray:
    """A column of Python objects (Ray Data would otherwise try to make an array of their fields)."""
    column = np.empty(len(items), dtype=object)
    column[:] = items
    return column


class _WriterActor:
    """Writes shards that have been through every stage group (output checks, Parquet, completion record)."""

    def __init__(self, runner: StageGroupRunner):
        self.runner = runner

    def __call__(self, batch: dict) -> dict:
        return {"record": [self.runner.finish(work).model_dump_json() for work in batch["work"]]}


def _resource_args(resources: Resources, num_cpus: float) -> dict:
    args: dict = {"num_cpus": num_cpus}
    if resources.num_gpus:
        args["num_gpus"] = resources.num_gpus
    if resources.custom:
        args["resources"] = dict(resources.custom)
    return args


def _largest(resources: list[Resources]) -> Resources:
    custom: dict[str, float] = {}
    for r in resources:
        for key, amount in r.custom:
            custom[key] = max(custom.get(key, 0.0), amount)
    return Resources(num_cpus=max((r.num_cpus for r in resources), default=1.0),
                     num_gpus=max((r.num_gpus for r in resources), default=0.0), custom=tuple(sorted(custom.items())))


class RayExecutor:
    """`fuse=True` runs the whole chain in one pool sized by the largest need (the pre-v2 way, kept as the
    benchmark's baseline)."""

    def __init__(self, address: str | None = None, workers: int = 2, accelerator_workers: int | None = None,
                 fuse: bool = False, progress_bars: bool = False):
        self.address = address
        self.progress_bars = progress_bars
        self.workers = workers
        self.accelerator_workers = accelerator_workers
        self.fuse = fuse

    def describe(self) -> str:
        pools = "one fused pool" if self.fuse else "a pool per stage group"
        return f"ray ({self.address or 'local'}, {pools}, {self.workers} workers per CPU pool)"

    def pool_size(self, resources: Resources, cluster: dict[str, float], label: str) -> int:
        if not resources.accelerated:
            return self.workers
        fits = [cluster.get("GPU", 0.0) / resources.num_gpus] if resources.num_gpus else []
        fits += [cluster.get(key, 0.0) / amount for key, amount in resources.custom]
        fit = int(min(fits))
        if fit < 1:
            raise NoResourcesForStage(
                f"{label} needs {resources} per worker but the Ray cluster has "
                f"{ {k: v for k, v in cluster.items() if k in ('CPU', 'GPU') or k in dict(resources.custom)} }; "
                "give it the resource or run those stages without it (e.g. gpus=0)")
        return min(fit, self.accelerator_workers or fit)

    def execute(self, runners: list[StageGroupRunner], stages: list[Stage], jobs: Iterable[ShardJob],
                on_done) -> None:
        """The jobs stream in windows of WINDOW_SHARDS shards, so the driver never holds the whole plan."""
        jobs = iter(jobs)
        while window := list(itertools.islice(jobs, WINDOW_SHARDS)):
            self._execute_window(runners, stages, window, on_done)

    def _execute_window(self, runners: list[StageGroupRunner], stages: list[Stage], jobs: list[ShardJob],
                        on_done) -> None:
        ensure_ray(self.address)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = self.progress_bars  # off by default: the factory draws per-stage bars
        context.print_on_execution_start = False
        if self.fuse:
            first = runners[0]
            runners = [StageGroupRunner(first.pipeline, first.config, first.settings, range(len(stages)), first.sink)]
            needs = [_largest([s.resources for s in stages])]
        else:
            needs = [group_resources(stages, runner.group) for runner in runners]
        cluster = ray.cluster_resources()
        labels = [", ".join(s.name for s in stages[r.group.start : r.group.stop]) or "(no stages)" for r in runners]
        sizes = [min(self.pool_size(need, cluster, f"stage group [{label}]"), len(jobs))
                 for need, label in zip(needs, labels)]
        writer_apart = needs[-1].accelerated
        # Keep half a CPU for Ray Data's own tasks (and the writers'); share the rest among the pools' actors.
        writers_cpus = WRITER_CPUS * sizes[-1] if writer_apart else 0.0
        cpu_share = (cluster.get("CPU", 1.0) - 0.5 - writers_cpus) / sum(sizes)
        data = ray.data.from_items([{"job": json.dumps(asdict(job))} for job in jobs], override_num_blocks=len(jobs))
        for position, (runner, need, size) in enumerate(zip(runners, needs, sizes)):
            data = data.map_batches(
                _GroupActor, batch_size=1,
                fn_constructor_args=(runner, position == 0, position == len(runners) - 1 and not writer_apart),
                compute=ray.data.ActorPoolStrategy(size=size),
                **_resource_args(need, round(max(0.1, min(need.num_cpus, cpu_share)), 2)),
            )
        if writer_apart:
            data = data.map_batches(_WriterActor, batch_size=1, fn_constructor_args=(runners[-1],),
                                    compute=ray.data.ActorPoolStrategy(size=sizes[-1]), num_cpus=WRITER_CPUS)
        for row in data.iter_rows():
            on_done(ShardRecord.model_validate_json(row["record"]))
