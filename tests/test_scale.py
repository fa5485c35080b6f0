"""Bookkeeping at scale (#23), at sizes CI affords: the driver's memory follows the shard count, not the sample
count, and a run killed halfway resumes to every sample exactly once. Each run is a fresh process (the
in-process executor: the process is the driver), measured by the kernel (VmHWM). Speed is in benchmarks/scale.py."""

import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.scale import child, finished, kill_halfway
from hoi_factory import ids
from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.storage import Store
from tasks.synthetic.pipeline import SyntheticConfig


def test_driver_memory_stays_flat_when_the_samples_grow_four_fold_with_the_shard_count_fixed(tmp_path):
    small = finished(child(50_000, 50_000 // 16, tmp_path / "small"))
    large = finished(child(200_000, 200_000 // 16, tmp_path / "large"))
    assert small["samples"] == 50_000 and large["samples"] == 200_000 and small["shards"] == large["shards"] == 16
    # Holding the plan cost ~0.8 KB per item before the plan streamed (837 MB at 1M): ~120 MB more here. What may
    # grow is the shard in flight, 4x larger (12.5k rows: measured +34 MB), and 8 bytes per item (+1.2 MB).
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 60, (small["peak_rss_mb"], large["peak_rss_mb"])


def test_a_run_killed_halfway_at_200k_samples_resumes_without_losing_or_doubling_one(tmp_path):
    count, shard_size, store = 200_000, 4096, tmp_path / "store"
    killed_at = kill_halfway(count, shard_size, store)
    resumed = finished(child(count, shard_size, store))
    assert resumed["version"] == "v1" and resumed["resumed"] >= killed_at > 0
    dataset = DatasetStore(Store.from_settings(Settings(store_url=str(store)))).open("synthetic", "v1")
    assert dataset.validate() == []
    assert dataset.manifest.num_samples == count and dataset.manifest.num_shards == -(-count // shard_size)
    index = pq.read_table(store / "datasets" / "synthetic" / "v1" / "shards.parquet")
    assert index.num_rows == dataset.manifest.num_shards and pc.sum(index.column("rows")).as_py() == count
    config_hash = SyntheticConfig(count=count, work_ms=0, values=8,
                                  execution={"executor": "local", "shard_size": shard_size}).config_hash()
    made = dataset.to_arrow(["sample_id", "seed"])
    assert made.column("sample_id").to_pylist() == [ids.sample_id(config_hash, "synthetic", i) for i in range(count)]
    assert made.column("seed")[123_456].as_py() == ids.sample_seed(config_hash, "synthetic", 123_456)
