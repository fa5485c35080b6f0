"""Run a pipeline into a dataset version: plan -> lease the version -> execute pending shards -> commit.

Re-running the same config resumes: finished shards are skipped, the rest are made again with the same
ids and seeds, and the manifest is written only when every shard is there.

The plan streams: the driver never holds it. It is walked once to identify it (count, key, duplicates; skipped
when the pipeline's `plan_summary` knows them from the config) and once more while it is cut into shards and
executed, checked against the first walk. The driver holds the shards in flight and a compact ledger of finished
ones (hoi_factory.datasets.ShardLedger), so its memory grows with the shard count, not the sample count.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from hoi_factory import ids
from hoi_factory.code_identity import code_identity
from hoi_factory.config import RunConfig, Settings, validate_run_config
from hoi_factory.context import StageContext
from hoi_factory.datasets import DatasetStore, DatasetVersion, ShardLedger, ShardRecord
from hoi_factory.executors import make_executor
from hoi_factory.pipeline import (
    Pipeline,
    PlanError,
    PlanTracker,
    ShardJob,
    assign_ids,
    check_columns,
    cut_shards,
    group_runners,
)
from hoi_factory.report import write_report
from hoi_factory.storage import check_name
from hoi_factory.versions import VersionBusy

log = logging.getLogger(__name__)
Progress = Callable[[int, int, dict[str, int]], None]
"""(inputs done, inputs in all, samples each stage has taken in so far), counted over the finished shards."""


class ErrorBudgetExceeded(RuntimeError):
    """Too many samples failed with an exception: the run publishes nothing."""


@dataclass
class RunResult:
    dataset: DatasetVersion
    reused: bool  # an identical run was already published: nothing was made
    shards_resumed: int = 0
    seconds: float = 0.0
    executor: str = ""

    def summary(self) -> dict[str, Any]:
        """What the CLI prints and the flow returns (and shows as an artifact)."""
        manifest = self.dataset.manifest
        return {"dataset": manifest.name, "version": manifest.version, "samples": manifest.num_samples,
                "rejects": manifest.num_rejects, "errors": manifest.num_errors, "inputs": manifest.num_inputs,
                "shards": manifest.num_shards, "shards_resumed": self.shards_resumed, "reused": self.reused,
                "executor": self.executor, "seconds": round(self.seconds, 2), "url": self.dataset.url,
                "report": self.dataset.store.link("datasets", manifest.name, manifest.version,
                                                  manifest.report.get("html", "manifest.json")),
                **manifest.metrics}


def _choose_version(datasets: DatasetStore, name: str, fingerprint: str) -> str:
    return datasets.area.find_resumable(name, fingerprint) or datasets.area.next_version(name)


def _budget_message(where: str, ledger: ShardLedger, num_inputs: int, budget: int) -> str:
    by_stage = {step["stage"]: step["errors"] for step in ledger.funnel(num_inputs)[1:] if step["errors"]}
    lines = [f"{where}: {ledger.errors} of {num_inputs} inputs failed with an error so far (the budget is {budget}: "
             "execution.max_error_fraction / max_errors_floor); nothing was published",
             "errors by stage: " + ", ".join(f"{stage} {count}" for stage, count in by_stage.items())]
    for error in ledger.first_errors[:3]:
        lines.append(f"--- {error['stage']} on sample {error['sample_id']} (input {error['input_id']}): "
                     f"{error['error']}\n{error['traceback'].rstrip()}")
    return "\n".join(lines)


def _stage_inputs(ledger: ShardLedger, num_inputs: int) -> dict[str, int]:
    return {step["stage"]: step["rows_in"] for step in ledger.funnel(num_inputs)[1:]}


def _measure_and_report(version: DatasetVersion, pipeline: Pipeline) -> dict[str, str]:
    """The pipeline's figures of the whole version into the manifest, then the report that draws them."""
    version.manifest.metrics = {name: value if math.isfinite(value) else None  # JSON has no NaN: None = not measured
                                for name, value in pipeline.dataset_metrics(version).items()}
    return write_report(version, pipeline)


def check_run(pipeline: Pipeline, config: RunConfig, settings: Settings) -> None:
    """What can be checked before Prefect, Ray or any stage starts: the config, the stage chain's declared
    columns and the inputs (folders, parent datasets). Raises the user error naming the fault."""
    config = validate_run_config(pipeline.config_class, config)
    check_columns(pipeline, pipeline.stages(config), config)
    pipeline.check_inputs(config, StageContext(settings))


