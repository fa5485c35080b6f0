"""The stage contract: what every unit of pipeline work looks like, whatever executes it.

A stage declares its resources, its batch size and its columns (`needs`: the row keys it reads, `makes`:
the keys it adds), loads what it needs once per worker in `setup(context)`, and turns a batch of rows
(dicts) into a batch of rows. It drops a row by returning a `Reject` with a reason instead of it: that is a
decision, and rejects are data. An exception is not a decision: it is an error, counted apart, and a run
whose errors exceed its budget fails and publishes nothing (hoi_factory.run).

`run_stages` is the one place that applies stages to rows: it retries a failed batch, then isolates the
failing samples one by one so the others go on, and counts rows in, rows out, reject reasons and errors
per stage (the funnel).
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from hoi_factory.codec import thumbnail_png

if TYPE_CHECKING:
    from hoi_factory.context import StageContext

Row = dict[str, Any]

MAX_REASON_LENGTH = 300
MAX_TRACEBACK_LENGTH = 4000


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. Consecutive stages with equal needs share a worker pool.

    `custom` names other Ray resources (e.g. `(("accelerator", 1.0),)`), for accelerators Ray does not
    count as GPUs."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    custom: tuple[tuple[str, float], ...] = ()

    @property
    def accelerated(self) -> bool:
        return self.num_gpus > 0 or bool(self.custom)


@dataclass(frozen=True)
class Reject:
    """A dropped sample and why. `reason` is short and stable ('empty file'), so reasons can be counted."""

    sample_id: str
    input_id: str
    reason: str
    detail: str = ""
    thumbnail: bytes | None = None  # a small PNG of what was rejected (see Stage.thumbnail_key)

    @classmethod
    def of(cls, row: Row, reason: str, detail: str = "") -> Reject:
        return cls(row["sample_id"], row.get("input_id", ""), reason, detail[:MAX_REASON_LENGTH])


@dataclass(frozen=True)
class StageError:
    """A sample a stage failed on with an exception: a bug or a broken dependency, never a filter decision."""

    sample_id: str
    input_id: str
    stage: str
    error: str  # the exception's type and message
    traceback: str = ""

    @classmethod
    def of(cls, row: Row, stage: str, exc: BaseException) -> StageError:
        text = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK_LENGTH:]
        message = f"{type(exc).__name__}: {exc}"[:MAX_REASON_LENGTH]
        return cls(str(row.get("sample_id", "")), str(row.get("input_id", "")), stage, message, text)

    def to_dict(self) -> dict[str, str]:
        return {"sample_id": self.sample_id, "input_id": self.input_id, "stage": self.stage, "error": self.error,
                "traceback": self.traceback}


class Stage:
    """Base class: override `process` (batch in, batch out) and, if needed, `setup`.

    Declare `needs` (row keys read) and `makes` (row keys added) as class attributes, or set them in
    `__init__` when they depend on the stage's arguments; the pipeline checks the chain before any work."""

    resources: Resources = Resources()
    batch_size: int = 16
    needs: frozenset[str] = frozenset()
    makes: frozenset[str] = frozenset()
    thumbnail_key: str | None = None  # the row key holding an image (uint8 array): its rejects keep a thumbnail

    @property
    def name(self) -> str:
        return type(self).__name__

    def setup(self, context: StageContext) -> None:
        """Load models and other heavy state; called once per worker before any batch."""

    def process(self, batch: list[Row]) -> list[Row | Reject]:
        raise NotImplementedError


class MapStage(Stage):
    """A stage that handles rows one at a time: override `process_row`. An exception is an error for
    that row only; the other rows of the batch go on."""

    def process_row(self, row: Row) -> Row | Reject:
        raise NotImplementedError

    def process(self, batch: list[Row]) -> list[Row | Reject | StageError]:
        results: list[Row | Reject | StageError] = []
        for row in batch:
            try:
                results.append(self.process_row(row))
            except Exception as exc:
                results.append(StageError.of(row, self.name, exc))
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
    errors: int = 0
    seconds: float = 0.0
    rejected: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "errors": self.errors,
                "seconds": round(self.seconds, 4), "rejected": dict(self.rejected)}


