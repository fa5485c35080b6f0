"""Prefect flows of HOGSA: sequences -> fitted hand-object Gaussian models -> augmented, annotated images."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runner import run_pipeline_flow
from tasks.hogsa.augment import AugmentConfig, AugmentPipeline
from tasks.hogsa.hogs_models import HOGSModelsConfig, HOGSModelsPipeline


@flow(name="hogsa-models", description=HOGSModelsPipeline.description)
def hogsa_models(config: HOGSModelsConfig) -> dict[str, Any]:
    return run_pipeline_flow(HOGSModelsPipeline(), config)


@flow(name="hogsa", description=AugmentPipeline.description)
def hogsa(config: AugmentConfig) -> dict[str, Any]:
    return run_pipeline_flow(AugmentPipeline(), config)
