"""The core contract: errors fail a run and publish nothing (rejects are data), a code fix makes a new version,
runs use their explicit settings everywhere, declared columns are checked before any work, and per-pool
Ray execution makes the in-process executor's dataset."""

import importlib
import re
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from hoi_factory import code_identity
from hoi_factory.config import RunConfig, Settings
from hoi_factory.context import StageContext
from hoi_factory.datasets import DatasetStore
from hoi_factory.pipeline import ColumnError, Pipeline, stage_groups
from hoi_factory.run import ErrorBudgetExceeded, run_pipeline
from hoi_factory.stage import Filter, MapStage, Resources
from hoi_factory.storage import Store
from support.pipelines import ScaleConfig, ScalePipeline
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline

REPO = Path(__file__).resolve().parents[1]

BUGGY_MODULE = '''
import pyarrow as pa
from hoi_factory.config import RunConfig
from hoi_factory.pipeline import Pipeline
from hoi_factory.stage import MapStage


class Double(MapStage):
    makes = frozenset({"doubled"})

    def process_row(self, row):
        return {**row, "doubled": row[KEY] * 2}


class DoublingPipeline(Pipeline):
    name = "doubling"
    description = "test: doubles the item index"
    config_class = RunConfig
    schema = pa.schema([("doubled", pa.int64())])

    def plan(self, config, context):
        return [{"input_id": f"n{i}", "index": i} for i in range(20)]

    def stages(self, config):
        return [Double()]
'''


def load_doubling(tmp_path, key: str):
    """The pipeline's module written afresh (as an edit on disk would), its code identity recomputed."""
    (tmp_path / "doubling_pipeline.py").write_text(BUGGY_MODULE.replace("KEY", repr(key)))
    if str(tmp_path) not in sys.path:
        sys.path.insert(0, str(tmp_path))
    code_identity.source_closure.cache_clear()
    code_identity.source_hash.cache_clear()
    module = importlib.reload(sys.modules["doubling_pipeline"]) if "doubling_pipeline" in sys.modules \
        else importlib.import_module("doubling_pipeline")
    return module.DoublingPipeline()


def test_a_stage_bug_fails_the_run_publishes_nothing_and_the_fix_makes_a_new_version(local_store_env, tmp_path):
    config = RunConfig(execution={"executor": "local", "shard_size": 4})
    buggy = load_doubling(tmp_path, "idx")  # a renamed key: KeyError on every row
    with pytest.raises(ErrorBudgetExceeded) as failure:
        run_pipeline(buggy, config)
    message = str(failure.value)
    assert "nothing was published" in message and "errors by stage: Double" in message
    assert "KeyError: 'idx'" in message and "Traceback" in message and "doubling_pipeline.py" in message
    datasets = DatasetStore(Store.from_settings(Settings()))
    assert datasets.versions("doubling") == []

    fixed = load_doubling(tmp_path, "index")
    dataset = run_pipeline(fixed, config).dataset
    assert dataset.manifest.num_samples == 20 and dataset.manifest.num_errors == 0
    assert sorted(dataset.to_arrow().column("doubled").to_pylist()) == [2 * i for i in range(20)]
    assert dataset.manifest.code["source"] == code_identity.source_hash("doubling_pipeline")
    assert datasets.versions("doubling") == [dataset.version]


class FlakyOnTwo(MapStage):
    makes = frozenset({"ok"})

    def process_row(self, row):
        if row["index"] in (3, 11):
            raise RuntimeError(f"transient fault on {row['index']}")
        return {**row, "ok": True}


class DropEverything(Filter):
    def reason_to_drop(self, row):
        return "not wanted"


class SmallPipeline(Pipeline):
    name = "small"
    description = "test: a few errors within the budget, or a filter that drops every row"
    config_class = RunConfig
    schema = pa.schema([("ok", pa.bool_())])
    drop_all = False

    def plan(self, config, context):
        return [{"input_id": f"n{i}", "index": i} for i in range(16)]

    def stages(self, config):
        return [FlakyOnTwo(), DropEverything()] if self.drop_all else [FlakyOnTwo()]


