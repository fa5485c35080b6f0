"""docker-compose.yml and infra/prefect.yaml: valid, and wired to what the flows read."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.registry import PIPELINES, pipeline_class, pipeline_flow
from flows.runner import PUBLISHED_EVENT
from hoi_factory.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def compose_plugin() -> Path:
    import compose

    return Path(compose.__file__).parent / "docker-compose"


@pytest.mark.skipif(shutil.which("docker") is None, reason="the docker CLI is not installed")
def test_docker_compose_config_is_valid(tmp_path):
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(compose_plugin())
    result = subprocess.run(
        ["docker", "compose", "--env-file", ".env.example", "--profile", "gpu", "--profile", "cpu", "config", "-q"],
        cwd=ROOT, env={"DOCKER_CONFIG": str(tmp_path / "docker-config"), "PATH": "/usr/bin:/bin:/usr/local/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_factory_services_get_every_setting_the_flows_read(monkeypatch):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"minio", "create-bucket", "postgres", "prefect-server", "prefect-worker", "ray-head"} <= set(services)
    for name in ("prefect-worker", "ray-head", "ray-gpu-worker", "ray-cpu-worker"):
        env = services[name]["environment"]
        for key in list(Settings.model_fields) + ["RAY_ADDRESS", "PREFECT_API_URL", "AWS_ACCESS_KEY_ID"]:
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        settings = Settings(_env_file=None)  # what the factory in that container will read
        assert settings.store_url.startswith("s3://") and settings.s3_endpoint_url == "http://minio:9000"
        assert settings.ray_address == "ray-head:6379"
        assert settings.prefect_api_url == "http://prefect-server:4200/api"
        assert settings.aws_access_key_id is not None and settings.aws_secret_access_key is not None
        assert services[name]["image"].startswith("hoi-factory:")
    assert services["ray-head"]["ports"] == ["8265:8265"]
    assert "4200:4200" in services["prefect-server"]["ports"] and "9000:9000" in services["minio"]["ports"]
    # State lives in named volumes that the file declares, so `docker compose down` keeps the data.
    for name, mount in (("minio", "/data"), ("postgres", "/var/lib/postgresql/data")):
        [volume] = services[name]["volumes"]
        assert volume.endswith(f":{mount}") and volume.split(":")[0] in compose["volumes"]
    # The database URL the Prefect server uses names the postgres service and its password variable.
    db_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "@postgres:5432/" in db_url and "${POSTGRES_PASSWORD}" in db_url
    assert services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_prefect_deployments_point_at_real_flows():
    from prefect.flows import load_flow_from_entrypoint

    deployments = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())["deployments"]
    flow_names = {*PIPELINES, "validate-dataset", "train-model", "retrain-on-publish"}
    for deployment in deployments:  # loaded the way a Prefect worker loads it
        assert (ROOT / deployment["entrypoint"].split(":")[0]).is_file()
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]), use_placeholder_flow=False)
        assert flow.name in flow_names, deployment["entrypoint"]
        if flow.name in PIPELINES:  # a pipeline deployment's parameters are a valid config of that pipeline
            assert flow is pipeline_flow(flow.name)
            pipeline_class(flow.name).config_class.model_validate(deployment["parameters"]["config"])
    [trigger] = next(d for d in deployments if d["name"] == "validate-on-publish")["triggers"]
    assert trigger["expect"] == [PUBLISHED_EVENT] and trigger["match"]["prefect.resource.id"] == "hoi.dataset.*"
    [retrain] = next(d for d in deployments if d["name"] == "retrain-layoutnet")["triggers"]
    assert retrain["expect"] == [PUBLISHED_EVENT] and retrain["parameters"]["min_new_samples"] >= 1
    from hoi_factory.training import TrainConfig

    TrainConfig.model_validate({**retrain["parameters"]["config"], "datasets": ["ho3pairs/v1"]})  # a valid config


def test_cluster_configs_run_the_factory_image_and_read_secrets_from_the_environment():
    cluster = yaml.safe_load((ROOT / "infra" / "ray" / "cluster.yaml").read_text())
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert cluster["docker"]["image"].startswith("hoi-factory")
    assert any("--head" in command for command in cluster["head_start_ray_commands"])

    ray_cluster = yaml.safe_load((ROOT / "infra" / "kubernetes" / "raycluster.yaml").read_text())
    assert (ray_cluster["apiVersion"], ray_cluster["kind"]) == ("ray.io/v1", "RayCluster")
    import ray

    assert ray_cluster["spec"]["rayVersion"] == ray.__version__  # the cluster runs the Ray the project pins
    containers = [ray_cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [g["template"]["spec"]["containers"][0] for g in ray_cluster["spec"]["workerGroupSpecs"]]
    for container in containers:
        assert container["image"].startswith("hoi-factory")
        env = {e["name"]: e for e in container["env"]}
        for secret in ("AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"):
            assert "value" not in env[secret] and env[secret]["valueFrom"]["secretKeyRef"]["name"] == "hoi-factory-env"
    gpu_group = next(g for g in ray_cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
