"""Prefect flow: every pipeline that exists, at small scale, on the embedded defaults.

Each pipeline says what its demo run is (`Pipeline.demo_config`), with procedural STAND-IN inputs
(see tasks/procedural/), known-bad ones included, so the demo shows rejection funnels as well as samples.
Pipelines run in registration order, so one may feed on a dataset an earlier one made.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.storage import Store


def demo_input_folder(settings: Settings) -> Path:
    """Beside the datasets when the store is local, else a temporary folder."""
    store = Store.from_settings(settings)
    return Path(store.path("inputs")) if store.is_local else Path(tempfile.mkdtemp(prefix="hoi-demo-"))


@flow(name="demo", description="every pipeline at small scale on procedural stand-in inputs")
def demo(executor: Literal["local", "ray"] = "ray", workers: int = 2) -> list[dict[str, Any]]:
    from flows.registry import PIPELINES, pipeline_class, pipeline_flow

    logger = get_run_logger()
    execution = ExecutionConfig(executor=executor, workers=workers, shard_size=16)
    inputs = demo_input_folder(Settings())
    results = []
    for name in PIPELINES:
        config = pipeline_class(name)().demo_config(inputs / name, execution)
        if config is None:
            continue
        logger.info("demo: %s, stand-in inputs under %s", name, inputs / name)
        results.append(pipeline_flow(name)(config))
    return results