def test_errors_within_the_budget_publish_and_are_counted_apart_from_rejects(local_store_env):
    dataset = run_pipeline(SmallPipeline(), RunConfig(execution={"executor": "local", "shard_size": 8})).dataset
    manifest = dataset.manifest
    assert (manifest.num_samples, manifest.num_rejects, manifest.num_errors) == (14, 0, 2)
    assert manifest.num_inputs == manifest.num_samples + manifest.num_rejects + manifest.num_errors
    errors = [r for r in dataset.rejects().to_pylist() if r["kind"] == "error"]
    assert sorted(r["detail"] for r in errors) == ["RuntimeError: transient fault on 11",
                                                   "RuntimeError: transient fault on 3"]
    assert {e["stage"] for e in manifest.errors} == {"FlakyOnTwo"} and "Traceback" in manifest.errors[0]["traceback"]

    with pytest.raises(ErrorBudgetExceeded, match="2 of 16 inputs failed"):  # a zero budget fails the same run
        run_pipeline(SmallPipeline(), RunConfig(execution={"executor": "local", "max_errors_floor": 0},
                                                output={"dataset": "strict"}))


def test_a_filter_that_rejects_every_row_still_publishes(local_store_env):
    pipeline = SmallPipeline()
    pipeline.drop_all = True
    dataset = run_pipeline(pipeline, RunConfig(execution={"executor": "local"})).dataset
    assert (dataset.manifest.num_samples, dataset.manifest.num_rejects, dataset.manifest.num_errors) == (0, 14, 2)
    assert dataset.manifest.reject_reasons == {"DropEverything: not wanted": 14}


# -- explicit settings -------------------------------------------------------------------------------------


@pytest.fixture
def no_environment(monkeypatch, tmp_path):
    """Nothing about the store in the environment: a worker that read it would find another store."""
    for name in ("HOI_STORE_URL", "HOI_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env file either


def explicit_settings(kind, tmp_path, moto_endpoint=None):
    if kind == "local":
        return Settings(store_url=str(tmp_path / "explicit-store"))
    import boto3

    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket="explicit")
    return Settings(store_url="s3://explicit/factory", s3_endpoint_url=moto_endpoint, aws_access_key_id="k",
                    aws_secret_access_key="s", aws_region="us-east-1")


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_parent_then_child_chain_runs_on_explicit_settings_alone(kind, no_environment, tmp_path, request):
    settings = explicit_settings(kind, tmp_path, request.getfixturevalue("moto_endpoint") if kind == "s3" else None)
    parent = run_pipeline(SyntheticPipeline(), SyntheticConfig(count=12, work_ms=0, values=3,
                                                               execution={"executor": "local", "shard_size": 5}),
                          settings).dataset
    child = run_pipeline(ScalePipeline(), ScaleConfig(parent="synthetic", execution={"executor": "local",
                                                                                     "shard_size": 4}),
                         settings).dataset
    assert (child.manifest.num_samples, child.manifest.num_errors, child.manifest.num_rejects) == (12, 0, 0)
    assert child.manifest.parents == [parent.ref]
    values = {r["sample_id"]: r["values"] for r in parent.to_arrow().to_pylist()}
    for row in child.to_arrow().to_pylist():
        assert row["scaled"] == pytest.approx([2 * v for v in values[row["input_id"]]])
    assert not (tmp_path / "hoi-store").exists()  # the environment's default store was never touched


