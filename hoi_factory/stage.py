"""The stage contract: what every unit of pipeline work looks like, whatever executes it.

A stage declares its resources and batch size, loads what it needs once per worker in `setup()`, and turns
a batch of rows (dicts) into a batch of rows. It may drop a row by returning a `Reject` with a reason
instead of it. Stages never know whether they run in-process or on a Ray actor.

`run_stages` is the one place that applies stages to rows: it retries a failed batch, then isolates the
bad samples one by one so a single broken input is rejected with its error and the rest go on, and it
counts rows in, rows out and reject reasons per stage (the funnel).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

Row = dict[str, Any]

MAX_REASON_LENGTH = 300


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. Executors size actors from the largest need of a stage group."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    gpu_memory_gb: float | None = None

    @staticmethod
    def largest(resources: list[Resources]) -> Resources:
        gpu_memory = [r.gpu_memory_gb for r in resources if r.gpu_memory_gb is not None]
        return Resources(
            num_cpus=max((r.num_cpus for r in resources), default=1.0),
            num_gpus=max((r.num_gpus for r in resources), default=0.0),
            gpu_memory_gb=max(gpu_memory) if gpu_memory else None,
        )


@dataclass(frozen=True)
class Reject:
    """A dropped sample and why. `reason` is short and stable ('empty file'), so reasons can be counted."""

    sample_id: str
    input_id: str
    reason: str
    detail: str = ""

    @classmethod
    def of(cls, row: Row, reason: str, detail: str = "") -> Reject:
        return cls(row["sample_id"], row.get("input_id", ""), reason, detail[:MAX_REASON_LENGTH])


class Stage:
    """Base class: override `process` (batch in, batch out) and, if needed, `setup`."""

    resources: ClassVar[Resources] = Resources()
    batch_size: ClassVar[int] = 16

    @property
    def name(self) -> str:
        return type(self).__name__

    def setup(self) -> None:
        """Load models and other heavy state; called once per worker before any batch."""

    def process(self, batch: list[Row]) -> list[Row | Reject]:
        raise NotImplementedError


class MapStage(Stage):
    """A stage that handles rows one at a time: override `process_row`. An exception rejects that row only."""

    def process_row(self, row: Row) -> Row | Reject:
        raise NotImplementedError

    def process(self, batch: list[Row]) -> list[Row | Reject]:
        results: list[Row | Reject] = []
        for row in batch:
            try:
                results.append(self.process_row(row))
            except Exception as exc:  # a broken sample, not a broken stage
                results.append(Reject.of(row, f"{self.name} error: {type(exc).__name__}", str(exc)))
        return results


class Filter(Stage):
    """Keeps or drops rows; says why. Override `reason_to_drop`: None keeps the row, a string drops it."""

    def reason_to_drop(self, row: Row) -> str | None:
        raise NotImplementedError

    def process(self, batch: list[Row]) -> list[Row | Reject]:
        return [row if (reason := self.reason_to_drop(row)) is None else Reject.of(row, reason) for row in batch]


@dataclass
class StageStats:
    rows_in: int = 0
    rows_out: int = 0
    seconds: float = 0.0
    rejected: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "seconds": round(self.seconds, 4),
                "rejected": dict(self.rejected)}


@dataclass
class StageOutput:
    rows: list[Row]
    rejects: list[tuple[str, Reject]]  # (stage name, reject)
    stats: dict[str, StageStats]


def _apply(stage: Stage, batch: list[Row], retries: int) -> list[Row | Reject]:
    error: Exception | None = None
    for _ in range(retries + 1):
        try:
            return stage.process(batch)
        except Exception as exc:
            error = exc
    if len(batch) == 1:
        return [Reject.of(batch[0], f"{stage.name} error: {type(error).__name__}", str(error))]
    # The batch keeps failing: find the sample(s) at fault so the others survive.
    return [result for row in batch for result in _apply(stage, [row], retries)]


def run_stages(stages: list[Stage], rows: list[Row], retries: int = 1) -> StageOutput:
    """Push rows through the stages in order, batch by batch, collecting rejects and per-stage stats."""
    stats = {stage.name: StageStats() for stage in stages}
    rejects: list[tuple[str, Reject]] = []
    for stage in stages:
        stage_stats = stats[stage.name]
        started = time.perf_counter()
        kept: list[Row] = []
        for start in range(0, len(rows), stage.batch_size):
            batch = rows[start : start + stage.batch_size]
            for result in _apply(stage, batch, retries):
                if isinstance(result, Reject):
                    rejects.append((stage.name, result))
                    stage_stats.rejected[result.reason] += 1
                else:
                    kept.append(result)
        stage_stats.rows_in += len(rows)
        stage_stats.rows_out += len(kept)
        stage_stats.seconds += time.perf_counter() - started
        rows = kept
    return StageOutput(rows, rejects, stats)
