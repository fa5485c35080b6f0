"""The same CLI run against a real `prefect server` on 127.0.0.1: the flow run, its artifacts and the event land
there."""

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from support.network import free_port
from support.processes import kill_tree_by_marker, venv_executable


def api(url: str, path: str, body: dict | None = None):
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"}, method="POST" if body else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def prefect_server(clean_env, tmp_path):
    port = free_port()
    env = {**clean_env, "PREFECT_HOME": str(tmp_path / "server-home")}
    marker = f"--port {port}"
    server = subprocess.Popen([venv_executable("prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                api(url, "/health")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("prefect server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        kill_tree_by_marker(marker)


def test_cli_run_reports_to_a_prefect_server(prefect_server, clean_env, tmp_path):
    env = {**clean_env, "PREFECT_API_URL": prefect_server, "HOI_STORE_URL": str(tmp_path / "store")}
    run = subprocess.run([venv_executable("hoi-factory"), "run", "synthetic", "count=6", "work_ms=0",
                          "execution.executor=local", "output.dataset=served"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"Prefect UI: {prefect_server.removesuffix('/api')}" in run.stdout + run.stderr

    runs = api(prefect_server, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 5})
    assert [(r["name"] != "", r["state_type"]) for r in runs] == [(True, "COMPLETED")]
    artifacts = api(prefect_server, "/artifacts/filter", {"artifacts": {"key": {"any_": ["served-v1-summary"]}}})
    assert json.loads(artifacts[0]["data"])[0]["samples"] == 6

    deadline = time.monotonic() + 30
    while True:  # events reach the server's event store asynchronously
        events = api(prefect_server, "/events/filter",
                     {"filter": {"event": {"name": ["hoi.dataset.published"]}}, "limit": 10})["events"]
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    [event] = events
    assert event["payload"]["dataset"] == "served" and event["payload"]["num_samples"] == 6

    status = subprocess.run([venv_executable("hoi-factory"), "status"], env=env,
                            capture_output=True, text=True, timeout=120)
    flat = " ".join(status.stdout.split())
    assert status.returncode == 0 and f"prefect: {prefect_server}" in flat
    assert "synthetic" in flat and "COMPLETED" in flat and "served" in flat


def test_status_in_embedded_mode_lists_runs_and_datasets(clean_env, tmp_path):
    env = {**clean_env, "HOI_STORE_URL": str(tmp_path / "store")}
    cli = venv_executable("hoi-factory")
    # --prefect: a flow run on Prefect's temporary server (without it, and with no API, the run is in-process)
    run = subprocess.run([cli, "run", "synthetic", "count=3", "work_ms=0", "execution.executor=local", "--prefect"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    status = subprocess.run([cli, "status"], env=env, capture_output=True, text=True, timeout=300)
    flat = " ".join(status.stdout.split())
    assert status.returncode == 0 and "prefect: none" in flat and "ray: local" in flat
    # the run, kept in PREFECT_HOME's database
    assert re.search(r"│ synthetic\s+│ [a-z]+-[a-z]+\s+│ COMPLETED", status.stdout)
    assert re.search(r"│ synthetic\s+│ v1\s+│ v1\s+│ 3\s+│", status.stdout)  # the dataset row


SERVE_RETRAINING = """
import sys, yaml
from prefect.events import DeploymentEventTrigger
from flows.training import retrain_on_publish

[deployment] = [d for d in yaml.safe_load(open("infra/prefect.yaml"))["deployments"]
                if d["name"] == "retrain-layoutnet"]
[trigger] = deployment["triggers"]
parameters = dict(trigger["parameters"])
# The deployment file's trigger, with a training small enough for a test.
parameters.update(min_new_samples=5, config={**parameters["config"], "steps": 4, "batch_size": 4,
                                              "options": {"preset": "tiny"}})
retrain_on_publish.serve(name="retrain-layoutnet", triggers=[DeploymentEventTrigger(
    expect=set(trigger["expect"]), match=trigger["match"], parameters=parameters)])
"""


def test_a_published_dataset_triggers_retraining_on_a_prefect_server(prefect_server, clean_env, tmp_path):
    from hoi_factory.config import Settings
    from hoi_factory.model_store import ModelStore
    from hoi_factory.storage import Store
    from tasks.procedural.hand_object import write_hand_object_folder

    store = tmp_path / "store"
    env = {**clean_env, "PREFECT_API_URL": prefect_server, "HOI_STORE_URL": str(store),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "HOI_CACHE": str(tmp_path / "cache")}
    server_marker = f"serve-{tmp_path.name}"
    serving = subprocess.Popen([venv_executable("python"), "-c", SERVE_RETRAINING, server_marker],
                               cwd=Path(__file__).resolve().parent.parent, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not api(prefect_server, "/deployments/filter",
                      {"deployments": {"name": {"any_": ["retrain-layoutnet"]}}}):
            assert time.monotonic() < deadline and serving.poll() is None, "the retraining deployment never appeared"
            time.sleep(1)
        write_hand_object_folder(tmp_path / "scenes", 12, seed=2, with_bad_files=False)
        run = subprocess.run([venv_executable("hoi-factory"), "run", "ho3pairs", f"inputs={tmp_path / 'scenes'}",
                              "inpainter=biharmonic", "sdedit=none", "size=64", "max_seam_score=1e9",
                              "execution.executor=local", "output.dataset=ho3pairs"],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

        deadline = time.monotonic() + 240
        while True:
            runs = api(prefect_server, "/flow_runs/filter",
                       {"flows": {"name": {"any_": ["retrain-on-publish"]}}, "sort": "START_TIME_DESC"})
            if runs and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED"):
                break
            assert time.monotonic() < deadline, f"no finished retraining run: {runs}"
            time.sleep(1)
        assert runs[0]["state_type"] == "COMPLETED" and runs[0]["parameters"]["dataset"] == "ho3pairs/v1"
        model = ModelStore(Store.from_settings(Settings(store_url=str(store)))).open("layoutnet")
        assert model.manifest.datasets == ["ho3pairs/v1"] and model.manifest.metrics["steps"] == 4
    finally:
        serving.terminate()
        serving.wait(30)
        kill_tree_by_marker(server_marker)
