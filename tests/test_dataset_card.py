"""The dataset card: `datasets.load_dataset(<version folder>)` gives decoded images and the rejects apart, and the
card says what the manifest says (counts, columns, funnel, lineage, metrics), under the manifest's checksum."""

import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before `datasets` reads it: local folders only, never the hub

import datasets
import numpy as np
import pyarrow as pa
import pytest
import yaml

from flows.registry import PIPELINES, pipeline_class
from hoi_factory import ids
from hoi_factory.card import card_header, hf_feature
from hoi_factory.codec import MASK_THRESHOLD
from hoi_factory.columns import describe
from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.datasets import CARD, IMAGE_ENCODINGS, full_schema
from hoi_factory.run import run_pipeline
from support.encoded_pipeline import (
    K_DESCRIPTION,
    REJECTED_INDEX_REMAINDER,
    SCORE_DESCRIPTION,
    make_encoded_version,
    sample_arrays,
)
from support.pipelines import ScaleConfig, ScalePipeline
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline

COUNT = 20


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    return make_encoded_version(str(tmp_path_factory.mktemp("store")), count=COUNT)


def index_by_sample_id(version) -> dict[str, int]:
    """Ground truth from the id function, not from the store: which plan index each sample id stands for."""
    return {ids.sample_id(version.manifest.config_hash, "encoded", i): i for i in range(COUNT)}


def card_of(version) -> tuple[dict, str]:
    text = version.store.read_bytes("datasets", version.name, version.version, CARD).decode()
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_load_dataset_on_the_version_folder_decodes_images_and_keeps_rejects_apart(encoded, tmp_path):
    folder = encoded.store.path("datasets", encoded.name, encoded.version)
    samples = datasets.load_dataset(folder, cache_dir=str(tmp_path / "hf"))["train"]
    assert isinstance(samples.features["image"], datasets.Image)
    assert isinstance(samples.features["mask"], datasets.Image)
    assert samples.features["depth"] == datasets.Value("binary")
    assert samples.features["K"] == datasets.List(datasets.List(datasets.Value("float32"), length=3), length=3)
    index_of = index_by_sample_id(encoded)
    kept = {sid for sid, i in index_of.items() if i % 4 != REJECTED_INDEX_REMAINDER}
    assert sorted(samples["sample_id"]) == sorted(kept) and len(samples) == encoded.manifest.num_samples
    for row in samples:
        truth = sample_arrays(row["seed"], index_of[row["sample_id"]])
        np.testing.assert_array_equal(np.asarray(row["image"]), truth["image"])
        np.testing.assert_array_equal(np.asarray(row["mask"].convert("L")) > MASK_THRESHOLD, truth["mask"])
        np.testing.assert_array_equal(np.asarray(row["K"], dtype=np.float32), truth["K"])  # 3x3, as declared
        if truth["overlay"] is None:
            assert row["overlay"] is None
        else:
            np.testing.assert_array_equal(np.asarray(row["overlay"]), truth["overlay"])

    rejects = datasets.load_dataset(folder, "rejects", cache_dir=str(tmp_path / "hf"))["train"]
    assert sorted(rejects["sample_id"]) == sorted(set(index_of) - kept)
    assert set(rejects["reason"]) == {"unlucky index"} and set(rejects["kind"]) == {"reject"}


