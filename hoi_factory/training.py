"""Training runs: dataset versions in, a model version out, checkpointed so a killed run resumes.

A `TrainingTask` says what is model-specific (build the module, load its data from dataset versions, the loss
of a batch, the files `save_pretrained` writes, evaluation); `train` does the rest the same way for every model:

- batches are drawn from a generator seeded by (seed, step), so a resumed run sees the batches it would have;
- every `checkpoint_every` steps the module, the optimizer state and the loss history go to
  `<store>/checkpoints/<model>/<run fingerprint>/` (safetensors + JSON, `state.json` written last);
- at the end the model is published to the model store (its files, the loss curve, metrics, a model card and
  the dataset versions it was trained on), and the checkpoint folder is removed.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Callable, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hoi_factory import ids
from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore, DatasetVersion
from hoi_factory.model_store import ModelStore, ModelVersion
from hoi_factory.storage import Store, StoreError, check_name

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
Progress = Callable[[int, int, float], None]  # (step, steps, loss)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field(..., min_length=1, description="dataset versions to train on: name (latest) "
                                "or name/version")
    model: str = Field(..., description="name of the model version to publish")
    steps: int = Field(1000, ge=1, le=10_000_000)
    batch_size: int = Field(16, ge=1, le=4096)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    checkpoint_every: int = Field(100, ge=1)
    seed: int = 0
    eval_datasets: list[str] = Field(default_factory=list, description="held-out dataset versions for the "
                                     "metrics (default: the training data)")
    options: dict[str, Any] = Field(default_factory=dict, description="model-specific settings (its config)")

    @field_validator("model")
    @classmethod
    def _safe_model_name(cls, name: str) -> str:
        try:
            return check_name(name, "model name")
        except StoreError as exc:  # pydantic reports ValueErrors as field errors
            raise ValueError(str(exc)) from None


class TrainingTask(Protocol):
    name: str

    def build(self, options: dict[str, Any]) -> torch.nn.Module: ...

    def load(self, datasets: list[DatasetVersion], options: dict[str, Any]) -> dict[str, torch.Tensor | list]:
        """All training examples: tensors (or lists, e.g. prompts) with the same first dimension."""

    def loss(self, module: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
             ) -> torch.Tensor: ...

    def files(self, module: torch.nn.Module) -> dict[str, bytes]:
        """What `save_pretrained` writes, by file name (config.json and the weights)."""

    def evaluate(self, module: torch.nn.Module, data: dict[str, torch.Tensor]) -> dict[str, float]: ...


def training_batch(data: dict, count: int, batch_size: int, seed: int, step: int) -> tuple[dict, torch.Generator]:
    """The examples `train` draws at `step`, and the generator drawn from: seeded by (seed, step), so a resumed run
    draws the same batches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    picked = torch.randint(0, count, (min(batch_size, count),), generator=generator)
    batch = {key: value[picked] if torch.is_tensor(value) else [value[i] for i in picked.tolist()]
             for key, value in data.items()}
    return batch, generator


