"""The command line, as a user types it (in-process through typer's runner, flows under Prefect's harness)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.model_store import ModelStore
from hoi_factory.pipeline import Pipeline
from hoi_factory.storage import Store
from support.demo_digests import DEMO_STORE, GOLDEN, demo_digests
from support.processes import venv_executable

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def flat(result):
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture
def made_dataset(local_store_env, prefect_harness):
    result = cli("run", "synthetic", "count=9", "work_ms=0", "execution.executor=local", "execution.shard_size=4")
    assert result.exit_code == 0, result.output
    return result


def test_run_makes_a_dataset_and_datasets_commands_show_it(made_dataset):
    assert "synthetic" in made_dataset.output and "v1" in made_dataset.output
    listing = cli("datasets", "ls")
    assert listing.exit_code == 0 and "synthetic" in listing.output and "v1" in listing.output
    shown = cli("datasets", "show", "synthetic/v1")
    assert shown.exit_code == 0 and "9 samples, 0 rejected, 3 shards" in flat(shown)
    valid = cli("datasets", "validate", "synthetic")
    assert valid.exit_code == 0 and "3 shards match the manifest" in valid.output


def test_validate_exits_non_zero_on_a_damaged_shard(made_dataset):
    store = Store.from_settings(Settings())
    second = DatasetStore(store).open("synthetic", "v1").shards[1].file
    store.write_bytes(b"garbage", "datasets", "synthetic", "v1", second)
    result = cli("datasets", "validate", "synthetic/v1")
    assert result.exit_code == 1 and f"{second}: 7 bytes, the manifest says" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "synthetic", "count=many"], "count: Input should be a valid integer"),
        (["run", "synthetic", "execution.wokers=2"], "execution.wokers: Extra inputs are not permitted"),
        (["run", "no-such-pipeline"], "unknown pipeline 'no-such-pipeline' (available: affordance-evaluation, "
                                      "affordance-synthesis, chorus-occupancy, chorus-prompts, chorus-test-views, "
                                      "chorus-views, ho3pairs, hogsa, hogsa-models, hoi-annotations, ingest, "
                                      "synthetic"),
        (["datasets", "show", "../../etc"], "is not allowed"),
        (["datasets", "show", "never-made"], "no published version of dataset 'never-made'"),
    ],
)
def test_bad_requests_fail_with_a_message_naming_the_problem(local_store_env, args, message):
    Path(local_store_env).mkdir()  # an empty store: what is wrong is the request
    result = cli(*args)
    assert result.exit_code == 2
    assert message in flat(result)


def test_a_missing_input_folder_fails_before_prefect_starts(local_store_env, prefect_harness, tmp_path, caplog):
    result = cli("run", "ingest", f"source={tmp_path / 'nowhere'}", "execution.executor=local")
    assert result.exit_code == 2 and "is not a folder" in flat(result) and "Traceback" not in result.output
    assert "Beginning flow run" not in caplog.text and "Finished in state" not in caplog.text  # no flow run at all


def test_models_and_status(local_store_env):
    ModelStore(Store.from_settings(Settings())).save_state_dict("tiny", {"w": torch.ones(2)}, datasets=["synthetic/v1"])
    listing = cli("models", "ls")
    assert listing.exit_code == 0 and "tiny" in listing.output
    shown = cli("models", "show", "tiny")
    assert shown.exit_code == 0 and "trained on: synthetic/v1" in shown.output and "model.safetensors" in shown.output
    status = cli("status")
    assert status.exit_code == 0 and f"store: {local_store_env}" in flat(status)
    # no PREFECT_API_URL: "none", or the test harness's server when an earlier test started it in this process
    assert ("prefect: none" in flat(status) or "prefect: http://127.0.0.1" in flat(status)) and "tiny" in status.output


@pytest.fixture
def golden_demo_store(monkeypatch):
    """The demo where the golden copy was made, on one thread (see tests/support/demo_digests.py)."""
    url = DEMO_STORE
    shutil.rmtree(url, ignore_errors=True)
    monkeypatch.setenv("HOI_STORE_URL", str(url))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield str(url)
    torch.set_num_threads(threads)
    shutil.rmtree(url, ignore_errors=True)


def test_demo_makes_every_pipelines_demo_dataset_and_says_where(golden_demo_store, prefect_harness):
    """...and the same data as the golden copy: moving code around must not change what the demo makes."""
    from flows.registry import PIPELINES, pipeline_class

    first = cli("demo", "--executor", "local", "--no-models")
    assert first.exit_code == 0, first.output
    store = Store.from_settings(Settings())
    made = DatasetStore(store).names()
    in_demo = [name for name in PIPELINES if pipeline_class(name).demo_config is not Pipeline.demo_config]
    assert made and len(made) == len(in_demo) >= 1
    for name in made:
        version = DatasetStore(store).open(name)
        assert version.manifest.num_samples > 0 and version.validate() == []
        assert f"report of {name}/{version.version}: file://" in flat(first)
    assert demo_digests(store) == json.loads(GOLDEN.read_text())
    again = cli("demo", "--executor", "local", "--no-models")
    assert again.exit_code == 0 and "(already" in again.output  # nothing made twice
    assert all(DatasetStore(store).versions(name) == ["v1"] for name in made)


def test_without_a_prefect_api_a_run_is_in_process_and_with_one_a_flow_run(tmp_path, clean_env, local_store_env,
                                                                           prefect_harness):
    """No PREFECT_API_URL: the same dataset, made in the CLI's process (no temporary Prefect server, whose
    database would appear in PREFECT_HOME); under a Prefect API the run is a flow run."""
    env = {**clean_env, "HOI_STORE_URL": str(tmp_path / "direct-store")}
    direct = subprocess.run([venv_executable("hoi-factory"), "run", "synthetic", "count=6", "work_ms=0"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert direct.returncode == 0, direct.stdout + direct.stderr
    assert "report of synthetic/v1" in " ".join(direct.stdout.split())
    assert not (Path(env["PREFECT_HOME"]) / "prefect.db").exists()  # no Prefect server was started

    flowed = cli("run", "synthetic", "count=6", "work_ms=0")  # the harness configures a Prefect API
    assert flowed.exit_code == 0
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:  # the flow left its artifacts
        assert client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["synthetic-v1-summary"])))
    direct_rows = DatasetStore(Store(str(tmp_path / "direct-store"))).open("synthetic").to_arrow()
    assert direct_rows.equals(DatasetStore(Store.from_settings(Settings())).open("synthetic").to_arrow())
