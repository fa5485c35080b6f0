"""Scale bookkeeping: plan, run, reuse, kill and resume the `synthetic` pipeline at 1M and 10M samples.

The synthetic pipeline with `work_ms=0` does no work per sample beyond drawing its seeded values, so what is
measured is the factory's own cost: planning, ids and seeds, cutting shards, Parquet and completion records,
the ledger, the shard index and the manifest. Every run is a fresh process with the in-process executor (the
process is the driver), its peak RSS read from the kernel (VmHWM) and its CPU time from `time.process_time`.
Printed per sample count:
- items/s: samples / CPU seconds of the whole run; `framework` items/s leaves out the stage's own CPU
  (the same rows through FixedCostWork in a bare loop, measured in the same process before the run);
- peak driver RSS, manifest and shard index sizes;
- reuse: an identical re-run that finds the published version (wall seconds of `run_pipeline`);
- resume: a run killed (SIGKILL) once half its shards are written, then resumed: seconds to read the finished
  shards' completion records, to write the first new shard (the plan walked past the finished half: no ids, no
  reads) and to publish.

    python -m benchmarks.scale --counts 1000000 10000000 --shard-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
from hoi_factory.config import Settings
from hoi_factory.run import run_pipeline
from tasks.synthetic.pipeline import FixedCostWork, SyntheticConfig, SyntheticPipeline

count, shard_size, store, bare_rows = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
config = SyntheticConfig(count=count, work_ms=0, values=8, execution={"executor": "local", "shard_size": shard_size})
stage = FixedCostWork(0, 8)
started = time.process_time()
for start in range(0, bare_rows, stage.batch_size):
    stage.process([{"sample_id": "x", "seed": i} for i in range(start, min(start + stage.batch_size, bare_rows))])
stage_cpu_per_row = (time.process_time() - started) / max(bare_rows, 1)
marks = []  # when progress was reported: first with the resumed inputs, then after each new shard

def progress(done, total, stages):
    marks.append(time.perf_counter())

wall, cpu = time.perf_counter(), time.process_time()
result = run_pipeline(SyntheticPipeline(), config, Settings(store_url=store), progress)
end = time.perf_counter()
hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
manifest = result.dataset.manifest
print(json.dumps({"wall": end - wall, "cpu": time.process_time() - cpu, "stage_cpu": stage_cpu_per_row * count,
                  "marks": [mark - wall for mark in marks[:2]], "peak_rss_mb": hwm_kib / 1024,
                  "reused": result.reused, "samples": manifest.num_samples, "shards": manifest.num_shards,
                  "resumed": result.shards_resumed, "version": manifest.version}))
"""


def child(count: int, shard_size: int, store: Path, bare_rows: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(count), str(shard_size), str(store), str(bare_rows)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finished(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        raise RuntimeError(f"child failed ({process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def kill_halfway(count: int, shard_size: int, store: Path) -> int:
    """Start a run and SIGKILL it once half its shards have completion records; returns how many had."""
    process = child(count, shard_size, store)
    completions = store / "datasets" / "synthetic" / "v1" / "_completions"
    half = count // shard_size // 2
    while process.poll() is None:
        done = len(os.listdir(completions)) if completions.exists() else 0
        if done >= half:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return done
        time.sleep(0.2)
    raise RuntimeError("the run ended before it could be killed")


def measure(count: int, shard_size: int, bare_rows: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        run = finished(child(count, shard_size, store, bare_rows))
        version = store / "datasets" / "synthetic" / run["version"]
        sizes = {"manifest_kb": (version / "manifest.json").stat().st_size / 1024,
                 "index_mb": (version / "shards.parquet").stat().st_size / 2**20}
        reuse = finished(child(count, shard_size, store))
        assert reuse["reused"], "the identical re-run did not find the published version"
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        killed_at = kill_halfway(count, shard_size, store)
        resumed = finished(child(count, shard_size, store))
        assert resumed["samples"] == count and resumed["resumed"] >= killed_at, resumed
    return {"count": count, "shard_size": shard_size, **run, **sizes,
            "items_per_cpu_s": count / run["cpu"], "framework_items_per_cpu_s": count / (run["cpu"] - run["stage_cpu"]),
            "reuse_s": reuse["wall"], "reuse_peak_rss_mb": reuse["peak_rss_mb"], "killed_at_shards": killed_at,
            "resume_scan_s": resumed["marks"][0], "resume_first_new_shard_s": resumed["marks"][1],
            "resume_s": resumed["wall"],
            "resume_peak_rss_mb": resumed["peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--bare-rows", type=int, default=200_000, help="rows timed through the bare stage loop")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = parser.parse_args()
    results = []
    for count in args.counts:
        figures = measure(count, args.shard_size, args.bare_rows)
        results.append(figures)
        print(f"{count:>11,} samples, {figures['shards']:,} shards of {args.shard_size}: "
              f"{figures['items_per_cpu_s']:,.0f} items/CPU-s ({figures['framework_items_per_cpu_s']:,.0f} without "
              f"the stage's own work), wall {figures['wall']:.0f} s; peak driver RSS {figures['peak_rss_mb']:.0f} MB; "
              f"manifest {figures['manifest_kb']:.1f} KB, shard index {figures['index_mb']:.2f} MB; reuse "
              f"{figures['reuse_s']:.2f} s; killed after {figures['killed_at_shards']:,} shards, resume "
              f"{figures['resume_scan_s']:.1f} s to read the finished shards' records, "
              f"{figures['resume_first_new_shard_s']:.1f} s to write the first new one, {figures['resume_s']:.0f} s to "
              f"publish (peak RSS {figures['resume_peak_rss_mb']:.0f} MB)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
