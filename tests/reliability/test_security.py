"""Secrets stay secret and no user-supplied file is unpickled."""

import os
import pickle
import re
import subprocess
from pathlib import Path

import boto3
import pytest

from hoi_factory.config import Settings
from hoi_factory.model_store import ModelStore
from hoi_factory.storage import Store
from support.processes import venv_executable

ROOT = Path(__file__).resolve().parents[2]
UNSAFE_LOADS = re.compile(r"\bpickle\.loads?\(|(?<![\w.])torch\.load\((?!.*weights_only=True)|allow_pickle=True|"
                          r"yaml\.load\(|(?<![\w.])eval\(|cloudpickle\.loads?\(|shell=True|"
                          r"merge_from_file\((?!.*allow_unsafe=False)")  # detectron2 defaults to yaml.unsafe_load


def test_credentials_never_reach_logs_manifests_artifacts_or_reports(s3_store_env, moto_endpoint, clean_env,
                                                                      image_folder, tmp_path, monkeypatch):
    secret = "testing-secret-value"  # what s3_store_env put in AWS_SECRET_ACCESS_KEY
    key_id = "testing-key"
    folder, _ = image_folder
    env = {**clean_env, **{k: v for k, v in os.environ.items() if k.startswith(("AWS_", "HOI_"))}}
    assert env["AWS_SECRET_ACCESS_KEY"] == secret
    run = subprocess.run([venv_executable("hoi-factory"), "run", "ingest", f"source={folder}",
                          "execution.executor=local"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    status = subprocess.run([venv_executable("hoi-factory"), "status"], env=env, capture_output=True, text=True,
                            timeout=300)

    outputs = {"run output": run.stdout + run.stderr, "status output": status.stdout + status.stderr}
    bucket, prefix = s3_store_env.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    objects = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    assert any(o["Key"].endswith("manifest.json") for o in objects) and any("report/" in o["Key"] for o in objects)
    for o in objects:
        outputs[o["Key"]] = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().decode("latin-1")
    # Prefect's database holds the flow run's logs, parameters and artifacts.
    for path in Path(env["PREFECT_HOME"]).rglob("*"):
        if path.is_file():
            outputs[str(path)] = path.read_bytes().decode("latin-1")
    assert len(outputs) > 10
    leaks = [where for where, text in outputs.items() if secret in text or key_id in text]
    assert leaks == []


def test_a_malicious_pickle_in_the_model_store_is_never_executed(local_store_env, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    payload = pickle.dumps(Exploit())
    store = ModelStore(Store.from_settings(Settings()))
    store.save("evil", {"model.safetensors": payload, "pytorch_model.bin": payload})
    with pytest.raises(Exception):  # safetensors refuses the bytes
        store.open("evil").load_state_dict()
    assert store.open("evil").read_bytes("pytorch_model.bin") == payload  # bytes are only ever bytes
    assert not marker.exists()


def test_no_unsafe_deserialization_in_the_project_code():
    assert UNSAFE_LOADS.search("state = torch.load(path)") and UNSAFE_LOADS.search("pickle.loads(blob)")
    assert not UNSAFE_LOADS.search("torch.load(path, weights_only=True)")
    assert not UNSAFE_LOADS.search("safetensors.torch.load(blob)")  # safetensors never unpickles
    assert UNSAFE_LOADS.search("eval(text)") and not UNSAFE_LOADS.search("model.eval()")  # nn.Module.eval is safe
    assert UNSAFE_LOADS.search("cfg.merge_from_file(path)")
    assert not UNSAFE_LOADS.search("cfg.merge_from_file(path, allow_unsafe=False)")
    offenders = []
    for folder in ("hoi_factory", "flows", "tasks", "models", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if UNSAFE_LOADS.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