def test_card_tells_counts_columns_funnel_and_metrics_and_is_checksummed(encoded):
    header, body = card_of(encoded)
    m = encoded.manifest
    features = {f["name"]: f for f in header["dataset_info"][0]["features"]}
    assert [c["config_name"] for c in header["configs"]] == ["samples", "rejects"]
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "data/*.parquet"}]
    assert list(features) == list(m.columns)  # every column, in the shards' order
    assert features["image"] == {"name": "image", "dtype": "image"}
    assert features["K"] == {"name": "K", "list": {"list": "float32", "length": 3}, "length": 3}
    assert features["depth"] == {"name": "depth", "dtype": "binary"}
    assert f"| {m.num_inputs} | {m.num_samples} | {m.num_rejects} | {m.num_errors} | {m.num_shards} |" in body
    assert (m.num_inputs, m.num_samples, m.num_rejects) == (20, 15, 5)
    assert f"| score | float | value | float32 | {SCORE_DESCRIPTION} |" in body
    assert "| depth | binary | NumPy .npy array | binary | a float32 (2, 3) array (unit: metres) |" in body
    assert ("| K | fixed_size_list<fixed_size_list<float>[3]>[3] | value | list[3] of list[3] of float32 | "
            f"{K_DESCRIPTION} (shape (3, 3); unit: pixels; frame: camera) |") in body
    assert "| overlay | binary | PNG image | image |  |" in body  # undeclared: judged from its bytes
    assert "| MakeEncoded | 20 | 15 | 0 |" in body and "| MakeEncoded: unlucky index | 5 |" in body
    scores = [i / 10 for i in range(COUNT) if i % 4 != REJECTED_INDEX_REMAINDER]
    assert f"| mean_score | {m.metrics['mean_score']:.6g} |" in body
    assert abs(m.metrics["mean_score"] - np.mean(scores)) < 1e-6
    assert "No parent dataset" in body

    card = encoded.store.read_bytes("datasets", encoded.name, encoded.version, CARD)
    assert m.card_sha256 == hashlib.sha256(card).hexdigest()
    assert encoded.validate() == []


def test_validate_finds_a_changed_or_missing_card(tmp_path):
    version = make_encoded_version(str(tmp_path / "store"), count=4, shard_size=4)
    parts = ("datasets", version.name, version.version, CARD)
    card = version.store.read_bytes(*parts)
    version.store.write_bytes(card.replace(b"samples", b"sample5"), *parts)
    assert version.validate() == [f"{CARD}: checksum mismatch (the manifest says sha256 "
                                  f"{version.manifest.card_sha256[:12]}…)"]
    version.store.remove(*parts)
    assert version.validate() == [f"{CARD}: missing"]


def test_card_names_the_parents(tmp_path):
    settings = Settings(store_url=str(tmp_path / "store"))
    local = ExecutionConfig(executor="local", shard_size=4)
    parent = run_pipeline(SyntheticPipeline(), SyntheticConfig(count=6, work_ms=0, execution=local), settings).dataset
    child = run_pipeline(ScalePipeline(), ScaleConfig(parent=parent.ref, execution=local), settings).dataset
    header, body = card_of(child)
    assert child.manifest.parents == [parent.ref]
    assert f"- made from `{parent.ref}`" in body
    assert header["dataset_info"][0]["features"][-1] == {"name": "scaled", "list": "float32"}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_pipelines_card_features_are_the_columns_arrow_types(name):
    """`datasets` parses the card's features of every pipeline's schema back into the shards' Arrow types, shaped
    arrays included; declared image columns are Image features (structs of bytes and path there)."""
    schema = full_schema(pipeline_class(name).schema)
    features = datasets.Features._from_yaml_list(card_header(schema, {})["dataset_info"][0]["features"])
    assert list(features) == schema.names
    for field in schema:
        if describe(field).get("encoding") in IMAGE_ENCODINGS:
            assert features[field.name] == datasets.Image(), field.name
        else:
            assert features.arrow_schema.field(field.name).type == field.type, field.name


@pytest.mark.parametrize("arrow_type", [
    pa.list_(pa.float32(), 9), pa.list_(pa.list_(pa.int32())), pa.large_string(), pa.bool_(),
    pa.struct([("a", pa.string()), ("b", pa.list_(pa.float64()))]), pa.timestamp("us", tz="UTC"),
], ids=str)
def test_nested_and_unusual_types_parse_back(arrow_type):
    features = datasets.Features._from_yaml_list([{"name": "x", **hf_feature(arrow_type)}])
    assert features.arrow_schema.field("x").type == arrow_type
