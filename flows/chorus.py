"""Prefect flows of CHORUS: prompts, views, the COCO-EFT test views and occupancy, each a dataset version."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runner import run_pipeline_flow
from tasks.chorus.coco_eft import COCOEFTConfig, COCOEFTPipeline
from tasks.chorus.occupancy import OccupancyConfig, OccupancyPipeline
from tasks.chorus.prompts import PromptsConfig, PromptsPipeline
from tasks.chorus.views import ViewsConfig, ViewsPipeline


@flow(name="chorus-prompts", description=PromptsPipeline.description)
def chorus_prompts(config: PromptsConfig) -> dict[str, Any]:
    return run_pipeline_flow(PromptsPipeline(), config)


@flow(name="chorus-views", description=ViewsPipeline.description)
def chorus_views(config: ViewsConfig) -> dict[str, Any]:
    return run_pipeline_flow(ViewsPipeline(), config)


@flow(name="chorus-test-views", description=COCOEFTPipeline.description)
def chorus_test_views(config: COCOEFTConfig) -> dict[str, Any]:
    return run_pipeline_flow(COCOEFTPipeline(), config)


@flow(name="chorus-occupancy", description=OccupancyPipeline.description)
def chorus_occupancy(config: OccupancyConfig) -> dict[str, Any]:
    return run_pipeline_flow(OccupancyPipeline(), config)
