"""A pipeline = a plan of work items + a chain of stages + the schema of what it writes.

The driver only plans (light work items: paths, ids, parameters) and cuts the plan into shards; workers
load the heavy data, run the stages and write their shard into the store themselves, so no dataset ever
passes through the driver. A shard is the unit of resume.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pyarrow as pa

from hoi_factory import ids
from hoi_factory.config import ExecutionConfig, RunConfig
from hoi_factory.datasets import (
    REJECTS_SCHEMA,
    DatasetStore,
    ShardRecord,
    ShardSink,
    drop_non_finite,
    rows_to_table,
)
from hoi_factory.stage import Resources, Stage, run_stages

C = TypeVar("C", bound=RunConfig)
OUTPUT_CHECKS = "output checks"  # the funnel step after the stages: schema fit, finite floats


class PlanError(ValueError):
    """The inputs of a run cannot be planned (missing folder, unknown parent dataset...)."""


class Pipeline(Generic[C]):
    """Subclass per pipeline: set the class attributes, implement `plan` and `stages`."""

    name: ClassVar[str]
    description: ClassVar[str]
    config_class: ClassVar[type[RunConfig]]
    schema: ClassVar[pa.Schema]
    preview_column: ClassVar[str | None] = None  # a PNG bytes column shown in sample grids
    allow_non_finite: ClassVar[frozenset[str]] = frozenset()  # float columns where NaN/inf are meaningful

    def plan(self, config: C, datasets: DatasetStore) -> list[dict[str, Any]]:
        """Light, JSON-able work items, each with an `input_id` (and an `index` when one input gives many)."""
        raise NotImplementedError

    def stages(self, config: C) -> list[Stage]:
        raise NotImplementedError

    def parents(self, config: C) -> list[str]:
        """Dataset versions (`name/version`) this run reads besides those its items point at (which count
        by themselves, see hoi_factory.parents): its lineage."""
        return []

    def demo_config(self, inputs: Path, execution: ExecutionConfig) -> RunConfig | None:
        """The small run `hoi-factory demo` makes, with any stand-in inputs written under `inputs`;
        None keeps the pipeline out of the demo."""
        return None

    def dataset_metrics(self, version) -> dict[str, float]:
        """Figures of the whole version (e.g. mean quality), computed from its shards before the manifest."""
        return {}

    def report_pictures(self, version) -> dict[str, bytes]:
        """Pipeline-specific PNG pictures for the version's report (e.g. occupancy renders), by name."""
        return {}


@dataclass
class ShardJob:
    index: int
    items: list[dict[str, Any]]


def assign_ids(items: list[dict[str, Any]], config_hash: str) -> list[dict[str, Any]]:
    """Give every item its deterministic sample id and seed; refuse duplicates, which would alias samples."""
    seen: set[str] = set()
    assigned = []
    for item in items:
        if "input_id" not in item:
            raise PlanError(f"work item {item!r} has no input_id")
        index = int(item.get("index", 0))
        sid = ids.sample_id(config_hash, str(item["input_id"]), index)
        if sid in seen:
            raise PlanError(f"input {item['input_id']!r} index {index} is planned twice")
        seen.add(sid)
        assigned.append({**item, "index": index, "sample_id": sid,
                         "seed": ids.sample_seed(config_hash, str(item["input_id"]), index)})
    return assigned


def cut_shards(items: list[dict[str, Any]], shard_size: int) -> list[ShardJob]:
    return [ShardJob(i // shard_size, items[i : i + shard_size]) for i in range(0, len(items), shard_size)]


def worker_info() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        import ray

        if ray.is_initialized():
            info["node_id"] = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return info


class ShardRunner:
    """Runs a pipeline's stages over shards and writes them. Built once per worker; `setup` loads the stages."""

    def __init__(self, pipeline: Pipeline, config: RunConfig, sink: ShardSink):
        self.pipeline = pipeline
        self.config = config
        self.sink = sink
        self.stages: list[Stage] | None = None

    @property
    def resources(self) -> Resources:
        return Resources.largest([s.resources for s in self.pipeline.stages(self.config)])

    def setup(self) -> None:
        self.stages = self.pipeline.stages(self.config)
        for stage in self.stages:
            stage.setup()

    def run(self, job: ShardJob) -> ShardRecord:
        if self.stages is None:
            self.setup()
        started = time.perf_counter()
        output = run_stages(self.stages, [dict(item) for item in job.items], self.config.execution.batch_retries)
        table, misfits = rows_to_table(output.rows, self.sink.schema)
        table, non_finite = drop_non_finite(table, self.pipeline.allow_non_finite)
        checked_out = misfits + non_finite
        rejects = [(stage, r) for stage, r in output.rejects] + [(OUTPUT_CHECKS, r) for r in checked_out]
        reject_table = pa.Table.from_pylist(
            [{"sample_id": r.sample_id, "input_id": r.input_id, "stage": stage, "reason": r.reason, "detail": r.detail}
             for stage, r in rejects],
            schema=REJECTS_SCHEMA,
        )
        stats = {name: s.to_dict() for name, s in output.stats.items()}
        if checked_out:
            stats[OUTPUT_CHECKS] = {"rows_in": len(output.rows), "rows_out": table.num_rows, "seconds": 0.0,
                                    "rejected": dict(Counter(r.reason for r in checked_out))}
        return self.sink.write(job.index, table, reject_table, len(job.items), stats, worker_info(),
                               time.perf_counter() - started)