@dataclass
class StageOutput:
    """Rows through some stages: those still alive, rejects and errors (by stage), per-stage stats."""

    rows: list[Row]
    rejects: list[tuple[str, Reject]] = field(default_factory=list)  # (stage name, reject)
    errors: list[StageError] = field(default_factory=list)
    stats: dict[str, StageStats] = field(default_factory=dict)


def _checked(stage: Stage, batch: list[Row], results: list) -> list[Row | Reject | StageError]:
    """A stage's results, with broken contract turned into errors: a result per row, declared keys made."""
    if not isinstance(results, list) or len(results) != len(batch):
        raise TypeError(f"{stage.name}.process returned {type(results).__name__} of "
                        f"{len(results) if isinstance(results, list) else '?'} results for {len(batch)} rows")
    checked: list[Row | Reject | StageError] = []
    for row, result in zip(batch, results):
        if isinstance(result, dict) and not stage.makes <= result.keys():
            missing = sorted(stage.makes - result.keys())
            result = StageError.of(row, stage.name, KeyError(f"{stage.name} declares it makes {missing} but did not"))
        elif not isinstance(result, (dict, Reject, StageError)):
            result = StageError.of(row, stage.name, TypeError(f"{stage.name} returned a {type(result).__name__}"))
        checked.append(result)
    return checked


def _apply(stage: Stage, batch: list[Row], retries: int) -> list[Row | Reject | StageError]:
    error: Exception | None = None
    for _ in range(retries + 1):
        try:
            return _checked(stage, batch, stage.process(batch))
        except Exception as exc:
            error = exc
    if len(batch) == 1:
        return [StageError.of(batch[0], stage.name, error)]
    # The batch keeps failing: find the sample(s) at fault so the others survive.
    return [result for row in batch for result in _apply(stage, [row], retries)]


MAP_CHUNK = 4  # rows per pass over a row-by-row chain: amortizes each stage call's bookkeeping, few at full size


def _chunk_size(stages: list[Stage]) -> int:
    """Rows pushed through all the stages together: the largest batch a batch stage wants (so each still sees
    full batches), MAP_CHUNK when every stage works row by row. A shard then streams through its stages: a
    worker holds one chunk at full size (e.g. decoded images before resizing) plus the rows already done."""
    batched = [s.batch_size for s in stages if not isinstance(s, (MapStage, Filter))]
    return max(batched, default=MAP_CHUNK)


REJECT_THUMBNAIL = 96  # pixels: the side of the square a reject's thumbnail fits in


def _run_stage(stage: Stage, rows: list[Row], retries: int, output: StageOutput) -> list[Row]:
    stats = output.stats[stage.name]
    started = time.perf_counter()
    kept: list[Row] = []
    for start in range(0, len(rows), stage.batch_size):
        batch = rows[start : start + stage.batch_size]
        for row, result in zip(batch, _apply(stage, batch, retries)):
            if isinstance(result, Reject):
                if stage.thumbnail_key and result.thumbnail is None and row.get(stage.thumbnail_key) is not None:
                    result = replace(result, thumbnail=thumbnail_png(row[stage.thumbnail_key], REJECT_THUMBNAIL))
                output.rejects.append((stage.name, result))
                stats.rejected[result.reason] += 1
            elif isinstance(result, StageError):
                output.errors.append(result)
                stats.errors += 1
            else:
                kept.append(result)
    stats.rows_in += len(rows)
    stats.rows_out += len(kept)
    stats.seconds += time.perf_counter() - started
    return kept


def run_stages(stages: list[Stage], rows: list[Row], retries: int = 1,
               output: StageOutput | None = None) -> StageOutput:
    """Push rows through the stages in order, chunk by chunk (see _chunk_size), collecting rejects, errors and
    per-stage stats (added to `output` when given: a shard carries one StageOutput through several stage
    groups)."""
    output = output or StageOutput(rows=[])
    for stage in stages:
        output.stats.setdefault(stage.name, StageStats())
    chunk = _chunk_size(stages)
    done: list[Row] = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        for stage in stages:
            part = _run_stage(stage, part, retries, output)
        done.extend(part)
    output.rows = done
    return output
