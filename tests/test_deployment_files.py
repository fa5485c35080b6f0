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


def deployment_configs(deployment: dict) -> list[dict]:
    """The parameters a deployment's runs get: its own, and each trigger's with the event's templates filled in
    as Prefect fills them (a published version `<dataset>/v7`)."""
    import jinja2

    def render(value, event):
        if isinstance(value, dict):
            return {k: render(v, event) for k, v in value.items()}
        if isinstance(value, list):
            return [render(v, event) for v in value]
        return jinja2.Template(value).render(event=event) if isinstance(value, str) else value

    found = [deployment["parameters"]] if "parameters" in deployment else []
    for trigger in deployment.get("triggers", []):
        resource = trigger["match"]["prefect.resource.id"]
        for resource_id in [resource] if isinstance(resource, str) else resource:
            name = resource_id.rsplit(".", 1)[1]
            event = {"payload": {"dataset": name, "model": name, "version": "v7"}}
            found.append(render(trigger["parameters"], event))
    return found


def test_prefect_deployments_point_at_real_flows_with_valid_parameters():
    from prefect.flows import load_flow_from_entrypoint

    from flows.evaluation import EvalConfig
    from flows.status import store_tag
    from flows.training import TRAINERS
    from hoi_factory.training import TrainConfig

    deployments = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())["deployments"]
    flow_names = {*PIPELINES, "validate-dataset", "retrain-on-publish", "evaluate-hoi-synthesis"}
    flows_deployed = set()
    for deployment in deployments:  # loaded the way a Prefect worker loads it
        assert deployment["work_pool"]["name"] == "hoi-factory"
        assert deployment["tags"] == [store_tag("{{ $HOI_STORE_URL }}")]  # runs tagged with their store, for status
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]), use_placeholder_flow=False)
        assert flow.name in flow_names, deployment["entrypoint"]
        flows_deployed.add(flow.name)
        configs = deployment_configs(deployment)
        assert configs, f"{deployment['name']} has no parameters"
        for parameters in configs:  # every run it can start is a valid call of its flow
            if flow.name in PIPELINES:
                assert flow is pipeline_flow(flow.name)
                pipeline_class(flow.name).config_class.model_validate(parameters["config"])
            elif flow.name == "retrain-on-publish":
                assert parameters["trainer"] in TRAINERS and parameters["min_new_samples"] >= 1
                TrainConfig.model_validate({**parameters["config"], "datasets": [parameters["dataset"]]})
            elif flow.name == "evaluate-hoi-synthesis":
                EvalConfig.model_validate(parameters["config"])
            else:
                assert parameters["ref"].endswith("/v7")
    assert flows_deployed == flow_names  # every pipeline has a deployment, and so have retraining and evaluation


def test_the_factory_loop_is_closed():
    """Each trigger listens for what the flows emit, on a dataset or model something makes; every trainer
    retrains on a dataset a pipeline makes; the CHORUS chain feeds each version to the next pipeline."""
    from flows.training import MODEL_PUBLISHED, TRAINERS

    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())["deployments"]}
    produced_datasets = {config["config"]["output"]["dataset"] for d in deployments.values()
                         for config in deployment_configs(d) if "output" in config.get("config", {})}
    retrained = {}
    for name, deployment in deployments.items():
        for trigger in deployment.get("triggers", []):
            resource = trigger["match"]["prefect.resource.id"]
            resources = [resource] if isinstance(resource, str) else resource
            assert trigger["enabled"] and trigger["type"] == "event"
            if trigger["expect"] == [PUBLISHED_EVENT]:
                assert all(r == "hoi.dataset.*" or r.removeprefix("hoi.dataset.") in produced_datasets
                           for r in resources), name
            else:
                assert trigger["expect"] == [MODEL_PUBLISHED] and all(r.startswith("hoi.model.") for r in resources)
            if deployment["entrypoint"] == "flows/training.py:retrain_on_publish":
                retrained[trigger["parameters"]["trainer"]] = resources
    assert set(retrained) == set(TRAINERS)
    assert retrained["layoutnet"] == retrained["contentnet"] == ["hoi.dataset.ho3pairs"]
    assert retrained["c-hoi"] == ["hoi.dataset.hoi-annotations"] and retrained["srm"] == ["hoi.dataset.hogsa-models"]
    chain = [("chorus-prompts", "chorus-views-on-prompts", "prompts"), ("chorus-views", "chorus-occupancy-on-views",
                                                                       "views"),
             ("affordance-synthesis", "evaluate-affordance-synthesis", "synthesized")]
    for parent, child, field in chain:
        [trigger] = deployments[child]["triggers"]
        assert trigger["match"]["prefect.resource.id"] == f"hoi.dataset.{parent}"
        [config] = deployment_configs({"triggers": [trigger]})
        assert config["config"][field] == f"{parent}/v7"  # the version just published, not the latest
    [evaluation] = deployments["evaluate-on-model-publish"]["triggers"]
    assert set(evaluation["match"]["prefect.resource.id"]) == {"hoi.model.layoutnet", "hoi.model.contentnet"}


def test_make_deploy_creates_the_work_pool_before_deploying():
    dry_run = subprocess.run(["make", "-n", "deploy", "PREFECT=prefect"], cwd=ROOT, capture_output=True, text=True,
                             timeout=30)
    assert dry_run.returncode == 0, dry_run.stderr
    lines = dry_run.stdout.splitlines()
    [create] = [i for i, line in enumerate(lines) if "work-pool create hoi-factory --type process" in line]
    [deploy] = [i for i, line in enumerate(lines) if "deploy --all --prefect-file infra/prefect.yaml" in line]
    assert create < deploy


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
