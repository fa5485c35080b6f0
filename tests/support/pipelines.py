"""Small pipelines the tests share."""

import pyarrow as pa
from pydantic import Field

from hoi_factory.config import RunConfig
from hoi_factory.parents import PARENT_KEYS, ReadParentRows, items_from_dataset
from hoi_factory.pipeline import Pipeline
from hoi_factory.stage import MapStage


class ScaleConfig(RunConfig):
    parent: str = Field(..., description="dataset to read")


class Scale(MapStage):
    needs = frozenset({"values"})
    makes = frozenset({"scaled"})

    def process_row(self, row):
        return {**row, "scaled": [2 * v for v in row["values"]]}


class ScalePipeline(Pipeline[ScaleConfig]):
    name = "scaled"
    description = "test: reads its parent in the workers"
    config_class = ScaleConfig
    schema = pa.schema([("scaled", pa.list_(pa.float32()))])
    item_keys = frozenset({"input_id"}) | PARENT_KEYS

    def plan(self, config, context):
        return items_from_dataset(context.datasets.open_ref(config.parent))

    def stages(self, config):
        return [ReadParentRows(["values"]), Scale()]
