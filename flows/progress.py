"""Run progress, fanned out to whoever watches: the CLI bars, Prefect progress artifacts.

A pipeline run reports the inputs its finished shards cover and, per stage, the samples that stage has taken
in so far (a stage after a filter ends below the inputs by what the filter rejected). Each becomes one line:
`chorus-views: samples`, `chorus-views › filter`, ...
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

Listener = Callable[[str, int, int], None]  # (label, done, total)
_listeners: list[Listener] = []
ARTIFACT_INTERVAL = 2.0  # seconds between Prefect artifact updates: one API call per line each time


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def report(label: str, done: int, total: int) -> None:
    for listener in list(_listeners):
        listener(label, done, total)


def run_progress(pipeline_name: str, artifacts: bool = False) -> Callable[[int, int, dict[str, int]], None]:
    """The callback `run_pipeline` reports to: the run's line and one per stage go to the listeners, and (inside a
    Prefect flow, `artifacts`) to one progress artifact per line, updated at most every ARTIFACT_INTERVAL."""
    artifact_ids: dict[str, object] = {}
    last_update = [float("-inf")]

    def on_progress(done: int, total: int, stages: dict[str, int]) -> None:
        lines = {f"{pipeline_name}: samples": done, **{f"{pipeline_name} › {stage}": n for stage, n in stages.items()}}
        for label, count in lines.items():
            report(label, count, total)
        if artifacts and (done >= total or time.monotonic() - last_update[0] >= ARTIFACT_INTERVAL):
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            last_update[0] = time.monotonic()
            for label, count in lines.items():
                if label not in artifact_ids:
                    artifact_ids[label] = create_progress_artifact(0.0, description=label)
                update_progress_artifact(artifact_ids[label], 100.0 * count / max(total, 1))

    return on_progress
