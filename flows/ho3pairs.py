"""Prefect flow of HO3Pairs: hand–object images -> object-only / HOI pairs, one dataset version."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runner import run_pipeline_flow
from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline


@flow(name="ho3pairs", description=PairsPipeline.description)
def ho3pairs(config: PairsConfig) -> dict[str, Any]:
    return run_pipeline_flow(PairsPipeline(), config)
