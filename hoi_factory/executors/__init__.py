"""Executors run a pipeline's stage groups over shard jobs. They never touch stage code.

- `LocalExecutor`: in this process, one shard after another (tests, small runs, debugging).
- `RayExecutor`: one Ray Data actor pool per stage group (stages with equal resources), rows streaming
  from pool to pool, locally (`ray.init()`) or on a cluster (`RAY_ADDRESS`).

`execution.executor=auto` picks the local executor for plans of at most `execution.local_max_items`
items: starting Ray costs more than such a run.
"""

from __future__ import annotations

from typing import Callable, Protocol

from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.datasets import ShardRecord
from hoi_factory.pipeline import ShardJob, StageGroupRunner
from hoi_factory.stage import Stage

OnShardDone = Callable[[ShardRecord], None]


class Executor(Protocol):
    def execute(self, runners: list[StageGroupRunner], stages: list[Stage], jobs: list[ShardJob],
                on_done: OnShardDone) -> None: ...

    def describe(self) -> str: ...


def make_executor(execution: ExecutionConfig, settings: Settings, num_items: int) -> Executor:
    kind = execution.executor
    if kind == "auto":
        kind = "local" if num_items <= execution.local_max_items else "ray"
    if kind == "local":
        from hoi_factory.executors.local import LocalExecutor

        return LocalExecutor()
    from hoi_factory.executors.ray import RayExecutor

    return RayExecutor(address=settings.ray_address, workers=execution.workers,
                       accelerator_workers=execution.accelerator_workers,
                       progress_bars=execution.ray_progress_bars)
