"""In-process execution: the reference every other executor must match."""

from __future__ import annotations

from hoi_factory.pipeline import ShardJob, ShardRunner


class LocalExecutor:
    def describe(self) -> str:
        return "local (in-process)"

    def execute(self, runner: ShardRunner, jobs: list[ShardJob], on_done) -> None:
        if jobs:
            runner.setup()
        for job in jobs:
            on_done(runner.run(job))
