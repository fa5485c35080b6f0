"""The flow process is killed at random points (several seeds): readers never see a half version, the
re-run makes the dataset an uninterrupted run makes, and no temporary or lock object is left behind."""

import os
import random
import signal
import subprocess
import time

import pytest

from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store
from support.processes import venv_executable
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline

FIELDS = dict(count=60, work_ms=40, values=5, seed=4)
ARGS = [f"{key}={value}" for key, value in FIELDS.items()] + ["execution.executor=local", "execution.shard_size=5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    settings = Settings(store_url=str(tmp_path_factory.mktemp("reference")))
    config = SyntheticConfig(**FIELDS, execution={"executor": "local", "shard_size": 5})
    return run_pipeline(SyntheticPipeline(), config, settings).dataset.to_arrow()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_at_a_random_point_then_resume(seed, reference, clean_env, tmp_path, monkeypatch):
    store_dir = tmp_path / "store"
    env = {**clean_env, "HOI_STORE_URL": str(store_dir)}
    command = [venv_executable("hoi-factory"), "run", "synthetic", *ARGS]
    delay = random.Random(seed).uniform(2.0, 9.0)  # from Prefect's start-up to past the commit
    victim = subprocess.Popen(command, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    if victim.poll() is None:
        os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()

    monkeypatch.setenv("HOI_STORE_URL", str(store_dir))
    datasets = DatasetStore(Store.from_settings(Settings()))
    for version in datasets.versions("synthetic") if (store_dir / "datasets").exists() else []:
        assert datasets.open("synthetic", version).validate() == []  # whatever is visible is whole

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert datasets.versions("synthetic") == ["v1"]  # resumed in place, not a second version
    dataset = datasets.open("synthetic")
    assert dataset.to_arrow().equals(reference)
    leftovers = [p.name for p in store_dir.rglob("*") if ".tmp-" in p.name or p.name.startswith(("_lock", "_takeover"))]
    assert leftovers == []
