"""A pipeline = a plan of work items + a chain of stages + the schema of what it writes.

The driver only plans (light work items: paths, ids, parameters) and cuts the plan into shards; workers
load the heavy data, run the stages and write their shard into the store themselves, so no dataset ever
passes through the driver. A shard is the unit of resume.

The stage chain is cut into *stage groups*: consecutive stages with equal resources. Each group runs in
its own worker pool (hoi_factory.executors), and a shard travels from group to group as a `ShardWork`
(its live rows, rejects, errors and stats); the last group's worker writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import pyarrow as pa

from hoi_factory import ids
from hoi_factory.config import ExecutionConfig, RunConfig, Settings
from hoi_factory.context import StageContext, device_for
from hoi_factory.datasets import (
    ID_NAMES,
    REJECTS_SCHEMA,
    ShardRecord,
    ShardSink,
    drop_non_finite,
    rows_to_table,
)
from hoi_factory.scrub import scrub
from hoi_factory.stage import Resources, Stage, StageError, StageOutput, StageStats, run_stages

C = TypeVar("C", bound=RunConfig)
OUTPUT_CHECKS = "output checks"  # the funnel step after the stages: schema fit, finite floats
PLANNED_KEYS = ID_NAMES | {"index"}  # keys every planned item gets (see assign_ids)
ERRORS_KEPT_PER_SHARD = 3  # errors recorded with their tracebacks in a shard's record
ID_CHUNK = 65_536  # sample ids PlanTracker gathers before packing them into 8-byte integers


class PlanError(ValueError):
    """The inputs of a run cannot be planned (missing folder, unknown parent dataset...)."""


class ColumnError(PlanError):
    """A stage chain that cannot work: a stage needs a key nothing makes, or a schema column nobody makes."""


class Pipeline(Generic[C]):
    """Subclass per pipeline: set the class attributes, implement `plan` and `stages`."""

    name: ClassVar[str]
    description: ClassVar[str]
    config_class: ClassVar[type[RunConfig]]
    schema: ClassVar[pa.Schema]
    item_keys: ClassVar[frozenset[str]] = frozenset({"input_id"})  # keys every item of `plan` carries
    preview_column: ClassVar[str | None] = None  # a PNG bytes column shown in sample grids
    allow_non_finite: ClassVar[frozenset[str]] = frozenset()  # float columns where NaN/inf are meaningful

    def plan(self, config: C, context: StageContext) -> Iterable[dict[str, Any]]:
        """Light, JSON-able work items, each with an `input_id` (and an `index` when one input gives many); a
        generator keeps the driver's memory bounded. It is called again on resume and must yield the same items
        in the same order for the same inputs."""
        raise NotImplementedError

    def plan_summary(self, config: C, context: StageContext) -> PlanSummary | None:
        """The plan's key and count without walking it, when the config alone fixes the plan (no inputs to list):
        then reuse and resume checks take no time per item. None (the default): one pass over the plan."""
        return None

    def stages(self, config: C) -> list[Stage]:
        raise NotImplementedError

    def planned_keys(self, config: C) -> frozenset[str]:
        """The keys every planned item carries with this config: `item_keys`, unless they depend on it."""
        return self.item_keys

    def check_inputs(self, config: C, context: StageContext) -> None:
        """Raise PlanError / StoreError naming the input at fault (a missing folder, an unknown parent dataset)
        before anything starts. By default: start the plan (a generator checks its inputs before its first item)
        and discard it; override when that is expensive or the faults surface later."""
        next(iter(self.plan(config, context)), None)

    def parents(self, config: C, context: StageContext) -> list[str]:
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


def check_columns(pipeline: Pipeline, stages: list[Stage], config: RunConfig | None = None) -> None:
    """The declared columns must chain: every key a stage needs is planned (with `config`, when given) or made
    before it, and every schema column is made by some stage. Raises ColumnError naming the stage and the key."""
    planned = pipeline.item_keys if config is None else pipeline.planned_keys(config)
    available = set(PLANNED_KEYS | planned)
    for position, stage in enumerate(stages):
        missing = sorted(stage.needs - available)
        if missing:
            raise ColumnError(
                f"{pipeline.name}: stage {position + 1} ({stage.name}) needs row key(s) {missing} that neither "
                f"the plan nor an earlier stage makes (available: {sorted(available)})")
        available |= stage.makes
    unmade = [f.name for f in pipeline.schema if f.name not in available]
    if unmade:
        raise ColumnError(f"{pipeline.name}: schema column(s) {unmade} are made by no stage "
                          f"(the stages make: {sorted(available)})")


def stage_groups(stages: list[Stage]) -> list[range]:
    """Consecutive stages with equal resources, as ranges of stage positions: one worker pool each."""
    groups: list[range] = []
    start = 0
    for position in range(1, len(stages) + 1):
        if position == len(stages) or stages[position].resources != stages[start].resources:
            groups.append(range(start, position))
            start = position
    return groups


@dataclass
class ShardJob:
    """Consecutive items of the plan: `index` is the plan position of the first, so a shard's name and its
    completion record say which items it covers ([index, index + len(items))), whatever the shard size."""

    index: int
    items: list[dict[str, Any]]


@dataclass(frozen=True)
class PlanSummary:
    """What identifies a plan and how many items it has. `key` stands for the items in the run's fingerprint:
    the hash of every item by default (one pass over the plan), or a pipeline's cheaper equivalent."""

    key: str
    count: int


