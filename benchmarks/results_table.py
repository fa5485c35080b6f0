"""How every benchmark shows its result: a table of runs, the ratios in bold, and the same as JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Table


def show_and_save(title: str, rate_name: str, seconds: dict[str, float], rates: dict[str, float],
                  ratios: dict[str, float], out: Path, **facts) -> None:
    """Print `seconds` and `rates` per run and the ratios; write all of it (plus `facts`, the machine) to `out`."""
    table = Table(title=title)
    for column in ("run", "seconds", rate_name):
        table.add_column(column, justify="right")
    for name in seconds:
        table.add_row(name, f"{seconds[name]:.2f}", f"{rates[name]:.2f}")
    console = Console()
    console.print(table)
    for name, value in ratios.items():
        console.print(f"{name:>32}: [bold]{value:.3f}[/]")
    out.parent.mkdir(parents=True, exist_ok=True)
    rate_key = rate_name.replace("/s", "_per_second")  # "items/s" -> "items_per_second"
    out.write_text(json.dumps({**facts, "seconds": seconds, rate_key: rates, "ratios": ratios,
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()}}, indent=2))
    console.print(f"written: {out}")
