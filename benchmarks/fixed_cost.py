"""What a user waits for before any work: `hoi-factory --help`, and a 20-item synthetic run from the CLI.

Each is a fresh process (as a user types it), in a fresh store and Prefect home, wall time and the child's
peak memory; the commands are interleaved and repeated. The run includes checks, planning, the in-process
executor (`auto` for 20 items), Parquet shards, the report and the manifest: with no Prefect API configured it
runs in the CLI's process; `--prefect` makes it a flow run on Prefect's temporary local server instead.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_table import interleaved, median, show_and_save

CLI = str(Path(sys.executable).parent / "hoi-factory")


def timed(command: list[str], peaks: list[float]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "HOI_STORE_URL": f"{folder}/store", "PREFECT_HOME": f"{folder}/prefect"}
        env.pop("PREFECT_API_URL", None)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        subprocess.run(command, env=env, cwd=folder, check=True, capture_output=True)
        wall = time.perf_counter() - started
        peaks.append(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024)  # MB
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fixed_cost.json"))
    args = parser.parse_args()
    peaks: dict[str, list[float]] = {"help": [], "synthetic_20": [], "synthetic_20_prefect": []}
    run = [CLI, "run", "synthetic", "count=20", "work_ms=1"]
    seconds = interleaved({
        "help": lambda: timed([CLI, "--help"], peaks["help"]),
        "synthetic_20": lambda: timed(run, peaks["synthetic_20"]),
        "synthetic_20_prefect": lambda: timed([*run, "--prefect"], peaks["synthetic_20_prefect"]),
    }, args.repeats)
    # ru_maxrss of children is the largest child so far: only the first --help run is its own figure.
    show_and_save("CLI fixed cost (fresh process each)", "seconds", seconds,
                  {"help_seconds": median(seconds["help"]), "synthetic_20_seconds": median(seconds["synthetic_20"]),
                   "synthetic_20_prefect_seconds": median(seconds["synthetic_20_prefect"]),
                   "help_peak_rss_mb": peaks["help"][0]}, args.out, benchmark="fixed_cost")


if __name__ == "__main__":
    main()
