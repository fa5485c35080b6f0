"""The synthetic pipeline: `count` samples, each costing `work_ms` of CPU and holding seeded random values.

With `accelerator_ms > 0` a second stage follows that waits that long per sample while holding one unit of
the Ray resource `accelerator` and no CPU: a stand-in for a GPU model, so the executor's pools (CPU work
overlapping accelerator work) can be tested and benchmarked on a machine without a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pydantic import Field

from hoi_factory.columns import column
from hoi_factory.config import RunConfig
from hoi_factory.pipeline import Pipeline, PlanSummary
from hoi_factory.stage import MapStage, Resources, Row, Stage


def busy_wait(seconds: float) -> None:
    """Spend `seconds` of this process's CPU time (not wall time): two workers sharing one core take twice
    as long, so measured scaling is real parallelism."""
    if seconds <= 0:  # zero work costs nothing, not two clock reads (the scale benchmark runs 10M of these)
        return
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 counters (wrapping arithmetic): well-mixed 64-bit words."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def seeded_value_rows(seeds, count: int) -> np.ndarray:
    """(len(seeds), count) float32 standard normal draws, row i a function of seeds[i] alone: counter-based
    (SplitMix64 of seed and position, then Box-Muller), so a batch is drawn in one vectorized pass and a row is
    the same whatever batch it is drawn in (constructing a numpy Generator per row costs ~8 us: more than all
    of the factory's own bookkeeping per sample, which the scale benchmark measures)."""
    seeds = np.asarray(seeds, dtype=np.uint64)[:, None]
    pairs = (count + 1) // 2
    counters = np.arange(2 * pairs, dtype=np.uint64)[None, :]
    bits = _splitmix64((seeds << np.uint64(32)) + counters * _GOLDEN_GAMMA)
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1): log is finite
    radius = np.sqrt(-2.0 * np.log(uniform[:, :pairs]))
    angle = 2.0 * np.pi * uniform[:, pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :count].astype(np.float32)


def seeded_values(seed: int, count: int) -> np.ndarray:
    """One row of `seeded_value_rows`."""
    return seeded_value_rows([seed], count)[0]


class SyntheticConfig(RunConfig):
    count: int = Field(64, ge=1, le=10_000_000, description="samples to make")
    work_ms: float = Field(10.0, ge=0, le=60_000, description="CPU milliseconds spent per sample")
    values: int = Field(8, ge=1, le=4096, description="seeded random values per sample")
    accelerator_ms: float = Field(0.0, ge=0, le=60_000, description=(
        "if > 0: a second stage waiting this long per sample on one unit of the Ray resource 'accelerator'"))


class FixedCostWork(Stage):
    """Spends `work_ms` per row, then draws the rows' values from their seeds (one vectorized draw per batch)."""

    batch_size = 64
    makes = frozenset({"values", "total"})

    def __init__(self, work_ms: float, values: int):
        self.work_seconds = work_ms / 1000
        self.values = values

    def process(self, batch: list[Row]) -> list[Row]:
        busy_wait(self.work_seconds * len(batch))
        values = seeded_value_rows([row["seed"] for row in batch], self.values)
        totals = values.sum(axis=1, dtype=np.float64)
        return [{**row, "values": row_values, "total": float(total)}
                for row, row_values, total in zip(batch, values, totals)]


ACCELERATOR = "accelerator"  # the custom Ray resource AcceleratorWork holds


class AcceleratorWork(MapStage):
    """Waits `wait_ms` per row without using the CPU (like a kernel on an accelerator), then marks the row."""

    batch_size = 4
    needs = frozenset({"total"})
    makes = frozenset({"accelerated"})
    resources = Resources(num_cpus=0.5, custom=((ACCELERATOR, 1.0),))

    def __init__(self, wait_ms: float):
        self.wait_seconds = wait_ms / 1000

    def process_row(self, row: Row) -> Row:
        time.sleep(self.wait_seconds)
        return {**row, "accelerated": True}


class SyntheticPipeline(Pipeline[SyntheticConfig]):
    name = "synthetic"
    description = "calibration samples with a fixed CPU cost each (benchmarks, fault tests)"
    config_class = SyntheticConfig
    schema = pa.schema([
        column("values", pa.float32(), "standard normal draws seeded by the sample's seed", shape=(None,)),
        column("total", pa.float64(), "the sum of values"),
    ])

    def plan(self, config: SyntheticConfig, context) -> Iterator[dict]:
        return ({"input_id": "synthetic", "index": i} for i in range(config.count))

    def plan_summary(self, config: SyntheticConfig, context) -> PlanSummary:
        return PlanSummary(f"synthetic:{config.count}", config.count)  # the count is the whole plan

    def stages(self, config: SyntheticConfig):
        work = [FixedCostWork(config.work_ms, config.values)]
        return [*work, AcceleratorWork(config.accelerator_ms)] if config.accelerator_ms else work