def run_pipeline(pipeline: Pipeline, config: RunConfig, settings: Settings | None = None,
                 progress: Progress | None = None) -> RunResult:
    """Plan, check and run `pipeline` into a dataset version with the run's `settings` (default: from the
    environment); every stage and the plan get them through a StageContext, never by reading it again."""
    config = validate_run_config(pipeline.config_class, config)
    settings = settings or Settings()
    started = time.perf_counter()
    stages = pipeline.stages(config)
    check_columns(pipeline, stages, config)  # before the store is touched or anything planned
    context = StageContext(settings)
    datasets = context.datasets
    name = config.output.dataset or check_name(pipeline.name, "dataset name")  # output names are checked by config
    config_hash = config.config_hash()

    def planned(hash_items: bool) -> PlanTracker:
        return PlanTracker(pipeline.plan(config, context), pipeline.planned_keys(config), hash_items)

    plan = pipeline.plan_summary(config, context)
    walked_twice = plan is None  # then the second walk's key must equal the first's, not just its count
    if plan is None:
        first_walk = planned(hash_items=True)
        for _ in first_walk:
            pass
        plan = first_walk.summary()
    code = code_identity(type(pipeline).__module__)
    fingerprint = f"{config_hash}-{ids.fingerprint({'plan': plan.key, 'code': code['source']})}"

    published = datasets.area.find_published(name, fingerprint)
    if published and config.output.version in (None, published):
        log.info("%s/%s already holds this exact run; nothing to do", name, published)
        return RunResult(datasets.open(name, published), reused=True)

    version = config.output.version or _choose_version(datasets, name, fingerprint)
    try:
        writer = datasets.begin(name, version, fingerprint, pipeline.schema)
    except VersionBusy:
        if config.output.version:
            raise
        writer = datasets.begin(name, datasets.area.next_version(name), fingerprint, pipeline.schema)
    where = f"{name}/{writer.lease.version}"

    ledger = ShardLedger.of(writer.sink.done_shards().values())
    covered = [range(start, start + inputs) for start, inputs in ledger.spans]
    resumed, inputs_resumed = len(ledger), ledger.inputs
    if resumed:
        log.info("resuming %s: %d shards (%d of %d inputs) already written", where, resumed, inputs_resumed,
                 plan.count)
    if progress:
        progress(inputs_resumed, plan.count, _stage_inputs(ledger, plan.count))
    budget = config.execution.error_budget(plan.count)
    submitted: set[int] = set()  # first plan positions of the shards handed to the executor

    def jobs():
        for job in cut_shards(second_walk, config.execution.shard_size, covered):
            submitted.add(job.index)
            yield ShardJob(job.index, assign_ids(job.items, config_hash))

    def on_done(record: ShardRecord) -> None:
        writer.lease.check()
        ledger.add(record)
        submitted.discard(record.index)
        if ledger.errors > budget:  # already failed: stop spending compute (resumed shards have no errors)
            raise ErrorBudgetExceeded(_budget_message(where, ledger, plan.count, budget))
        if progress:
            progress(ledger.inputs, plan.count, _stage_inputs(ledger, plan.count))

    executor = make_executor(config.execution, settings, plan.count)
    second_walk = planned(hash_items=walked_twice)
    try:
        executor.execute(group_runners(pipeline, config, settings, writer.sink, stages), stages, jobs(), on_done)
        if submitted:
            raise RuntimeError(f"{where}: shards starting at plan positions {sorted(submitted)[:10]} did not "
                               "finish; re-run to resume")
        walked = second_walk.summary()
        if walked.count != plan.count or (walked_twice and walked.key != plan.key):
            raise PlanError(f"{where}: the plan changed during the run ({plan.count} items planned, then "
                            f"{walked.count}, key {plan.key} then {walked.key}); its inputs were modified or the "
                            "pipeline's plan is not deterministic; nothing was published")
        dataset = writer.commit(
            ledger,
            before_manifest=lambda version: _measure_and_report(version, pipeline),
            pipeline=pipeline.name, config=config.content_dict(), config_hash=config_hash,
            code_version=f"{code['package']}+{code['git']}" if code["git"] else code["package"], code=code,
            num_inputs=plan.count,
            parents=sorted(second_walk.parents | set(pipeline.parents(config, context))),
            run={"executor": executor.describe(), "seconds": round(time.perf_counter() - started, 3),
                 "shards_resumed": resumed, "run_id": writer.lease.run_id},
        )
    except BaseException:
        writer.lease.abandon()  # a retry (or the next run) resumes from the shards written so far
        raise
    return RunResult(dataset, reused=False, shards_resumed=resumed,
                     seconds=time.perf_counter() - started, executor=executor.describe())