def assign_ids(items: Iterable[dict[str, Any]], config_hash: str) -> list[dict[str, Any]]:
    """The items with their deterministic sample ids and seeds (done per shard, for the items to be made)."""
    assigned = []
    for item in items:
        index = int(item.get("index", 0))
        sample_id, seed = ids.sample_identity(config_hash, item["input_id"], index)
        assigned.append({**item, "index": index, "sample_id": sample_id, "seed": seed})
    return assigned


class PlanTracker:
    """Watches a plan stream go by without holding it: counts it, checks each item has the pipeline's declared
    keys, hashes it (the plan's key, when `hash_items`), notes the parent versions items point at (lineage) and
    finds items planned twice (same input_id and index: they would alias one sample) from 8 bytes per item,
    sorted when the stream ends. The 8 bytes are Python's 64-bit hash of (input_id, index): a false alarm has a
    chance of about n^2 / 2^65 (3e-6 at 10M items)."""

    def __init__(self, items: Iterable[dict[str, Any]], item_keys: frozenset[str], hash_items: bool = True):
        self.items = items
        self.item_keys = item_keys
        self.hash_items = hash_items  # off when the pipeline's plan_summary gives the key
        self.count = 0
        self.parents: set[str] = set()
        self._hash = hashlib.sha256()
        self._id_bits: list[np.ndarray] = []
        self._pending: list[int] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self.items:
            if missing := self.item_keys - item.keys():
                raise PlanError(f"work item {item!r} lacks {sorted(missing)}")
            if self.hash_items:
                self._hash.update(json.dumps(item, sort_keys=True, separators=(",", ":"), default=str).encode())
                self._hash.update(b"\n")
            self._pending.append(hash((str(item["input_id"]), int(item.get("index", 0)))))
            if "parent" in item:  # lineage: the parent versions items point at (hoi_factory.parents)
                self.parents.add(item["parent"])
            if len(self._pending) >= ID_CHUNK:
                self._flush()
            self.count += 1
            yield item

    def _flush(self) -> None:
        self._id_bits.append(np.array(self._pending, dtype=np.int64))
        self._pending = []

    def summary(self) -> PlanSummary:
        """The plan's key and count; raises PlanError if an item was planned twice. Call once it is consumed."""
        self._flush()
        bits = np.sort(np.concatenate(self._id_bits))
        self._id_bits = [bits]
        if (bits[1:] == bits[:-1]).any():
            raise PlanError(f"{int((bits[1:] == bits[:-1]).sum())} work item(s) planned twice (same input_id and "
                            "index): each would alias another sample")
        return PlanSummary(self._hash.hexdigest()[:16], self.count)


def cut_shards(items: Iterable[dict[str, Any]], shard_size: int, covered: Iterable[range] = ()
               ) -> Iterator[ShardJob]:
    """Shards of at most `shard_size` consecutive items over the plan positions no `covered` range holds, cut as
    the items stream (items inside a covered range are passed over, never held): a resume with another shard
    size makes exactly the missing items, once each."""
    done = sorted(covered, key=lambda r: r.start)
    next_done = 0
    batch: list[dict[str, Any]] = []
    start = 0
    for position, item in enumerate(items):
        while next_done < len(done) and done[next_done].stop <= position:
            next_done += 1
        inside = next_done < len(done) and done[next_done].start <= position
        if batch and (inside or len(batch) == shard_size):
            yield ShardJob(start, batch)
            batch = []
        if not inside:
            if not batch:
                start = position
            batch.append(item)
    if batch:
        yield ShardJob(start, batch)


