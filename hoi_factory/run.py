"""Run a pipeline into a dataset version: plan -> lease the version -> execute pending shards -> commit.

Re-running the same config resumes: finished shards are skipped, the rest are made again with the same
ids and seeds, and the manifest is written only when every shard is there.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hoi_factory import ids
from hoi_factory.config import RunConfig, Settings, validate_run_config
from hoi_factory.datasets import DatasetStore, DatasetVersion, ShardRecord
from hoi_factory.executors import make_executor
from hoi_factory.parents import parents_of
from hoi_factory.pipeline import Pipeline, ShardRunner, assign_ids, cut_shards
from hoi_factory.report import write_report
from hoi_factory.storage import Store, check_name
from hoi_factory.versions import VersionBusy

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (shards done, shards in all)


@dataclass
class RunResult:
    dataset: DatasetVersion
    reused: bool  # an identical run was already published: nothing was made
    shards_resumed: int = 0
    seconds: float = 0.0
    executor: str = ""


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("hoi-factory")
    except PackageNotFoundError:
        package = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{package}+{commit}" if commit else package


def _choose_version(datasets: DatasetStore, name: str, fingerprint: str) -> str:
    return datasets.area.find_resumable(name, fingerprint) or datasets.area.next_version(name)


def run_pipeline(pipeline: Pipeline, config: RunConfig, settings: Settings | None = None,
                 progress: Progress | None = None) -> RunResult:
    config = validate_run_config(pipeline.config_class, config)
    settings = settings or Settings()
    started = time.perf_counter()
    datasets = DatasetStore(Store.from_settings(settings))
    name = config.output.dataset or check_name(pipeline.name, "dataset name")  # output names are checked by config

    config_hash = config.config_hash()
    items = assign_ids(pipeline.plan(config, datasets), config_hash)
    fingerprint = f"{config_hash}-{ids.fingerprint(items)}"

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

    jobs = cut_shards(items, config.execution.shard_size)
    done: dict[int, ShardRecord] = writer.sink.done_shards()
    pending = [job for job in jobs if job.index not in done]
    resumed = len(done)
    if resumed:
        log.info("resuming %s/%s: %d of %d shards already written", name, writer.lease.version, resumed, len(jobs))
    if progress:
        progress(len(done), len(jobs))

    def on_done(record: ShardRecord) -> None:
        writer.lease.check()
        done[record.index] = record
        if progress:
            progress(len(done), len(jobs))

    executor = make_executor(config.execution, settings)
    runner = ShardRunner(pipeline, config, writer.sink)
    try:
        executor.execute(runner, pending, on_done)
        missing = sorted(set(job.index for job in jobs) - set(done))
        if missing:
            raise RuntimeError(f"{name}/{writer.lease.version}: shards {missing} did not finish; re-run to resume")
        dataset = writer.commit(
            list(done.values()),
            before_manifest=lambda version: write_report(version, pipeline),
            pipeline=pipeline.name, config=config.content_dict(), config_hash=config_hash,
            code_version=code_version(), num_inputs=len(items),
            parents=sorted(set(parents_of(items)) | set(pipeline.parents(config))),
            run={"executor": executor.describe(), "seconds": round(time.perf_counter() - started, 3),
                 "shards_resumed": resumed, "run_id": writer.lease.run_id},
        )
    except BaseException:
        writer.lease.abandon()  # a retry (or the next run) resumes from the shards written so far
        raise
    return RunResult(dataset, reused=False, shards_resumed=resumed,
                     seconds=time.perf_counter() - started, executor=executor.describe())
