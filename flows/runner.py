"""What every pipeline flow does around its stages: a retried Prefect task that makes the dataset, then
artifacts (summary table, funnel, sample grid, progress) and the `hoi.dataset.published` event."""

from __future__ import annotations

import base64
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from flows import progress
from hoi_factory.config import RunConfig, Settings
from hoi_factory.datasets import DatasetVersion
from hoi_factory.errors import NOT_RETRIED
from hoi_factory.pipeline import Pipeline
from hoi_factory.run import RunResult, run_pipeline

PUBLISHED_EVENT = "hoi.dataset.published"


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry what may pass next time (a lost worker, a store outage); not what would fail the same way."""
    return not isinstance(state.result(raise_on_failure=False), NOT_RETRIED)


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def make_dataset(pipeline: Pipeline, config: RunConfig) -> RunResult:
    """A stage group as one Prefect task. A retry resumes from the shards already written."""
    return run_pipeline(pipeline, config, Settings(), progress.run_progress(pipeline.name, artifacts=True))


def _embedded_png(dataset: DatasetVersion, relative: str) -> str:
    data = dataset.store.read_bytes("datasets", dataset.name, dataset.version, relative)
    return f"![{relative}](data:image/png;base64,{base64.b64encode(data).decode()})"


def publish_artifacts(result: RunResult) -> None:
    dataset, manifest = result.dataset, result.dataset.manifest
    key = f"{manifest.name}-{manifest.version}".lower().replace(".", "-").replace("_", "-")
    create_table_artifact([result.summary()], key=f"{key}-summary", description=f"{dataset.ref}: run summary")
    lines = [f"# {dataset.ref}", "", f"{manifest.num_samples} samples, {manifest.num_rejects} rejected, "
             f"stored at `{dataset.url}`", "", "| step | in | out |", "|---|---:|---:|"]
    lines += [f"| {s['stage']} | {s.get('rows_in', '')} | {s['rows_out']} |" for s in manifest.funnel]
    if manifest.reject_reasons:
        lines += ["", "| reject reason | count |", "|---|---:|"]
        lines += [f"| {reason} | {count} |" for reason, count in sorted(manifest.reject_reasons.items())]
    for kind, relative in manifest.report.items():
        if relative.endswith(".png"):
            lines += ["", f"## {kind}", _embedded_png(dataset, relative)]
    create_markdown_artifact("\n".join(lines), key=f"{key}-report", description=f"{dataset.ref}: funnel and samples")
    if "html" in manifest.report:
        create_link_artifact(dataset.store.link("datasets", dataset.name, dataset.version, manifest.report["html"]),
                             link_text=f"{dataset.ref} report", key=f"{key}-html",
                             description=f"{dataset.ref}: the full report page")


def run_pipeline_flow(pipeline: Pipeline, config: RunConfig) -> dict[str, Any]:
    """The body of every pipeline flow."""
    logger = get_run_logger()
    settings = Settings()
    logger.info("%s -> store %s, executor %s", pipeline.name, settings.store_url, config.execution.executor)
    if settings.prefect_api_url:
        logger.info("Prefect UI: %s", settings.prefect_api_url.removesuffix("/api"))
    if config.execution.executor == "ray":
        from hoi_factory.executors.ray import ensure_ray

        dashboard = ensure_ray(settings.ray_address)
        logger.info("Ray: %s, dashboard %s", settings.ray_address or "local",
                    f"http://{dashboard}" if dashboard else "not running (needs ray[default])")
    result = make_dataset.with_options(name=f"{pipeline.name}: make dataset")(pipeline, config)
    if result.reused:
        logger.info("%s is already published from this exact config and input", result.dataset.ref)
        return result.summary()
    publish_artifacts(result)
    manifest = result.dataset.manifest
    emit_event(
        event=PUBLISHED_EVENT,
        resource={"prefect.resource.id": f"hoi.dataset.{manifest.name}", "prefect.resource.name": manifest.name},
        payload={"dataset": manifest.name, "version": manifest.version, "num_samples": manifest.num_samples,
                 "url": result.dataset.url, "pipeline": pipeline.name},
    )
    logger.info("published %s: %d samples, %d rejected", result.dataset.ref, manifest.num_samples, manifest.num_rejects)
    return result.summary()
