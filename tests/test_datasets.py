"""The dataset store, on a local folder and on a real S3 endpoint (moto server on 127.0.0.1, through s3fs)."""

import hashlib

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from hoi_factory import ids
from hoi_factory.codec import open_image
from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.datasets import REJECTS_SCHEMA, DatasetStore, ShardLedger
from hoi_factory.pipeline import check_columns
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store, StoreError
from hoi_factory.versions import VersionBusy, VersionPublished
from tasks.c_hoi.annotations import HOIAnnotationsConfig, HOIAnnotationsPipeline
from tasks.images.ingest import IngestConfig, IngestPipeline
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline, seeded_value_rows, seeded_values


def local_config(cls, **fields):
    return cls(**fields, execution={"executor": "local", "shard_size": 5})


def test_ingest_round_trip(store_env, image_folder):
    folder, expected_rejects = image_folder
    result = run_pipeline(IngestPipeline(), local_config(IngestConfig, source=str(folder), max_side=64))
    dataset = DatasetStore(Store.from_settings(Settings())).open("ingest")
    assert dataset.version == result.dataset.version == "v1"

    table = dataset.to_pandas()
    assert len(table) == dataset.manifest.num_samples == 12
    assert sorted(table.input_id) == [f"scenes/scene-{i:05d}.png" for i in range(12)]
    # Images come back as the pipeline made them: the source scene, scaled to fit 64 px.
    source = Image.open(folder / table.input_id[0])
    stored = open_image(table.image[0])
    assert max(stored.size) == 64 and stored.size == (table.width[0], table.height[0])
    assert table.source_sha256[0] == hashlib.sha256((folder / table.input_id[0]).read_bytes()).hexdigest()
    assert abs(stored.size[0] / stored.size[1] - source.size[0] / source.size[1]) < 0.02

    # Every known-bad input is rejected, with its reason, and counted in the manifest.
    rejects = dataset.rejects().to_pandas()
    assert dict(zip(rejects.input_id, rejects.reason)) == expected_rejects
    assert dataset.manifest.num_rejects == len(expected_rejects)
    assert dataset.manifest.num_inputs == 12 + len(expected_rejects)
    assert dataset.manifest.reject_reasons["ReadImage: empty file"] == 1
    assert dataset.manifest.funnel[0] == {"stage": "inputs", "rows_out": 16}
    assert dataset.manifest.funnel[-1]["rows_out"] == 12

    # Ids are the documented function of (config hash, input id, index), and unique.
    config_hash = dataset.manifest.config_hash
    assert list(table.sample_id) == [ids.sample_id(config_hash, i, 0) for i in table.input_id]
    assert table.sample_id.is_unique
    assert dataset.validate() == []
    assert dataset.manifest.report == {"funnel": "report/funnel.png", "samples": "report/samples.png",
                                       "html": "report/index.html"}


def test_image_pipelines_declare_columns_that_chain(tmp_path):
    ingest = IngestPipeline()
    check_columns(ingest, ingest.stages(ingest.demo_config(tmp_path / "ingest", ExecutionConfig(executor="local"))))
    annotations = HOIAnnotationsPipeline()  # no demo: any config has the same stages
    config = HOIAnnotationsConfig(annotations=str(tmp_path / "hoi.json"), images=str(tmp_path / "images"),
                                  execution=ExecutionConfig(executor="local"))
    check_columns(annotations, annotations.stages(config))


def test_synthetic_values_follow_from_seeds_alone(store_env):
    dataset = run_pipeline(SyntheticPipeline(), local_config(SyntheticConfig, count=23, work_ms=0, values=4)).dataset
    assert [shard.rows for shard in dataset.shards] == [5, 5, 5, 5, 3]
    config_hash = dataset.manifest.config_hash
    for index, row in enumerate(dataset.to_arrow().to_pylist()):
        assert row["sample_id"] == ids.sample_id(config_hash, "synthetic", index)
        assert row["seed"] == ids.sample_seed(config_hash, "synthetic", index)
        np.testing.assert_array_equal(np.float32(row["values"]), seeded_values(row["seed"], 4))
        assert row["total"] == pytest.approx(float(np.float64(np.float32(row["values"])).sum()))


def test_seeded_values_are_standard_normal_and_independent_of_the_batch():
    rows = seeded_value_rows(np.arange(50_000), 9)  # an odd count: Box-Muller pairs cut at the end
    assert rows.shape == (50_000, 9) and rows.dtype == np.float32 and np.isfinite(rows).all()
    assert abs(rows.mean()) < 0.01 and abs(rows.std() - 1) < 0.01
    assert stats.kstest(rows.ravel(), "norm").pvalue > 1e-3
    assert abs(np.corrcoef(rows[:, 0], rows[:, 1])[0, 1]) < 0.02  # positions within a row
    assert abs(np.corrcoef(rows[:-1, 0], rows[1:, 0])[0, 1]) < 0.02  # neighbouring seeds
    for seed in (0, 7, 49_999):  # a row drawn alone equals the same row drawn in a batch
        np.testing.assert_array_equal(seeded_values(seed, 9), rows[seed])