def saved_files(module: torch.nn.Module) -> dict[str, bytes]:
    """What `module.save_pretrained(folder)` writes, by path relative to the folder: a task's `files`."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        module.save_pretrained(folder)
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
                if p.is_file()}


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars["state"].setdefault(str(index), {})[key] = value
    return tensors, scalars


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], scalars: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(values) for i, values in scalars["state"].items()}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": scalars["param_groups"]}


class Checkpoints:
    """The in-progress state of one training run in the store; `state.json` is the commit point."""

    def __init__(self, store: Store, model: str, fingerprint: str):
        self.store, self.parts = store, (CHECKPOINTS, check_name(model, "model name"), fingerprint)

    def save(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, losses: list[float]) -> None:
        import safetensors.torch

        tensors, scalars = _flatten_optimizer(optimizer.state_dict())
        weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        self.store.write_bytes(safetensors.torch.save(weights), *self.parts, f"model-{step}.safetensors")
        self.store.write_bytes(safetensors.torch.save(tensors), *self.parts, f"optimizer-{step}.safetensors")
        self.store.write_bytes(json.dumps(scalars).encode(), *self.parts, f"optimizer-{step}.json")
        previous = self.step()
        self.store.write_bytes(json.dumps({"step": step, "losses": losses}).encode(), *self.parts, "state.json")
        if previous is not None and previous != step:
            for file in (f"model-{previous}.safetensors", f"optimizer-{previous}.safetensors",
                         f"optimizer-{previous}.json"):
                self.store.remove(*self.parts, file)

    def step(self) -> int | None:
        if not self.store.exists(*self.parts, "state.json"):
            return None
        return json.loads(self.store.read_bytes(*self.parts, "state.json"))["step"]

    def load(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, list[float]] | None:
        import safetensors.torch

        if self.step() is None:
            return None
        state = json.loads(self.store.read_bytes(*self.parts, "state.json"))
        step = state["step"]
        module.load_state_dict(safetensors.torch.load(self.store.read_bytes(*self.parts, f"model-{step}.safetensors")))
        optimizer.load_state_dict(_unflatten_optimizer(
            safetensors.torch.load(self.store.read_bytes(*self.parts, f"optimizer-{step}.safetensors")),
            json.loads(self.store.read_bytes(*self.parts, f"optimizer-{step}.json"))))
        return step, state["losses"]

    def remove(self) -> None:
        self.store.remove_tree(*self.parts)


def loss_curve(losses: list[float], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    axis.plot(range(1, len(losses) + 1), losses, lw=0.8, color="#4C72B0")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def train(task: TrainingTask, config: TrainConfig, settings: Settings | None = None,
          progress: Progress | None = None) -> ModelVersion:
    settings = settings or Settings()
    store = Store.from_settings(settings)
    versions = [DatasetStore(store).open_ref(ref) for ref in config.datasets]
    refs = [version.ref for version in versions]
    fingerprint = ids.fingerprint({"task": task.name, "config": config.model_dump(mode="json"), "datasets": refs})
    data = task.load(versions, config.options)
    count = len(next(iter(data.values())))
    if count == 0:
        raise ValueError(f"{', '.join(refs)}: no training examples for {task.name}")
    torch.manual_seed(config.seed)
    module = task.build(config.options)
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.learning_rate)
    checkpoints = Checkpoints(store, config.model, fingerprint)
    start, losses = checkpoints.load(module, optimizer) or (0, [])
    if start:
        log.info("resuming %s training from step %d of %d", config.model, start, config.steps)
    module.train()
    for step in range(start, config.steps):
        batch, generator = training_batch(data, count, config.batch_size, config.seed, step)
        loss = task.loss(module, batch, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, config.steps, losses[-1])
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            checkpoints.save(module, optimizer, step + 1, losses)
    module.eval()
    held_out = [DatasetStore(store).open_ref(ref) for ref in config.eval_datasets]
    evaluation = task.evaluate(module, task.load(held_out, config.options) if held_out else data)
    metrics = {"final_loss": sum(losses[-10:]) / len(losses[-10:]), "first_loss": sum(losses[:10]) / len(losses[:10]),
               "steps": config.steps, "examples": count, **evaluation,
               "evaluated_on": ", ".join(v.ref for v in held_out) if held_out else "training data"}
    files = {**task.files(module), "loss_curve.png": loss_curve(losses, f"{config.model}: training loss"),
             "training.json": json.dumps(config.model_dump(mode="json"), indent=2).encode()}
    card = (f"# {config.model}\n\n{task.name}, trained {config.steps} steps (batch {config.batch_size}, "
            f"lr {config.learning_rate}) on {', '.join(refs)}.\n\nMetrics: "
            + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in metrics.items()) + "\n")
    version = ModelStore(store).save(config.model, files, metrics=metrics, datasets=refs, card=card)
    checkpoints.remove()
    return version
