"""A pipeline that reads another dataset: items point at parent samples, workers read them, lineage is kept."""

import numpy as np
import pyarrow as pa
import pytest
from pydantic import Field

from hoi_factory.config import RunConfig, Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.parents import PARENT_KEYS, ReadParentRows, items_from_dataset
from hoi_factory.pipeline import Pipeline
from hoi_factory.run import run_pipeline
from hoi_factory.stage import MapStage, Reject
from hoi_factory.storage import Store, StoreError
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline


class ScaleConfig(RunConfig):
    parent: str = Field(..., description="dataset to read: name or name/version")
    factor: float = 2.0


class Scale(MapStage):
    needs = frozenset({"values", "total"})
    makes = frozenset({"scaled"})

    def __init__(self, factor):
        self.factor = factor

    def process_row(self, row):
        if row["total"] < -3:  # a child stage may still reject what it reads
            return Reject.of(row, "total too low")
        return {**row, "scaled": [v * self.factor for v in row["values"]]}


class ScalePipeline(Pipeline[ScaleConfig]):
    name = "scaled"
    description = "test: a child of the synthetic dataset"
    config_class = ScaleConfig
    schema = pa.schema([("scaled", pa.list_(pa.float32()))])
    item_keys = frozenset({"input_id"}) | PARENT_KEYS

    def plan(self, config, context):
        return items_from_dataset(context.datasets.open_ref(config.parent))

    def stages(self, config):
        return [ReadParentRows(["values", "total"]), Scale(config.factor)]


def test_child_dataset_reads_its_parent_in_the_workers_and_records_lineage(local_store_env):
    parent = run_pipeline(SyntheticPipeline(), SyntheticConfig(
        count=30, work_ms=0, values=3, execution={"executor": "local", "shard_size": 7})).dataset
    child = run_pipeline(ScalePipeline(), ScaleConfig(parent="synthetic", factor=3.0,
                                                      execution={"executor": "local", "shard_size": 8})).dataset
    assert child.manifest.parents == [f"synthetic/{parent.version}"]

    parents = {row["sample_id"]: row for row in parent.to_arrow().to_pylist()}
    kept = child.to_arrow().to_pylist()
    rejected = child.rejects().to_pylist()
    assert len(kept) + len(rejected) == 30
    assert {r["input_id"] for r in rejected} == {sid for sid, row in parents.items() if row["total"] < -3}
    for row in kept:
        source = parents[row["input_id"]]
        np.testing.assert_allclose(row["scaled"], np.float32(source["values"]) * 3, rtol=1e-6)
        assert row["sample_id"] != row["input_id"]  # the child's own id, derived from its config

    html = child.store.read_bytes("datasets", "scaled", child.version, "report/index.html").decode()
    assert f'href="../../../synthetic/{parent.version}/report/index.html"' in html


def test_a_parent_that_does_not_exist_fails_at_planning(local_store_env):
    with pytest.raises(StoreError, match="no published version of dataset 'nothing'"):
        run_pipeline(ScalePipeline(), ScaleConfig(parent="nothing", execution={"executor": "local"}))
    assert DatasetStore(Store.from_settings(Settings())).names() == []
