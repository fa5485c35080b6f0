"""Prefect flow of C-HOI's data: HICO-DET / V-COCO style annotations -> an HOI dataset version."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runner import run_pipeline_flow
from tasks.c_hoi.annotations import HOIAnnotationsConfig, HOIAnnotationsPipeline


@flow(name="hoi-annotations", description=HOIAnnotationsPipeline.description)
def hoi_annotations(config: HOIAnnotationsConfig) -> dict[str, Any]:
    return run_pipeline_flow(HOIAnnotationsPipeline(), config)
