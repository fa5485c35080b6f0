"""The S3 endpoint goes away mid-run: writes retry with backoff and the run completes identically, or, past
the retry budget, the run fails with a clear error and publishes nothing."""

import logging
import threading
import time

import boto3
import pytest

from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store, StoreUnavailable
from support.network import free_port
from support.proxy import CuttableProxy
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline

CONFIG = dict(count=80, work_ms=50, seed=2, execution={"executor": "local", "shard_size": 4})


@pytest.fixture
def proxied_s3(s3_store_env, moto_endpoint, monkeypatch):
    """The store reached through a proxy the test can cut; the bucket itself lives on, in moto."""
    proxy = CuttableProxy(int(moto_endpoint.rsplit(":", 1)[1]), free_port())
    proxy.start()
    monkeypatch.setenv("HOI_S3_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    bucket, prefix = s3_store_env.removeprefix("s3://").split("/", 1)
    direct = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")

    def keys(fragment):
        listing = direct.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return [o["Key"] for o in listing if fragment in o["Key"]]

    yield proxy, keys
    proxy.cut()


def run_in_thread(config):
    outcome = {}

    def target():
        try:
            outcome["result"] = run_pipeline(SyntheticPipeline(), config)
        except Exception as error:  # reported to the test
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def wait_for(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_an_outage_shorter_than_the_retry_budget_costs_nothing(proxied_s3, monkeypatch, caplog, tmp_path):
    proxy, keys = proxied_s3
    monkeypatch.setenv("HOI_STORE_RETRY_SECONDS", "60")
    caplog.set_level(logging.WARNING, logger="hoi_factory.storage")
    thread, outcome = run_in_thread(SyntheticConfig(**CONFIG))
    wait_for(lambda: len(keys("_completions/")) >= 2)
    proxy.cut()
    assert keys("manifest.json") == []  # the outage lands mid-run
    time.sleep(20)  # longer than botocore's own retries (at most 1 + 2 + 4 + 8 s)
    proxy.start()
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    dataset = outcome["result"].dataset
    assert dataset.validate() == []
    assert "unreachable" in caplog.text  # the factory's backoff, not luck, carried the run

    monkeypatch.setenv("HOI_STORE_URL", str(tmp_path / "reference"))
    reference = run_pipeline(SyntheticPipeline(), SyntheticConfig(**CONFIG)).dataset
    assert dataset.to_arrow().equals(reference.to_arrow())


def test_an_outage_past_the_budget_fails_clearly_and_publishes_nothing(proxied_s3, monkeypatch):
    proxy, keys = proxied_s3
    monkeypatch.setenv("HOI_STORE_RETRY_SECONDS", "3")
    thread, outcome = run_in_thread(SyntheticConfig(**CONFIG))
    wait_for(lambda: len(keys("_completions/")) >= 2)
    proxy.cut()
    assert keys("manifest.json") == []
    thread.join(180)
    assert isinstance(outcome.get("error"), StoreUnavailable)
    assert "did not answer for 3 s" in str(outcome["error"])
    assert keys("manifest.json") == [] and keys("latest.json") == []

    proxy.start()  # back again: the same run resumes from the shards that were written
    monkeypatch.setenv("HOI_STORE_RETRY_SECONDS", "60")
    written = len(keys("_completions/"))
    resumed = run_pipeline(SyntheticPipeline(), SyntheticConfig(**CONFIG))
    assert resumed.shards_resumed == written >= 2
    assert DatasetStore(Store.from_settings(Settings())).open("synthetic").validate() == []
