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

ROOT = Path(__file__).resolve().parent.parent


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


def deployment_file_for_the_test(path: Path) -> Path:
    """infra/prefect.yaml, run from this checkout, with the LayoutNet retraining small enough for a test; the
    triggers whose flows need real models (ContentNet, SRM, the evaluation, the CHORUS images) stay off."""
    import yaml

    spec = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    spec["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    for deployment in spec["deployments"]:
        for trigger in deployment.get("triggers", []):
            trigger["enabled"] = deployment["name"] in ("retrain-layoutnet", "validate-on-publish")
            if deployment["name"] == "retrain-layoutnet":
                parameters = trigger["parameters"]
                parameters.update(min_new_samples=5, config={**parameters["config"], "steps": 4, "batch_size": 4,
                                                             "options": {"preset": "tiny"}})
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_deployed_factory_retrains_and_validates_a_published_dataset(prefect_server, clean_env, tmp_path):
    """`make deploy` on a fresh server (the work pool too), a process worker, then one published ho3pairs version:
    its trigger starts the retraining and the validation as flow runs of the deployments, and both complete."""
    import yaml

    from hoi_factory.config import Settings
    from hoi_factory.model_store import ModelStore
    from hoi_factory.storage import Store
    from tasks.procedural.hand_object import write_hand_object_folder

    store = tmp_path / "store"
    env = {**clean_env, "PREFECT_API_URL": prefect_server, "HOI_STORE_URL": str(store),
           "HOI_CACHE": str(tmp_path / "cache"), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    deployment_file = deployment_file_for_the_test(tmp_path / "prefect.yaml")
    deploy = subprocess.run(["make", "-s", "deploy", f"PREFECT={venv_executable('prefect')}",
                             f"PREFECT_FILE={deployment_file}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    deployed = {d["name"] for d in api(prefect_server, "/deployments/filter", {"limit": 200})}
    expected = {d["name"] for d in yaml.safe_load(deployment_file.read_text())["deployments"]}
    assert deployed == expected

    worker_name = f"worker-{tmp_path.name}"
    worker = subprocess.Popen([venv_executable("prefect"), "worker", "start", "--pool", "hoi-factory",
                               "--name", worker_name], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        write_hand_object_folder(tmp_path / "scenes", 12, seed=2, with_bad_files=False)
        run = subprocess.run([venv_executable("hoi-factory"), "run", "ho3pairs", f"inputs={tmp_path / 'scenes'}",
                              "inpainter=biharmonic", "sdedit=none", "size=64", "max_seam_score=1e9",
                              "execution.executor=local", "output.dataset=ho3pairs"],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

        triggered = ["retrain-on-publish", "validate-dataset"]
        deadline = time.monotonic() + 300
        while True:
            runs = api(prefect_server, "/flow_runs/filter", {"flows": {"name": {"any_": triggered}}})
            finished = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
            if len(finished) == len(triggered):
                break
            assert time.monotonic() < deadline and worker.poll() is None, f"triggered runs unfinished: {runs}"
            time.sleep(1)
        assert sorted(r["state_type"] for r in runs) == ["COMPLETED", "COMPLETED"], runs
        assert all(r["deployment_id"] for r in runs)  # runs of the deployments, on the worker
        parameters = {tuple(sorted(r["parameters"])): r["parameters"] for r in runs}
        assert parameters[("config", "dataset", "min_new_samples", "trainer")]["dataset"] == "ho3pairs/v1"
        assert parameters[("ref",)]["ref"] == "ho3pairs/v1"
        model = ModelStore(Store.from_settings(Settings(store_url=str(store)))).open("layoutnet")
        assert model.manifest.datasets == ["ho3pairs/v1"] and model.manifest.metrics["steps"] == 4
    finally:
        worker.terminate()
        worker.wait(30)
        kill_tree_by_marker(worker_name)

    # `status` lists the runs on its store (the CLI's and the deployments'), and none on another store
    def listed_flows(store_url: str) -> set[str]:
        status = subprocess.run([venv_executable("hoi-factory"), "status", "--runs", "20"], capture_output=True,
                                env={**env, "HOI_STORE_URL": store_url, "COLUMNS": "200"}, text=True, timeout=120)
        assert "recent flow runs" in status.stdout, status.stdout + status.stderr
        return set(re.findall(r"│ ([a-z0-9-]+)\s+│ [a-z]+-[a-z]+\s+│", status.stdout))

    # (besides them: the runs the schedules of the deployments have planned)
    assert {"ho3pairs", "retrain-on-publish", "validate-dataset"} <= listed_flows(str(store))
    assert listed_flows(str(tmp_path / "another-store")) == set()
