"""Prefect flows that train models from dataset versions and publish them to the model store.

`train_model` trains one model (progress and loss-curve artifacts, the `hoi.model.published` event).
`retrain_on_publish` is what the `hoi.dataset.published` trigger runs: it trains on the dataset version just
published only when that brings at least `min_new_samples` samples no version of the model was trained on.
"""

from __future__ import annotations

import base64
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from flows import progress
from flows.runner import retry_unless_user_error
from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore, DatasetVersion
from hoi_factory.model_store import ModelStore, ModelVersion
from hoi_factory.storage import Store
from hoi_factory.training import TrainConfig, train
from tasks.training.c_hoi import CHOITask
from tasks.training.contentnet import ContentNetTask
from tasks.training.layoutnet import LayoutNetTask
from tasks.training.srm import SRMTask

MODEL_PUBLISHED = "hoi.model.published"
# what `hoi-factory train` and the flows can train
TRAINERS = {task.name: task for task in (LayoutNetTask, ContentNetTask, CHOITask, SRMTask)}


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def fit(trainer: str, config: TrainConfig):
    """Training as one Prefect task; a retry resumes from the last checkpoint."""
    label = f"{config.model}: steps"
    artifact_id = create_progress_artifact(0.0, description=label)

    def on_progress(step: int, steps: int, loss: float) -> None:
        if step % max(1, steps // 100) == 0 or step == steps:
            update_progress_artifact(artifact_id, 100.0 * step / steps)
            progress.report(label, step, steps)

    return train(TRAINERS[trainer](), config, Settings(), on_progress)


@flow(name="train-model", description="train a model on dataset versions and publish it to the model store")
def train_model(trainer: str, config: TrainConfig) -> dict[str, Any]:
    if trainer not in TRAINERS:
        raise ValueError(f"unknown trainer {trainer!r}; available: {', '.join(sorted(TRAINERS))}")
    version = fit.with_options(name=f"train {config.model}")(trainer, config)
    manifest = version.manifest
    curve = base64.b64encode(version.read_bytes("loss_curve.png")).decode()
    lines = [f"# {version.name}/{version.version}", "", f"trained on {', '.join(manifest.datasets)}", "",
             "| metric | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in manifest.metrics.items()]
    create_markdown_artifact("\n".join(lines + ["", f"![loss curve](data:image/png;base64,{curve})"]),
                             key=f"{version.name}-{version.version}".lower().replace("_", "-"),
                             description=f"{version.name}/{version.version}: metrics and loss curve")
    emit_event(event=MODEL_PUBLISHED, resource={"prefect.resource.id": f"hoi.model.{version.name}"},
               payload={"model": version.name, "version": version.version, "datasets": manifest.datasets})
    get_run_logger().info("published model %s/%s (%s)", version.name, version.version, version.url)
    return {"model": version.name, "version": version.version, "url": version.url, **manifest.metrics}


def trained_on(dataset_ref: str, model: str) -> ModelVersion | None:
    """The newest version of `model` trained on the exact dataset version `dataset_ref`, if any."""
    return _trained_on(DatasetStore(Store.from_settings(Settings())).open_ref(dataset_ref), model)


def _trained_on(dataset: DatasetVersion, model: str) -> ModelVersion | None:
    models = ModelStore(dataset.store)
    versions = models.versions(model) if model in models.names() else []
    newest_first = (models.open(model, version) for version in reversed(versions))
    return next((version for version in newest_first if dataset.ref in version.manifest.datasets), None)


def unseen_samples(dataset_ref: str, model: str) -> int:
    """Samples of `dataset_ref` no version of `model` was trained on: none if one learned from this (immutable)
    version, else all of them; so a trigger fired again on an older version does not retrain on it."""
    dataset = DatasetStore(Store.from_settings(Settings())).open_ref(dataset_ref)
    return 0 if _trained_on(dataset, model) is not None else dataset.manifest.num_samples


@flow(name="retrain-on-publish", description="train when a published dataset version brings enough new samples")
def retrain_on_publish(trainer: str, dataset: str, config: dict[str, Any], min_new_samples: int = 1
                       ) -> dict[str, Any]:
    logger = get_run_logger()
    config = TrainConfig.model_validate({**config, "datasets": [dataset]})
    new = unseen_samples(dataset, config.model)
    if new < min_new_samples:
        logger.info("%s brings %d new samples for %s (< %d): not retraining", dataset, new, config.model,
                    min_new_samples)
        return {"retrained": False, "new_samples": new}
    return {"retrained": True, "new_samples": new, **train_model(trainer, config)}
