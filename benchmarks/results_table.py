"""How every benchmark measures and shows its result.

`interleaved` runs each configuration `repeats` times in turn (A, B, A, B, ...), so a machine that slows down
part-way (other load, thermal limits) hurts every configuration alike; `show_and_save` prints the median and
the spread (min-max) of each, the ratios of medians in bold, and writes the same as JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """{name: [measurement per repeat]}: each callable returns its own measurement (seconds, a rate...)."""
    measured: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            measured[name].append(run())
    return measured


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def show_and_save(title: str, unit: str, measured: dict[str, list[float]], ratios: dict[str, float], out: Path,
                  **facts) -> None:
    """Print each configuration's median and spread of `unit` and the ratios; write all of it (plus `facts`,
    the machine) to `out`."""
    table = Table(title=title)
    for column in ("run", f"median {unit}", "min", "max", "runs"):
        table.add_column(column, justify="right")
    summary = {name: spread(values) for name, values in measured.items()}
    for name, s in summary.items():
        table.add_row(name, f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}", str(s["n"]))
    console = Console()
    console.print(table)
    for name, value in ratios.items():
        console.print(f"{name:>40}: [bold]{value:.3f}[/]")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**facts, "unit": unit, "measured": measured, "summary": summary, "ratios": ratios,
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()}}, indent=2))
    console.print(f"written: {out}")


def median(values: list[float]) -> float:
    return statistics.median(values)
