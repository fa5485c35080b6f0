"""A Ray worker process is killed in the middle of a stage: Ray restarts the actor, the shard runs again,
and the dataset equals an undisturbed run's (same sample ids, same content hashes). Both with one pool and
with a pool per stage group (CPU work, then the accelerator stand-in), where the CPU pool's actor is killed."""

import json
import os
import signal
import threading
import time

import pytest

from hoi_factory.run import run_pipeline
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline

CONFIG = dict(count=96, work_ms=60, seed=9)


@pytest.mark.parametrize("accelerator_ms", [0, 20], ids=["one-pool", "two-pools"])
def test_killed_worker_is_replaced_and_nothing_changes(accelerator_ms, local_store_env, local_ray, monkeypatch,
                                                       tmp_path):
    store_dir = tmp_path / "store"
    outcome = {}
    fields = {**CONFIG, "accelerator_ms": accelerator_ms}
    config = SyntheticConfig(**fields, execution={"executor": "ray", "workers": 2, "shard_size": 4})
    thread = threading.Thread(target=lambda: outcome.update(result=run_pipeline(SyntheticPipeline(), config)))
    thread.start()

    completions = store_dir / "datasets" / "synthetic" / "v1" / "_completions"
    deadline = time.monotonic() + 120
    while not (completions.exists() and list(completions.glob("*.json"))):
        assert time.monotonic() < deadline and thread.is_alive(), "no shard finished"
        time.sleep(0.02)
    victim = json.loads(next(completions.glob("*.json")).read_text())["worker"]["groups"][0]["pid"]
    os.kill(victim, signal.SIGKILL)  # mid-stage: the actor is busy with its next shard
    thread.join(300)

    dataset = outcome["result"].dataset
    pids = {shard.worker["groups"][0]["pid"] for shard in dataset.shards}
    # The victim's shards may have been redone by its replacement (a result lost with its process is
    # recomputed): either way a third worker process, the replacement, made shards.
    assert len(pids | {victim}) >= 3, f"no replacement worker made shards after {victim} died: {pids}"
    assert dataset.validate() == []

    monkeypatch.setenv("HOI_STORE_URL", str(tmp_path / "undisturbed"))
    undisturbed = run_pipeline(SyntheticPipeline(), SyntheticConfig(**fields, execution={"executor": "local",
                                                                                         "shard_size": 4})).dataset
    assert dataset.to_arrow().equals(undisturbed.to_arrow())
    assert [s.sha256 for s in dataset.shards] == [s.sha256 for s in undisturbed.shards]
