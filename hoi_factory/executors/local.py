"""In-process execution: the reference every other executor must match."""

from __future__ import annotations

from collections.abc import Iterable

from hoi_factory.pipeline import ShardJob, ShardWork, StageGroupRunner
from hoi_factory.stage import Stage


class LocalExecutor:
    def describe(self) -> str:
        return "local (in-process)"

    def execute(self, runners: list[StageGroupRunner], stages: list[Stage], jobs: Iterable[ShardJob],
                on_done) -> None:
        ready = False
        for job in jobs:
            if not ready:  # models load only when there is work
                for runner in runners:
                    runner.setup()
                ready = True
            work = ShardWork.start(job)
            for runner in runners:
                work = runner.run(work)
            on_done(runners[-1].finish(work))
