"""Prefect flow: ingest a folder of images into a dataset version."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runner import run_pipeline_flow
from tasks.images.ingest import IngestConfig, IngestPipeline


@flow(name="ingest", description=IngestPipeline.description)
def ingest(config: IngestConfig) -> dict[str, Any]:
    return run_pipeline_flow(IngestPipeline(), config)
