"""Writing a shard's array columns: flat float lists converted by Arrow (how views were stored before shapes were
declared) against numpy arrays of the declared shapes packed by hoi_factory.columns.shaped_array (what
rows_to_table does now).

Rows like chorus-views': keypoints (17, 3), body_pose (23, 3), K (3, 3), R (3, 3), t (3,), float32.
- flat_lists: the old EncodeView conversion (`np.asarray(..).reshape(-1).tolist()` per cell) plus
  `pa.Table.from_pylist` into `list<float>` columns;
- shaped_numpy: `rows_to_table` with the arrays as the stages make them, into fixed-size list columns.
Interleaved repeats (flat, shaped, flat, ...), CPU time of this process (`time.process_time`), one thread.

    python -m benchmarks.columns [--rows 4096] [--repeats 7] [--out benchmarks/results/columns.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.results_table import interleaved, median, show_and_save
from hoi_factory.datasets import rows_to_table
from tasks.chorus.views import ViewsPipeline

SHAPES = {"keypoints": (17, 3), "body_pose": (23, 3), "K": (3, 3), "R": (3, 3), "t": (3,)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/columns.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}
            for _ in range(args.rows)]
    shaped_schema = pa.schema([ViewsPipeline.schema.field(name) for name in SHAPES])
    flat_schema = pa.schema([(name, pa.list_(pa.float32())) for name in SHAPES])

    def flat_lists() -> float:
        start = time.process_time()
        flat = [{name: np.asarray(row[name], dtype=np.float32).reshape(-1).tolist() for name in SHAPES}
                for row in rows]
        pa.Table.from_pylist(flat, schema=flat_schema)
        return args.rows / (time.process_time() - start)

    def shaped_numpy() -> float:
        start = time.process_time()
        _, rejects = rows_to_table(rows, shaped_schema)
        assert not rejects
        return args.rows / (time.process_time() - start)

    measured = interleaved({"flat_lists": flat_lists, "shaped_numpy": shaped_numpy}, args.repeats)
    show_and_save(f"array columns of {args.rows} views-like rows into an Arrow table", "rows/CPU-s", measured,
                  {"shaped / flat rows per CPU-second": median(measured["shaped_numpy"])
                   / median(measured["flat_lists"])}, args.out, rows=args.rows)


if __name__ == "__main__":
    main()
