"""Run a pipeline into a dataset version: plan -> lease the version -> execute pending shards -> commit.

Re-running the same config resumes: finished shards are skipped, the rest are made again with the same
ids and seeds, and the manifest is written only when every shard is there.
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
from hoi_factory.datasets import DatasetStore, DatasetVersion, ShardRecord
from hoi_factory.executors import make_executor
from hoi_factory.parents import parents_of
from hoi_factory.pipeline import Pipeline, assign_ids, check_columns, cut_shards, group_runners
from hoi_factory.report import write_report
from hoi_factory.storage import check_name
from hoi_factory.versions import VersionBusy

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (shards done, shards in all)


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
                "shards": len(manifest.shards), "shards_resumed": self.shards_resumed, "reused": self.reused,
                "executor": self.executor, "seconds": round(self.seconds, 2), "url": self.dataset.url,
                "report": self.dataset.store.link("datasets", manifest.name, manifest.version,
                                                  manifest.report.get("html", "manifest.json")),
                **manifest.metrics}


def _choose_version(datasets: DatasetStore, name: str, fingerprint: str) -> str:
    return datasets.area.find_resumable(name, fingerprint) or datasets.area.next_version(name)


def _budget_message(where: str, records: list[ShardRecord], num_inputs: int, budget: int) -> str:
    errors = sum(r.errors for r in records)
    by_stage: dict[str, int] = {}
    for record in records:
        for stage, stats in record.stages.items():
            if stats.get("errors"):
                by_stage[stage] = by_stage.get(stage, 0) + stats["errors"]
    lines = [f"{where}: {errors} of {num_inputs} inputs failed with an error so far (the budget is {budget}: "
             "execution.max_error_fraction / max_errors_floor); nothing was published",
             "errors by stage: " + ", ".join(f"{stage} {count}" for stage, count in by_stage.items())]
    for error in [e for r in records for e in r.first_errors][:3]:
        lines.append(f"--- {error['stage']} on sample {error['sample_id']} (input {error['input_id']}): "
                     f"{error['error']}\n{error['traceback'].rstrip()}")
    return "\n".join(lines)


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
    items = assign_ids(pipeline.plan(config, context), config_hash, pipeline.planned_keys(config))
    code = code_identity(type(pipeline).__module__)
    fingerprint = f"{config_hash}-{ids.fingerprint({'items': items, 'code': code['source']})}"

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

    done: dict[int, ShardRecord] = writer.sink.done_shards()
    pending = cut_shards(items, config.execution.shard_size, [r.covers for r in done.values()])
    resumed = len(done)
    if resumed:
        log.info("resuming %s: %d shards already written, %d to make", where, resumed, len(pending))
    total = resumed + len(pending)
    if progress:
        progress(len(done), total)
    budget = config.execution.error_budget(len(items))
    errors = 0  # resumed shards have none: shards with errors are redone

    def on_done(record: ShardRecord) -> None:
        nonlocal errors
        writer.lease.check()
        done[record.index] = record
        errors += record.errors
        if errors > budget:  # already failed: stop spending compute
            raise ErrorBudgetExceeded(_budget_message(where, list(done.values()), len(items), budget))
        if progress:
            progress(len(done), total)

    executor = make_executor(config.execution, settings, len(items))
    try:
        executor.execute(group_runners(pipeline, config, settings, writer.sink, stages), stages, pending, on_done)
        missing = sorted({job.index for job in pending} - set(done))
        if missing:
            raise RuntimeError(f"{where}: shards {missing} did not finish; re-run to resume")
        dataset = writer.commit(
            list(done.values()),
            before_manifest=lambda version: _measure_and_report(version, pipeline),
            pipeline=pipeline.name, config=config.content_dict(), config_hash=config_hash,
            code_version=f"{code['package']}+{code['git']}" if code["git"] else code["package"], code=code,
            num_inputs=len(items),
            parents=sorted(set(parents_of(items)) | set(pipeline.parents(config, context))),
            run={"executor": executor.describe(), "seconds": round(time.perf_counter() - started, 3),
                 "shards_resumed": resumed, "run_id": writer.lease.run_id},
        )
    except BaseException:
        writer.lease.abandon()  # a retry (or the next run) resumes from the shards written so far
        raise
    return RunResult(dataset, reused=False, shards_resumed=resumed,
                     seconds=time.perf_counter() - started, executor=executor.describe())