def test_no_task_or_model_module_reads_the_environment_or_builds_settings():
    pattern = re.compile(r"\bSettings\(|os\.environ|os\.getenv|getenv\(")
    offenders = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
                 for folder in ("tasks", "models") for path in sorted((REPO / folder).rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    assert pattern.search("x = Settings()") and pattern.search("os.environ['A']")  # the scan itself can find


# -- declared columns --------------------------------------------------------------------------------------


class NeedsMissing(MapStage):
    needs = frozenset({"pixels"})
    makes = frozenset({"ok"})

    def process_row(self, row):
        return {**row, "ok": True}


class PlanCounts(SmallPipeline):
    planned = 0

    def plan(self, config, context):
        PlanCounts.planned += 1
        return super().plan(config, context)


def test_a_stage_needing_a_key_nobody_makes_fails_before_any_work(local_store_env):
    class Broken(PlanCounts):
        def stages(self, config):
            return [NeedsMissing()]

    with pytest.raises(ColumnError, match=r"stage 1 \(NeedsMissing\) needs row key\(s\) \['pixels'\]"):
        run_pipeline(Broken(), RunConfig(execution={"executor": "local"}))
    assert PlanCounts.planned == 0 and not Path(local_store_env).exists()


def test_a_schema_column_nobody_makes_fails_before_any_work(local_store_env):
    class Unmade(PlanCounts):
        schema = pa.schema([("ok", pa.bool_()), ("score", pa.float64())])

    with pytest.raises(ColumnError, match=r"schema column\(s\) \['score'\] are made by no stage"):
        run_pipeline(Unmade(), RunConfig(execution={"executor": "local"}))
    assert PlanCounts.planned == 0 and not Path(local_store_env).exists()


def test_every_registered_pipeline_declares_a_chain_that_holds(tmp_path):
    from flows.registry import PIPELINES, pipeline_class
    from hoi_factory.config import ExecutionConfig
    from hoi_factory.pipeline import check_columns

    for name in PIPELINES:
        pipeline = pipeline_class(name)()
        config = pipeline.demo_config(tmp_path / name, ExecutionConfig(executor="local"))
        assert pipeline.name == name
        if config is not None:
            check_columns(pipeline, pipeline.stages(config), config)


# -- stage groups and per-pool execution -----------------------------------------------------------------


def test_consecutive_stages_with_equal_resources_share_a_group():
    gpu = Resources(num_gpus=1)

    class A(MapStage):
        pass

    class B(MapStage):
        resources = gpu

    assert stage_groups([A(), A(), B(), B(), A()]) == [range(0, 2), range(2, 4), range(4, 5)]
    assert stage_groups([A()]) == [range(0, 1)] and stage_groups([]) == []


def test_context_ships_settings_not_open_stores(tmp_path):
    import pickle

    context = StageContext(Settings(store_url=str(tmp_path)))
    assert context.datasets.store.url == str(tmp_path)
    copy = pickle.loads(pickle.dumps(context))
    assert "store" not in copy.__dict__ and copy.settings.store_url == str(tmp_path)


def test_per_pool_ray_execution_makes_the_in_process_dataset(local_store_env, local_ray, monkeypatch, tmp_path):
    config = dict(count=40, work_ms=5, values=4, seed=2, accelerator_ms=5)
    on_ray = run_pipeline(SyntheticPipeline(), SyntheticConfig(
        **config, execution={"executor": "ray", "workers": 1, "shard_size": 4})).dataset
    assert "a pool per stage group" in on_ray.manifest.run["executor"]
    # Each shard went through two pools (CPU work, then the accelerator stand-in), two different actors.
    assert all(len(shard.worker["groups"]) == 2 for shard in on_ray.shards)
    assert all(len({g["pid"] for g in shard.worker["groups"]}) == 2 for shard in on_ray.shards)

    monkeypatch.setenv("HOI_STORE_URL", str(tmp_path / "local"))
    local = run_pipeline(SyntheticPipeline(), SyntheticConfig(
        **config, execution={"executor": "local", "shard_size": 4})).dataset
    assert on_ray.to_arrow().equals(local.to_arrow())
    assert [s.sha256 for s in on_ray.shards] == [s.sha256 for s in local.shards]
    assert on_ray.manifest.num_samples == 40


def test_a_stage_needing_a_resource_the_cluster_lacks_is_refused(local_store_env, local_ray):
    from hoi_factory.executors.ray import NoResourcesForStage

    class NeedsGPU(MapStage):
        resources = Resources(num_gpus=1)
        makes = frozenset({"ok"})

        def process_row(self, row):
            return {**row, "ok": True}

    class GPUPipeline(SmallPipeline):
        def stages(self, config):
            return [NeedsGPU()]

    with pytest.raises(NoResourcesForStage, match="NeedsGPU.*needs .*num_gpus=1"):
        run_pipeline(GPUPipeline(), RunConfig(execution={"executor": "ray"}))


class MeasuredSynthetic(SyntheticPipeline):
    """Its whole-version figures come from the run's metrics hook; the report only draws them."""

    def dataset_metrics(self, version):
        return {"num_rows_read": float(version.to_arrow().num_rows), "unmeasured": float("nan")}


def test_the_run_measures_a_version_before_its_report_and_manifest(tmp_path):
    settings = Settings(store_url=str(tmp_path / "store"))
    result = run_pipeline(MeasuredSynthetic(), SyntheticConfig(count=7, work_ms=0, execution={"executor": "local"}),
                          settings)
    manifest = DatasetStore(Store(settings.store_url)).open("synthetic").manifest
    assert manifest.metrics == {"num_rows_read": 7.0, "unmeasured": None}  # JSON has no NaN
    assert result.summary()["num_rows_read"] == 7.0
    page = Store(settings.store_url).read_bytes("datasets", "synthetic", "v1", manifest.report["html"]).decode()
    assert "num rows read" in page and "n/a" in page
