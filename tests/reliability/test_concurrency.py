"""Two runs aim at the same dataset version: one wins, the other is refused cleanly; runs aiming at
different versions proceed side by side."""

import subprocess
import time

from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.storage import Store
from support.processes import venv_executable

# ~25 s of work: the second CLI (seconds to start) must ask while the first still holds its lease,
# even on a busy machine.
RUN = ["run", "synthetic", "count=60", "work_ms=400", "execution.executor=local", "execution.shard_size=4"]


def test_one_writer_per_version(clean_env, tmp_path, monkeypatch):
    store_dir = tmp_path / "store"
    env = {**clean_env, "HOI_STORE_URL": str(store_dir)}
    cli = venv_executable("hoi-factory")
    first = subprocess.Popen([cli, *RUN, "output.version=nightly"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lock = store_dir / "datasets" / "synthetic" / "nightly" / "_lock.json"
    deadline = time.monotonic() + 120
    while not lock.exists():
        assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lease"
        time.sleep(0.05)

    # Same version while the first run holds it: refused with a message, exit code 2, nothing touched.
    second = subprocess.run([cli, *RUN, "output.version=nightly"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert first.poll() is None, "the first run ended before the second one asked: the test proves nothing"
    # Another version at the same time: proceeds.
    third = subprocess.Popen([cli, *RUN, "seed=1", "output.version=nightly-b"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert first.wait(300) == 0, first.stdout.read()[-2000:]
    assert third.wait(300) == 0, third.stdout.read()[-2000:]

    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert "synthetic/nightly is being written by another run" in " ".join(second.stdout.split())
    monkeypatch.setenv("HOI_STORE_URL", str(store_dir))
    datasets = DatasetStore(Store.from_settings(Settings()))
    assert datasets.versions("synthetic") == ["nightly", "nightly-b"]
    for version in ("nightly", "nightly-b"):
        dataset = datasets.open("synthetic", version)
        assert dataset.manifest.num_samples == 60 and dataset.validate() == []
