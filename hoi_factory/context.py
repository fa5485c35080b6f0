"""What a stage or a plan gets from the run instead of reading the environment: the run's settings, the
store built from them, the device its worker was given and which worker it is.

Built by the runner from the settings the run was started with (the CLI and flows read the environment
once; everything below them receives this object), so a run with explicit settings is the same run in
every worker, local or on Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from hoi_factory.config import Settings

if TYPE_CHECKING:
    from hoi_factory.datasets import DatasetStore
    from hoi_factory.model_store import ModelStore
    from hoi_factory.storage import Store


@dataclass
class StageContext:
    settings: Settings
    device: str = "cpu"  # "cuda" when this worker was given a GPU and one is visible
    worker_id: str = "local"  # "local", or the Ray actor's id

    @cached_property
    def store(self) -> Store:
        from hoi_factory.storage import Store

        return Store.from_settings(self.settings)

    @cached_property
    def datasets(self) -> DatasetStore:
        from hoi_factory.datasets import DatasetStore

        return DatasetStore(self.store)

    @cached_property
    def models(self) -> ModelStore:
        from hoi_factory.model_store import ModelStore

        return ModelStore(self.store)

    def storage_options(self, url: str) -> dict[str, Any]:
        """fsspec options (credentials, endpoint) for reading `url` with these settings."""
        return self.settings.storage_options(url)

    def __getstate__(self) -> dict:  # ship the settings, never an open filesystem
        return {"settings": self.settings, "device": self.device, "worker_id": self.worker_id}


def device_for(num_gpus: float) -> str:
    """The torch device of a worker that asked for `num_gpus`: CUDA only when it asked and one is visible."""
    if num_gpus <= 0:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
