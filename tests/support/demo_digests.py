"""Content digests of the demo's datasets (`DatasetVersion.content_digest`), and the golden copy the demo test
compares them with: moving or refactoring code must not change what the demo makes.

The demo runs at one fixed place (input paths are part of the configs, so of the sample ids and seeds) and on one
thread (torch's multi-threaded CPU reductions are not bit-reproducible). When a change is *meant* to change the
demo's data (a fix to a paper's formula), re-record the golden copy and say why in the commit:
    .venv/bin/python tests/support/demo_digests.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hoi_factory.datasets import DatasetStore
from hoi_factory.storage import Store

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "demo_digests.json"
DEMO_STORE = Path(tempfile.gettempdir()) / "hoi-factory-golden-demo"


def demo_digests(store: Store) -> dict[str, str]:
    """`name/version` -> content digest of the newest version of every dataset in the store."""
    datasets = DatasetStore(store)
    return {version.ref: version.content_digest() for version in map(datasets.open, datasets.names())}


if __name__ == "__main__":
    shutil.rmtree(DEMO_STORE, ignore_errors=True)
    env = {**os.environ, "HOI_STORE_URL": str(DEMO_STORE), "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).with_name("hoi-factory")), "demo", "--executor", "local", "--no-models"]
    subprocess.run(command, env=env, check=True)
    GOLDEN.write_text(json.dumps(demo_digests(Store(str(DEMO_STORE))), indent=1, sort_keys=True) + "\n")
    shutil.rmtree(DEMO_STORE, ignore_errors=True)
    print(f"wrote {GOLDEN}")
