"""Small pipelines the tests share."""

import pyarrow as pa
from pydantic import Field

from hoi_factory.config import RunConfig
from hoi_factory.parents import PARENT_KEYS, ReadParentRows, items_from_dataset
from hoi_factory.pipeline import Pipeline
from hoi_factory.stage import MapStage, Reject


class ScaleConfig(RunConfig):
    parent: str = Field(..., description="dataset to read: name or name/version")
    factor: float = 2.0
    min_total: float | None = Field(None, description="parent samples whose total is lower are rejected")


class Scale(MapStage):
    """Scales a synthetic parent's values; may still reject what it reads, as a child stage can."""

    needs = frozenset({"values", "total"})
    makes = frozenset({"scaled"})

    def __init__(self, factor: float, min_total: float | None):
        self.factor, self.min_total = factor, min_total

    def process_row(self, row):
        if self.min_total is not None and row["total"] < self.min_total:
            return Reject.of(row, "total too low")
        return {**row, "scaled": [v * self.factor for v in row["values"]]}


class ScalePipeline(Pipeline[ScaleConfig]):
    name = "scaled"
    description = "test: a child of the synthetic dataset, read in the workers"
    config_class = ScaleConfig
    schema = pa.schema([("scaled", pa.list_(pa.float32()))])
    item_keys = frozenset({"input_id"}) | PARENT_KEYS

    def plan(self, config, context):
        return items_from_dataset(context.datasets.open_ref(config.parent))

    def stages(self, config):
        return [ReadParentRows(["values", "total"]), Scale(config.factor, config.min_total)]
