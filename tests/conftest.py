"""Shared fixtures: a fresh store per test (local folder or a real S3 endpoint served by moto on 127.0.0.1),
procedural inputs, one local Ray for the session, Prefect's test harness."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support.network import moto_server

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3 endpoint on loopback (moto's server), as s3fs's own tests use."""
    with moto_server() as url:
        yield url


@pytest.fixture
def s3_store_env(moto_endpoint, monkeypatch, request):
    """Point the factory at a fresh bucket on the moto endpoint."""
    import boto3

    bucket = f"test-{request.node.name.lower().replace('_', '-').replace('[', '-').replace(']', '')}"[:60]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("HOI_S3_ENDPOINT_URL", moto_endpoint)
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/factory"
    monkeypatch.setenv("HOI_STORE_URL", url)
    return url


@pytest.fixture
def local_store_env(tmp_path, monkeypatch):
    url = str(tmp_path / "store")
    monkeypatch.setenv("HOI_STORE_URL", url)
    return url


@pytest.fixture(params=["local", "s3"])
def store_env(request):
    """Run a test on a local folder and on S3."""
    return request.getfixturevalue("local_store_env" if request.param == "local" else "s3_store_env")


@pytest.fixture
def image_folder(tmp_path):
    from tasks.procedural.image_folder import write_image_folder

    folder = tmp_path / "images"
    expected_rejects = write_image_folder(folder, count=12, seed=3)
    return folder, expected_rejects


@pytest.fixture(scope="session")
def local_ray():
    import ray

    # One unit of "accelerator": the synthetic pipeline's stand-in for a GPU (tasks/synthetic/pipeline.py).
    ray.init(num_cpus=2, resources={"accelerator": 1}, include_dashboard=False, log_to_driver=False,
             object_store_memory=300 * 1024**2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def captured_events(prefect_harness, monkeypatch):
    """Events emitted by flows, captured instead of sent."""
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker

    AssertingEventsClient.reset()
    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)

    def events():
        """Everything emitted since the last call."""
        worker.drain()
        return [e for client in AssertingEventsClient.all for e in client.pop_events()]

    yield events
    worker.drain()
    AssertingEventsClient.reset()


@pytest.fixture
def clean_env(tmp_path):
    """Environment for subprocesses: this interpreter's scripts first, a private Prefect home."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env.pop("PREFECT_API_URL", None)
    return env
