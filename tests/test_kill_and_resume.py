"""A run killed mid-way (SIGKILL of the whole process group) and started again makes exactly the dataset an
uninterrupted run makes: same sample ids and contents, no duplicates, no gaps, never a half version visible."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store
from support.processes import venv_executable
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline

RUN_ARGS = ["synthetic", "count=48", "work_ms=40", "values=6", "seed=11", "execution.executor=local",
            "execution.shard_size=4", "output.version=v1"]


def hoi_factory_cli(env):
    return [venv_executable("hoi-factory"), "run", *RUN_ARGS]


def completions(store_dir: Path) -> int:
    folder = store_dir / "datasets" / "synthetic" / "v1" / "_completions"
    return len(list(folder.glob("*.json"))) if folder.exists() else 0


def test_killed_run_resumes_to_the_uninterrupted_dataset(tmp_path, clean_env, monkeypatch):
    store_dir = tmp_path / "store"
    env = {**clean_env, "HOI_STORE_URL": str(store_dir)}
    victim = subprocess.Popen(hoi_factory_cli(env), env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while completions(store_dir) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = completions(store_dir)
    assert 3 <= killed_at < 12, f"the kill should land mid-run, landed after {killed_at} of 12 shards"

    monkeypatch.setenv("HOI_STORE_URL", str(store_dir))
    datasets = DatasetStore(Store.from_settings(Settings()))
    assert datasets.versions("synthetic") == []  # the half-written version is invisible to readers

    resumed = subprocess.run(hoi_factory_cli(env), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    dataset = datasets.open("synthetic", "v1")
    assert dataset.manifest.run["shards_resumed"] >= killed_at
    assert dataset.validate() == []
    assert not [p for p in (store_dir / "datasets").rglob("*") if ".tmp-" in p.name or p.name.startswith("_lock")]

    monkeypatch.setenv("HOI_STORE_URL", str(tmp_path / "reference-store"))
    config = SyntheticConfig(count=48, work_ms=40, values=6, seed=11, execution={"executor": "local", "shard_size": 4})
    reference = run_pipeline(SyntheticPipeline(), config).dataset

    got, want = dataset.to_arrow().to_pylist(), reference.to_arrow().to_pylist()
    assert len({row["sample_id"] for row in got}) == len(got) == 48  # no duplicates, no gaps
    assert [r["sample_id"] for r in got] == [r["sample_id"] for r in want]
    assert got == want  # ids, seeds and contents alike


class StopAfter(Exception):
    pass


@pytest.mark.parametrize("first, second", [(2, 8), (8, 4), (3, 5), (4, 1)])
def test_resume_with_another_shard_size_makes_exactly_the_missing_items(first, second, local_store_env, tmp_path,
                                                                        monkeypatch):
    """Killed after 3 shards at one shard size, resumed at another: 0 lost, 0 duplicated."""
    fields = dict(count=48, work_ms=0, values=3, seed=13)

    def stop_after_three(done, total, stages):  # progress counts inputs: three shards of `first`
        if done == 3 * first:
            raise StopAfter()

    with pytest.raises(StopAfter):
        run_pipeline(SyntheticPipeline(),
                     SyntheticConfig(**fields, execution={"executor": "local", "shard_size": first}),
                     progress=stop_after_three)
    resumed = run_pipeline(SyntheticPipeline(), SyntheticConfig(
        **fields, execution={"executor": "local", "shard_size": second})).dataset
    manifest = resumed.manifest
    assert manifest.run["shards_resumed"] == 3 and resumed.validate() == []
    assert manifest.num_inputs == manifest.num_samples == 48 and manifest.num_rejects == manifest.num_errors == 0
    spans = sorted((s.index, s.index + s.inputs) for s in resumed.shards)
    assert spans[0][0] == 0 and spans[-1][1] == 48 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert len(list((Path(local_store_env) / "datasets" / "synthetic" / resumed.version / "data").iterdir())) \
        == len(resumed.shards)  # no file of an abandoned cut left behind

    monkeypatch.setenv("HOI_STORE_URL", str(tmp_path / "undisturbed"))
    undisturbed = run_pipeline(SyntheticPipeline(), SyntheticConfig(**fields, execution={"executor": "local"})).dataset
    got, want = resumed.to_arrow(), undisturbed.to_arrow()
    assert got.column("sample_id").to_pylist() == want.column("sample_id").to_pylist()
    assert got.equals(want)
