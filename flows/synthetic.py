"""Prefect flow: the synthetic calibration pipeline (benchmarks, fault tests, cluster smoke tests)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runner import run_pipeline_flow
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline


@flow(name="synthetic", description=SyntheticPipeline.description)
def synthetic(config: SyntheticConfig) -> dict[str, Any]:
    return run_pipeline_flow(SyntheticPipeline(), config)
