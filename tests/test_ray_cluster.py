"""The same flow, unchanged, on a two-node Ray cluster started on this machine: same dataset, work on both nodes;
and a run with a pool per stage group whose driver is killed resumes to the same dataset."""

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store
from support.network import free_port
from support.processes import kill_tree_by_marker, venv_executable
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline

RUN = ["synthetic", "count=24", "work_ms=40", "seed=5", "execution.shard_size=2"]


@pytest.fixture
def two_node_cluster(clean_env):
    """A head and a second node, each with one CPU and a resource naming it; token auth on, as Ray 2.60 wants."""
    temp_dir = tempfile.mkdtemp(prefix="hoiray-")  # short: Ray's socket paths must stay under 108 bytes
    port = free_port()
    env = {**clean_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_DISABLE_USAGE_STATS": "1"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats"]
    try:
        subprocess.run([venv_executable("ray"), "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}",
                        "--include-dashboard=false", "--resources={\"hoi_head\": 1, \"accelerator\": 1}", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([venv_executable("ray"), "start", f"--address=127.0.0.1:{port}",
                        "--resources={\"hoi_second\": 1}", *common], env=env, check=True, capture_output=True,
                       timeout=120)
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        kill_tree_by_marker(temp_dir)


def test_flow_runs_unchanged_on_a_two_node_cluster(two_node_cluster, tmp_path, monkeypatch):
    env = {**two_node_cluster, "HOI_STORE_URL": str(tmp_path / "store")}
    cli = venv_executable("hoi-factory")
    nodes = subprocess.run([sys.executable, "-c", "import ray; ray.init(); print(len(ray.nodes()))"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert nodes.stdout.strip().splitlines()[-1] == "2", nodes.stderr

    done = subprocess.run([cli, "run", *RUN, "execution.executor=ray", "execution.workers=2", "--prefect"],
                          env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Ray: {env['RAY_ADDRESS']}, dashboard" in done.stdout + done.stderr  # said when the run starts

    status = subprocess.run([cli, "status", "--runs", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert f"ray: 127.0.0.1:{env['RAY_ADDRESS'].split(':')[1]}: 2 nodes, 2 CPUs" in " ".join(status.stdout.split())

    monkeypatch.setenv("HOI_STORE_URL", str(tmp_path / "store"))
    on_cluster = DatasetStore(Store.from_settings(Settings())).open("synthetic")
    node_ids = {shard.worker["node_id"] for shard in on_cluster.shards}
    assert len(node_ids) == 2, f"all shards ran on {node_ids}"

    monkeypatch.setenv("HOI_STORE_URL", str(tmp_path / "reference"))
    config = SyntheticConfig(count=24, work_ms=40, seed=5, execution={"executor": "local", "shard_size": 2})
    in_process = run_pipeline(SyntheticPipeline(), config).dataset
    assert on_cluster.to_arrow().equals(in_process.to_arrow())


def test_per_pool_run_killed_at_the_driver_resumes_to_the_same_dataset(two_node_cluster, tmp_path, monkeypatch):
    """CPU work in one pool, the accelerator stand-in (one unit, on the head) in another; the CLI process group is
    SIGKILLed mid-run, the re-run resumes: 0 lost, 0 duplicated, the in-process executor's dataset."""
    store = tmp_path / "store"
    env = {**two_node_cluster, "HOI_STORE_URL": str(store)}
    fields = ["count=48", "work_ms=30", "accelerator_ms=30", "seed=8"]
    command = [venv_executable("hoi-factory"), "run", "synthetic", *fields, "execution.executor=ray",
               "execution.shard_size=2", "execution.workers=2", "output.version=v1"]
    completions = store / "datasets" / "synthetic" / "v1" / "_completions"
    victim = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (completions.exists() and len(list(completions.glob("*.json"))) >= 3):
        assert time.monotonic() < deadline and victim.poll() is None, "no shard finished before the kill"
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = len(list(completions.glob("*.json")))
    assert killed_at < 24, "the kill landed after the run"

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    monkeypatch.setenv("HOI_STORE_URL", str(store))
    resumed = DatasetStore(Store.from_settings(Settings())).open("synthetic", "v1")
    assert resumed.manifest.run["shards_resumed"] >= 3 and resumed.validate() == []
    assert all(len(shard.worker["groups"]) == 2 for shard in resumed.shards)

    monkeypatch.setenv("HOI_STORE_URL", str(tmp_path / "reference"))
    config = SyntheticConfig(count=48, work_ms=30, accelerator_ms=30, seed=8,
                             execution={"executor": "local", "shard_size": 2})
    reference = run_pipeline(SyntheticPipeline(), config).dataset
    got = resumed.to_arrow()
    assert got.num_rows == 48 and len(set(got.column("sample_id").to_pylist())) == 48
    assert got.equals(reference.to_arrow())
