"""What a store can do to a dataset after (or while) it is published, and what readers then see: flipped bits,
swapped or rewritten shards, a tampered manifest, a crash between the manifest and the latest pointer, a
tampered parent. Nothing silently different is ever read; validate names every fault in one line each."""

import hashlib
import io
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hoi_factory.config import ConfigError, Settings, load_run_config
from hoi_factory.datasets import SHARD_INDEX, CorruptShard, DatasetStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store, StoreError
from hoi_factory.versions import LATEST, LOCK, MANIFEST, CorruptManifest, manifest_checksum
from support.pipelines import ScaleConfig, ScalePipeline
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline

CONFIG = SyntheticConfig(count=24, work_ms=0, values=16, seed=21, execution={"executor": "local", "shard_size": 8})


@pytest.fixture
def published(local_store_env):
    return run_pipeline(SyntheticPipeline(), CONFIG).dataset


def shard_path(dataset, index=0):
    return dataset.store.path("datasets", dataset.name, dataset.version, dataset.shards[index].file)


def test_every_bit_flip_in_a_shard_is_caught_on_read(published):
    path = shard_path(published)
    original = open(path, "rb").read()
    rng = random.Random(0)
    for _ in range(200):
        damaged = bytearray(original)
        bit = rng.randrange(len(damaged) * 8)
        damaged[bit // 8] ^= 1 << (bit % 8)
        open(path, "wb").write(bytes(damaged))
        with pytest.raises(CorruptShard, match="checksum mismatch"):
            published.read_shard(0)
    open(path, "wb").write(original)
    assert published.read_shard(0).num_rows == 8


def test_swapped_shards_and_a_truncated_shard_are_caught(published):
    first, second = shard_path(published, 0), shard_path(published, 1)
    a, b = open(first, "rb").read(), open(second, "rb").read()
    open(first, "wb").write(b)
    open(second, "wb").write(a)
    with pytest.raises(CorruptShard):
        published.to_arrow()
    open(first, "wb").write(a[:-10])
    problems = published.validate()
    assert any("bytes, the manifest says" in p for p in problems) and len(problems) == 2


def tamper_manifest(dataset, change):
    path = dataset.store.path("datasets", dataset.name, dataset.version, MANIFEST)
    manifest = json.load(open(path))
    change(manifest)
    open(path, "w").write(json.dumps(manifest))
    return manifest


def test_a_changed_manifest_is_refused_and_one_rewritten_with_its_checksum_still_fails_validate(published):
    datasets = DatasetStore(Store.from_settings(Settings()))
    tamper_manifest(published, lambda m: m.update(num_samples=23))
    with pytest.raises(CorruptManifest, match="does not match its checksum"):
        datasets.open("synthetic", published.version)

    def drop_a_shard_and_resign(manifest):  # a writer that knows the checksum rule and the shard index
        index = Path(published.store.path("datasets", published.name, published.version, SHARD_INDEX))
        data = io.BytesIO()
        pq.write_table(pq.read_table(index).slice(0, 2), data)
        index.write_bytes(data.getvalue())
        manifest["num_samples"] = 16
        manifest["shard_index"].update(sha256=hashlib.sha256(data.getvalue()).hexdigest(), bytes=len(data.getvalue()))
        manifest["checksum"] = manifest_checksum(manifest)

    tamper_manifest(published, drop_a_shard_and_resign)
    problems = datasets.open("synthetic", published.version).validate()
    assert any("a shard file the manifest does not list" in p for p in problems)
    assert any("inputs but 16 samples" in p for p in problems) and any("cover 16 of 24" in p for p in problems)


def test_manifests_from_before_checksums_are_still_read_but_a_stripped_new_one_is_not(published):
    datasets = DatasetStore(Store.from_settings(Settings()))
    tamper_manifest(published, lambda m: m.pop("checksum"))  # a version 2 manifest whose checksum was removed
    with pytest.raises(CorruptManifest):
        datasets.open("synthetic", published.version)
    tamper_manifest(published, lambda m: m.update(schema_version=1))  # as written before checksums existed
    assert datasets.open("synthetic", published.version).manifest.num_samples == 24


def test_a_manifest_that_is_not_json_is_one_line_in_the_cli(published):
    from typer.testing import CliRunner

    from flows.cli import app

    path = published.store.path("datasets", published.name, published.version, MANIFEST)
    data = bytearray(open(path, "rb").read())
    data[0] ^= 0xFF
    open(path, "wb").write(bytes(data))
    result = CliRunner().invoke(app, ["datasets", "validate", f"synthetic/{published.version}"])
    assert result.exit_code == 2 and "is not valid JSON" in result.output and "Traceback" not in result.output


def test_a_crash_between_manifest_and_pointer_is_repaired_on_the_next_run(published):
    store = published.store
    newer = run_pipeline(SyntheticPipeline(), CONFIG.model_copy(update={"seed": 22})).dataset
    # As after a crash right after the manifest: the pointer still names the old version, the lock is still there.
    store.write_json({"version": published.version}, "datasets", "synthetic", LATEST)
    store.write_json({"run_id": "dead", "fingerprint": newer.manifest.fingerprint, "host": "gone", "pid": 1,
                      "heartbeat": 0}, "datasets", "synthetic", newer.version, LOCK)
    datasets = DatasetStore(store)
    assert datasets.open("synthetic").version == newer.version  # latest follows the manifests, not the pointer
    assert store.read_json("datasets", "synthetic", LATEST)["version"] == newer.version  # and the pointer is fixed
    again = run_pipeline(SyntheticPipeline(), CONFIG.model_copy(update={"seed": 22}))
    assert again.reused and again.dataset.version == newer.version
    assert LOCK not in store.list_files("datasets", "synthetic", newer.version)


def test_config_edges_are_one_clear_error(tmp_path):
    cases = {"count=true": "expected a number, got the boolean",
             "execution.workers=[1": "not valid YAML",
             "output.version=latest": "reserved by the store",
             "output.version=v2.json": "reserved by the store"}
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_run_config(SyntheticConfig, None, [override])
    bad = tmp_path / "run.yaml"
    bad.write_text("count: [1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_run_config(SyntheticConfig, bad)


def test_a_reader_never_gets_unverified_rows_from_a_parent(published):
    """A child pipeline reading a tampered parent shard: planning already reads every parent shard (their
    sample ids), verified, so the run stops before any work, naming the file; nothing of the child is published."""
    data = bytearray(open(shard_path(published, 1), "rb").read())
    data[len(data) // 2] ^= 0x01
    open(shard_path(published, 1), "wb").write(bytes(data))
    with pytest.raises(CorruptShard, match=f"{published.shards[1].file}: checksum mismatch"):
        run_pipeline(ScalePipeline(), ScaleConfig(parent="synthetic", execution={"executor": "local"}))
    assert DatasetStore(Store.from_settings(Settings())).versions("scaled") == []


def test_a_store_that_ignores_conditional_writes_is_refused_before_any_write(s3_store_env, moto_endpoint, monkeypatch):
    """Behind a proxy that drops If-None-Match two writers could both publish one version: the first writer
    probes the server, refuses to run and says why; the same store reached directly works."""
    from support.header_proxy import start_header_dropping_proxy

    proxy = start_header_dropping_proxy(int(moto_endpoint.rsplit(":", 1)[1]), {"if-none-match"})
    try:
        monkeypatch.setenv("HOI_S3_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_port}")
        with pytest.raises(StoreError, match="ignored a conditional write"):
            run_pipeline(SyntheticPipeline(), CONFIG)
        assert DatasetStore(Store.from_settings(Settings())).names() == []
    finally:
        proxy.shutdown()
    monkeypatch.setenv("HOI_S3_ENDPOINT_URL", moto_endpoint)
    assert run_pipeline(SyntheticPipeline(), CONFIG).dataset.manifest.num_samples == 24


def test_versions_published_before_the_shard_index_list_their_shards_in_the_manifest_and_still_read(published):
    index_file = Path(published.store.path("datasets", published.name, published.version, SHARD_INDEX))
    records = [shard.model_dump() for shard in published.shards]

    def inline_the_shards(manifest):  # a schema version 2 manifest, as published before shards.parquet
        manifest.update(schema_version=2, shards=records, shard_index={})
        manifest.pop("num_shards")
        manifest["checksum"] = manifest_checksum(manifest)

    tamper_manifest(published, inline_the_shards)
    index_file.unlink()
    old = DatasetStore(Store.from_settings(Settings())).open("synthetic", published.version)
    assert old.manifest.num_shards == 3 and [s.rows for s in old.shards] == [8, 8, 8]
    assert old.validate() == [] and old.to_arrow().equals(published.to_arrow())
