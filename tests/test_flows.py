"""Flows under Prefect's test harness: datasets, the published event, artifacts; Ray == in-process."""

import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows import progress
from flows.maintenance import DatasetInvalid, validate_dataset
from flows.pipelines import ingest, synthetic
from flows.runner import PUBLISHED_EVENT
from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.storage import Store
from tasks.images.ingest import IngestConfig
from tasks.synthetic.pipeline import SyntheticConfig


def read_artifact(key):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_flow_publishes_a_version_emits_the_event_and_leaves_artifacts(local_store_env, image_folder, captured_events):
    folder, expected_rejects = image_folder
    config = IngestConfig(source=str(folder), execution={"executor": "local"}, output={"dataset": "flow-test"})
    lines: dict[str, tuple[int, int]] = {}  # label -> last (done, total) reported
    with progress.listening(lambda label, done, total: lines.__setitem__(label, (done, total))):
        summary = ingest(config)
    assert (summary["dataset"], summary["version"], summary["samples"]) == ("flow-test", "v1", 12)
    assert summary["rejects"] == len(expected_rejects)
    # Progress per stage in samples: each stage's line ends at the samples that reached it.
    dataset = DatasetStore(Store(local_store_env)).open("flow-test", "v1")
    funnel = {step["stage"]: step["rows_in"] for step in dataset.manifest.funnel[1:]}
    assert lines == {"ingest: samples": (16, 16), **{f"ingest › {stage}": (n, 16) for stage, n in funnel.items()}}
    assert funnel["ReadImage"] == 16 > funnel["EncodePNG"] == 12

    [event] = [e for e in captured_events() if e.event == PUBLISHED_EVENT]
    assert event.payload == {"dataset": "flow-test", "version": "v1", "num_samples": 12,
                             "url": f"{local_store_env}/datasets/flow-test/v1", "pipeline": "ingest"}
    assert event.resource.id == "hoi.dataset.flow-test"

    [table] = read_artifact("flow-test-v1-summary")
    [row] = json.loads(table.data)
    assert (row["dataset"], row["version"], row["samples"], row["rejects"]) == ("flow-test", "v1", 12, 4)
    [report] = read_artifact("flow-test-v1-report")
    assert "| ReadImage | 16 | 13 |" in report.data and "data:image/png;base64," in report.data

    # The same flow again publishes nothing new and emits no second event.
    again = ingest(config)
    assert again["reused"] and again["version"] == "v1"
    assert len([e for e in captured_events() if e.event == PUBLISHED_EVENT]) == 0


def test_ray_and_in_process_executors_make_identical_datasets(local_store_env, image_folder, prefect_harness,
                                                              local_ray):
    folder, _ = image_folder
    made = {}
    for executor in ("local", "ray"):
        made[executor] = ingest(IngestConfig(source=str(folder), max_side=48, output={"version": executor},
                                             execution={"executor": executor, "workers": 2, "shard_size": 3}))
    store = DatasetStore(Store.from_settings(Settings()))
    local, ray = store.open("ingest", "local"), store.open("ingest", "ray")
    assert local.to_arrow().equals(ray.to_arrow())
    assert local.rejects().sort_by("sample_id").equals(ray.rejects().sort_by("sample_id"))
    assert [s.sha256 for s in local.shards] == [s.sha256 for s in ray.shards]
    assert ray.manifest.run["executor"].startswith("ray")
    # Workers wrote the shards themselves: the records name Ray nodes and worker processes, not the driver.
    assert all("node_id" in s.worker for s in ray.shards)


def test_synthetic_flow_on_ray(local_store_env, prefect_harness, local_ray):
    import ray.data

    summary = synthetic(SyntheticConfig(count=20, work_ms=1, execution={"executor": "ray", "shard_size": 5}))
    assert (summary["samples"], summary["shards"], summary["rejects"]) == (20, 4, 0)
    assert not ray.data.DataContext.get_current().enable_progress_bars  # the factory's bars only, by default
    synthetic(SyntheticConfig(count=10, work_ms=1, execution={"executor": "ray", "shard_size": 5,
                                                              "ray_progress_bars": True}))
    assert ray.data.DataContext.get_current().enable_progress_bars


def test_validate_flow_passes_a_good_version_and_fails_a_damaged_one(local_store_env, prefect_harness):
    synthetic(SyntheticConfig(count=8, work_ms=0, execution={"executor": "local", "shard_size": 4}))
    assert validate_dataset("synthetic/v1") == {"dataset": "synthetic/v1", "shards": 2, "problems": []}
    first = DatasetStore(Store.from_settings(Settings())).open("synthetic", "v1").shards[0].file
    Store.from_settings(Settings()).write_bytes(b"not parquet", "datasets", "synthetic", "v1", first)
    with pytest.raises(DatasetInvalid, match=f"{first}: 11 bytes, the manifest says"):
        validate_dataset("synthetic")
