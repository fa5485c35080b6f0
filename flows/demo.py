"""Prefect flow: every pipeline that exists, at small scale, on the embedded defaults.

Inputs are procedural STAND-INS (see tasks/procedural/), including known-bad files, so the demo shows
the rejection funnel as well as the samples.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.ingest import ingest
from hoi_factory.config import ExecutionConfig, OutputConfig, Settings
from hoi_factory.storage import Store
from tasks.images.ingest import IngestConfig
from tasks.procedural.image_folder import write_image_folder


def demo_input_folder(settings: Settings) -> Path:
    """Beside the datasets when the store is local, else a temporary folder."""
    store = Store.from_settings(settings)
    return Path(store.path("inputs")) if store.is_local else Path(tempfile.mkdtemp(prefix="hoi-demo-"))


@flow(name="demo", description="every pipeline at small scale on procedural stand-in inputs")
def demo(images: int = 48, executor: Literal["local", "ray"] = "ray", workers: int = 2) -> list[dict[str, Any]]:
    logger = get_run_logger()
    execution = ExecutionConfig(executor=executor, workers=workers, shard_size=16)
    folder = demo_input_folder(Settings()) / "demo-images"
    bad = write_image_folder(folder, images, seed=0)
    logger.info("wrote %d stand-in scenes and %d known-bad files to %s", images, len(bad), folder)
    return [ingest(IngestConfig(source=str(folder), execution=execution, output=OutputConfig(dataset="demo-images")))]