def test_readers_see_only_published_versions_and_latest_moves_after_the_manifest(store_env):
    store = DatasetStore(Store.from_settings(Settings()))
    writer = store.begin("half", "v1", "fingerprint-a", SyntheticPipeline.schema)
    writer.sink.write(0, writer.sink.schema.empty_table(), REJECTS_SCHEMA.empty_table(), 0, {}, {})
    assert store.versions("half") == [] and "half" not in store.names()
    with pytest.raises(StoreError, match="no published version"):
        store.open("half")
    writer.commit(ShardLedger.of(writer.sink.done_shards().values()), num_inputs=0, pipeline="test", config={},
                  config_hash="h", code_version="test")
    assert store.versions("half") == ["v1"] and store.open("half").version == "v1"
    assert store.store.read_json("datasets", "half", "latest.json") == {"version": "v1"}
    assert "_lock.json" not in store.store.list_files("datasets", "half", "v1")


def test_published_versions_are_immutable_and_writers_exclusive(store_env):
    first = run_pipeline(SyntheticPipeline(), local_config(SyntheticConfig, count=3, work_ms=0)).dataset
    store = DatasetStore(Store.from_settings(Settings()))
    with pytest.raises(VersionPublished):
        store.begin("synthetic", first.version, "any", SyntheticPipeline.schema)
    # The same config again publishes nothing new: the dataset already exists.
    again = run_pipeline(SyntheticPipeline(), local_config(SyntheticConfig, count=3, work_ms=0))
    assert again.reused and again.dataset.version == first.version and store.versions("synthetic") == ["v1"]
    # Two live writers of one version: the second is refused; another version proceeds.
    holder = store.begin("synthetic", "v9", "fp", SyntheticPipeline.schema)
    with pytest.raises(VersionBusy, match="being written by another run"):
        store.begin("synthetic", "v9", "fp", SyntheticPipeline.schema)
    other = store.begin("synthetic", "v10", "fp", SyntheticPipeline.schema)
    holder.lease.release()
    other.lease.release()


def test_validate_finds_a_corrupted_shard(store_env):
    dataset = run_pipeline(SyntheticPipeline(), local_config(SyntheticConfig, count=12, work_ms=0)).dataset
    store = dataset.store
    shard = dataset.shards[1]
    data = bytearray(store.read_bytes("datasets", dataset.name, dataset.version, shard.file))
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(bytes(data), "datasets", dataset.name, dataset.version, shard.file)
    store.remove("datasets", dataset.name, dataset.version, dataset.shards[2].rejects_file)
    problems = dataset.validate()
    assert problems == [f"{shard.file}: checksum mismatch (the manifest says sha256 {shard.sha256[:12]}…)",
                        f"{dataset.shards[2].rejects_file}: missing"]


def test_readable_as_arrow_pandas_torch_and_ray(local_store_env, local_ray):
    dataset = run_pipeline(SyntheticPipeline(), local_config(SyntheticConfig, count=11, work_ms=0, values=3)).dataset
    arrow = dataset.to_arrow()
    torch_view = dataset.to_torch(columns=["sample_id", "values"])
    assert len(torch_view) == 11
    assert [torch_view[i]["sample_id"] for i in range(11)] == arrow.column("sample_id").to_pylist()
    assert torch_view[-1]["values"] == arrow.column("values").to_pylist()[-1]
    with pytest.raises(IndexError):
        torch_view[11]
    ray_rows = dataset.to_ray().take_all()
    assert sorted(r["sample_id"] for r in ray_rows) == sorted(arrow.column("sample_id").to_pylist())


def test_shards_left_by_another_config_are_never_reused(local_store_env):
    store = DatasetStore(Store.from_settings(Settings()))
    stranger = store.begin("synthetic", "v1", "someone-else", SyntheticPipeline.schema)
    stranger.sink.write(0, stranger.sink.schema.empty_table(), REJECTS_SCHEMA.empty_table(), 4, {}, {})
    stranger.lease.release()  # its lock is gone, its completion record stays
    config = SyntheticConfig(count=8, work_ms=0, execution={"executor": "local", "shard_size": 4},
                             output={"version": "v1"})
    result = run_pipeline(SyntheticPipeline(), config)
    assert result.shards_resumed == 0 and result.dataset.manifest.num_samples == 8
    assert result.dataset.validate() == []
