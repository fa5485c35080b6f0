"""Maintenance flows: checks that run on their own, e.g. triggered by `hoi.dataset.published`."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.storage import Store, StoreError


class DatasetInvalid(StoreError):
    """A published version whose files no longer match its manifest."""


@flow(name="validate-dataset", description="re-read every shard of a dataset version and check it against its manifest")
def validate_dataset(ref: str) -> dict[str, Any]:
    """`ref` is `name` (latest) or `name/version`."""
    version = DatasetStore(Store.from_settings(Settings())).open_ref(ref)
    problems = version.validate()
    verdict = "all shards match the manifest" if not problems else f"{len(problems)} problems"
    lines = [f"# {version.ref}: {verdict}", ""] + [f"- {problem}" for problem in problems]
    create_markdown_artifact("\n".join(lines), description=f"validation of {version.ref}")
    if problems:
        raise DatasetInvalid(f"{version.ref}: " + "; ".join(problems))
    get_run_logger().info("%s: %d shards match the manifest", version.ref, version.manifest.num_shards)
    return {"dataset": version.ref, "shards": version.manifest.num_shards, "problems": problems}
