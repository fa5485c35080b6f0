"""A small pipeline writing every kind of encoded column (PNG image and mask, .npy array, K as a 3x3 array, an
image column with nulls), with known content per sample and known rejects: for the card, export and loader tests.
The encodings are declared on `image`, `mask` and `depth`; `overlay` leaves its own undeclared (versions written
before declarations: judged from the bytes)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from hoi_factory.codec import encode_npy, encode_png
from hoi_factory.columns import column
from hoi_factory.config import ExecutionConfig, RunConfig, Settings
from hoi_factory.datasets import DatasetVersion
from hoi_factory.pipeline import Pipeline
from hoi_factory.run import run_pipeline
from hoi_factory.stage import MapStage, Reject

REJECTED_INDEX_REMAINDER = 1  # index % 4 == 1 is rejected, so counts are known
SCORE_DESCRIPTION = "how sure the stage is (declared in the schema's field metadata)"
K_DESCRIPTION = "camera intrinsics"


class EncodedConfig(RunConfig):
    count: int = Field(20, ge=1)


def sample_arrays(seed: int, index: int) -> dict:
    """What sample (seed, index) holds, before encoding: the tests' ground truth."""
    rng = np.random.default_rng(seed)
    fx, fy = 100.0 + index, 120.0 + index
    return {
        "image": rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
        "mask": rng.random((6, 8)) > 0.5,
        "depth": rng.standard_normal((2, 3)).astype(np.float32),
        "K": np.array([[fx, 0, 4.0], [0, fy, 3.0], [0, 0, 1]], dtype=np.float32),
        "overlay": rng.integers(0, 256, (5, 5), dtype=np.uint8) if index % 3 else None,
    }


class MakeEncoded(MapStage):
    makes = frozenset({"image", "mask", "depth", "K", "overlay", "label", "score"})

    def process_row(self, row):
        if row["index"] % 4 == REJECTED_INDEX_REMAINDER:
            return Reject.of(row, "unlucky index")
        arrays = sample_arrays(row["seed"], row["index"])
        return {**row, "image": encode_png(arrays["image"]), "mask": encode_png(arrays["mask"]),
                "depth": encode_npy(arrays["depth"]), "K": arrays["K"],
                "overlay": None if arrays["overlay"] is None else encode_png(arrays["overlay"]),
                "label": f"thing-{row['index'] % 3}", "score": row["index"] / 10}


class EncodedPipeline(Pipeline[EncodedConfig]):
    name = "encoded"
    description = "test: every kind of encoded column"
    config_class = EncodedConfig
    schema = pa.schema([
        column("image", pa.binary(), "an RGB image", encoding="png"),
        column("mask", pa.binary(), "a mask", encoding="png-mask"),
        column("depth", pa.binary(), "a float32 (2, 3) array", encoding="npy", unit="metres"),
        column("K", pa.float32(), K_DESCRIPTION, shape=(3, 3), unit="pixels", frame="camera"),
        pa.field("overlay", pa.binary()),
        column("label", pa.string(), "a label"),
        column("score", pa.float32(), SCORE_DESCRIPTION),
    ])
    preview_column = "image"

    def plan(self, config, context):
        return [{"input_id": "encoded", "index": i} for i in range(config.count)]

    def stages(self, config):
        return [MakeEncoded()]

    def dataset_metrics(self, version) -> dict[str, float]:
        return version.column_means(["score"])


def make_encoded_version(store_url: str, count: int = 20, shard_size: int = 3) -> DatasetVersion:
    config = EncodedConfig(count=count, execution=ExecutionConfig(executor="local", shard_size=shard_size))
    return run_pipeline(EncodedPipeline(), config, Settings(store_url=store_url)).dataset
