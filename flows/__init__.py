"""Prefect flows, one module per pipeline, plus the CLI. `PIPELINES` is what `hoi-factory run` can run."""

from __future__ import annotations

from flows.ingest import ingest
from tasks.images.ingest import IngestPipeline

# name -> (pipeline, its flow)
PIPELINES = {
    IngestPipeline.name: (IngestPipeline, ingest),
}