def worker_info() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        import ray

        if ray.is_initialized():
            info["node_id"] = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return info


@dataclass
class ShardWork:
    """A shard on its way through the stage groups."""

    index: int
    inputs: int
    output: StageOutput
    seconds: float = 0.0
    workers: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, job: ShardJob) -> ShardWork:
        return cls(job.index, len(job.items), StageOutput(rows=list(job.items)))  # assign_ids made them: ours


class StageGroupRunner:
    """Runs one stage group of a pipeline over shards; built once per worker. `finish` writes a shard that
    has been through every group."""

    def __init__(self, pipeline: Pipeline, config: RunConfig, settings: Settings, group: range, sink: ShardSink):
        self.pipeline = pipeline
        self.config = config
        self.settings = settings
        self.group = group
        self.sink = sink
        self.stages: list[Stage] | None = None

    def setup(self, worker_id: str = "local") -> None:
        stages = self.pipeline.stages(self.config)[self.group.start : self.group.stop]
        context = StageContext(self.settings, device_for(stages[0].resources.num_gpus if stages else 0.0), worker_id)
        for stage in stages:
            stage.setup(context)
        self.stages = stages

    def run(self, work: ShardWork) -> ShardWork:
        if self.stages is None:
            self.setup()
        started = time.perf_counter()
        run_stages(self.stages, work.output.rows, self.config.execution.batch_retries, work.output)
        work.seconds += time.perf_counter() - started
        work.workers.append(worker_info())
        return work

    def finish(self, work: ShardWork) -> ShardRecord:
        """Output checks (schema fit, finite floats), then the shard's files and completion record."""
        started = time.perf_counter()
        output = work.output
        table, misfits = rows_to_table(output.rows, self.sink.schema)
        table, non_finite = drop_non_finite(table, self.pipeline.allow_non_finite)
        errors = [*output.errors, *(StageError(r.sample_id, r.input_id, OUTPUT_CHECKS, r.detail) for r in misfits)]
        secrets = self.settings.secrets()  # error text may quote a service's answer: never store a credential
        errors = [replace(e, error=scrub(e.error, secrets), traceback=scrub(e.traceback, secrets)) for e in errors]
        rejects = [*output.rejects, *((OUTPUT_CHECKS, r) for r in non_finite)]
        reject_table = pa.Table.from_pylist(
            [{"sample_id": r.sample_id, "input_id": r.input_id, "stage": stage, "reason": r.reason,
              "detail": r.detail, "kind": "reject", "thumbnail": r.thumbnail} for stage, r in rejects]
            + [{"sample_id": e.sample_id, "input_id": e.input_id, "stage": e.stage, "reason": "error",
                "detail": e.error, "kind": "error", "thumbnail": None} for e in errors],
            schema=REJECTS_SCHEMA,
        )
        stats = {name: s.to_dict() for name, s in output.stats.items()}
        if misfits or non_finite:
            stats[OUTPUT_CHECKS] = StageStats(
                rows_in=len(output.rows), rows_out=table.num_rows, errors=len(misfits),
                rejected=Counter(r.reason for r in non_finite)).to_dict()
        seconds = work.seconds + time.perf_counter() - started
        return self.sink.write(work.index, table, reject_table, work.inputs, stats,
                               {"groups": work.workers, **worker_info()}, seconds,
                               errors=len(errors), first_errors=[e.to_dict() for e in errors[:ERRORS_KEPT_PER_SHARD]])


def group_runners(pipeline: Pipeline, config: RunConfig, settings: Settings, sink: ShardSink,
                  stages: list[Stage]) -> list[StageGroupRunner]:
    """One runner per stage group, in chain order (any of them can write a finished shard)."""
    return [StageGroupRunner(pipeline, config, settings, group, sink) for group in stage_groups(stages) or [range(0)]]


def group_resources(stages: list[Stage], group: range) -> Resources:
    return stages[group.start].resources if len(group) else Resources()
