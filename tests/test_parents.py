"""A pipeline that reads another dataset: items point at parent samples, workers read them, lineage is kept."""

import numpy as np
import pytest

from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store, StoreError
from support.pipelines import ScaleConfig, ScalePipeline
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline


def test_child_dataset_reads_its_parent_in_the_workers_and_records_lineage(local_store_env):
    parent = run_pipeline(SyntheticPipeline(), SyntheticConfig(
        count=30, work_ms=0, values=3, execution={"executor": "local", "shard_size": 7})).dataset
    child = run_pipeline(ScalePipeline(), ScaleConfig(parent="synthetic", factor=3.0, min_total=-3,
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
