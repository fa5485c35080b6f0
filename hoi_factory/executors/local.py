"""In-process execution: the reference every other executor must match."""

from __future__ import annotations

from hoi_factory.pipeline import ShardJob, ShardWork, StageGroupRunner
from hoi_factory.stage import Stage


class LocalExecutor:
    def describe(self) -> str:
        return "local (in-process)"

    def execute(self, runners: list[StageGroupRunner], stages: list[Stage], jobs: list[ShardJob], on_done) -> None:
        if not jobs:
            return
        for runner in runners:
            runner.setup()
        for job in jobs:
            work = ShardWork.start(job)
            for runner in runners:
                work = runner.run(work)
            on_done(runners[-1].finish(work))
