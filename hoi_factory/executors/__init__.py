"""Executors run a ShardRunner over shard jobs. They never touch stage code.

- `LocalExecutor`: in this process, one shard after another (tests, tiny runs, debugging).
- `RayExecutor`: a Ray Data actor pool, locally (`ray.init()`) or on a cluster (`RAY_ADDRESS`).
"""

from __future__ import annotations

from typing import Callable, Protocol

from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.datasets import ShardRecord
from hoi_factory.pipeline import ShardJob, ShardRunner

OnShardDone = Callable[[ShardRecord], None]


class Executor(Protocol):
    def execute(self, runner: ShardRunner, jobs: list[ShardJob], on_done: OnShardDone) -> None: ...

    def describe(self) -> str: ...


def make_executor(execution: ExecutionConfig, settings: Settings) -> Executor:
    if execution.executor == "local":
        from hoi_factory.executors.local import LocalExecutor

        return LocalExecutor()
    from hoi_factory.executors.ray import RayExecutor

    return RayExecutor(address=settings.ray_address, workers=execution.workers)
