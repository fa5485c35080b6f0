"""Self-describing columns (hoi_factory.columns): every pipeline declares what each column holds; arrays keep their
shape through Parquet and a published version; a cell that does not fit is a reject naming the column; absent
values are null; flat vectors of versions written before shapes still read as their declared shape."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from flows.registry import PIPELINES, pipeline_class
from hoi_factory.columns import as_declared, column, declared_shape, describe, describe_schema
from hoi_factory.datasets import MISFIT, column_types, drop_non_finite, full_schema, rows_to_table
from hoi_factory.torch_views import decode_cell
from support.encoded_pipeline import K_DESCRIPTION, make_encoded_version

SCHEMA = pa.schema([
    column("K", pa.float32(), "intrinsics", shape=(3, 3), unit="pixels", frame="camera"),
    column("boxes", pa.float32(), "boxes", shape=(None, 4), unit="pixels"),
    column("counts", pa.int32(), "counts", shape=(None,)),
    column("labels", pa.string(), "labels", shape=(None,)),
    column("image", pa.binary(), "an image (null: none)", encoding="png"),
    column("name", pa.string(), "a name that is always there", nullable=False),
])


def row(number: int, **changes) -> dict:
    """A fitting row whose values follow from `number`, so any reordering or mixing up shows."""
    return {"K": np.arange(9, dtype=np.float64).reshape(3, 3) + number,
            "boxes": np.full((number % 3, 4), number, dtype=np.float32),
            "counts": list(range(number)), "labels": [f"l{number}"] * (number % 2), "image": None,
            "name": f"row {number}", "sample_id": f"s{number}", "input_id": f"i{number}", **changes}


def parquet_round_trip(table: pa.Table) -> pa.Table:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return pq.read_table(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_pipeline_describes_every_column(name):
    """A description for every column; bytes name their encoding; lists declare their shape (the writer then
    checks it); `describe` reads it all back."""
    for field in full_schema(pipeline_class(name).schema):
        info = describe(field)
        assert info.get("description", "").strip(), f"{name}: column {field.name!r} has no description"
        if pa.types.is_binary(field.type):
            assert "encoding" in info, f"{name}: bytes column {field.name!r} names no encoding"
        if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
            assert declared_shape(field) is not None, f"{name}: list column {field.name!r} declares no shape"


def test_shaped_columns_survive_parquet_with_their_shape_dtype_and_metadata():
    rows = [row(n) for n in range(5)]
    table, rejects = rows_to_table(rows, SCHEMA)
    assert rejects == []
    back = parquet_round_trip(table)
    assert column_types(back.schema) == column_types(SCHEMA)  # fixed-size lists stay fixed-size
    assert [(f.nullable, f.metadata) for f in back.schema] == [(f.nullable, f.metadata) for f in SCHEMA]
    assert describe_schema(back.schema) == describe_schema(SCHEMA)
    assert describe(back.schema.field("K")) == {"name": "K", "dtype": "float32", "nullable": True,
                                                "description": "intrinsics", "shape": [3, 3], "unit": "pixels",
                                                "frame": "camera"}
    for source, stored in zip(rows, back.to_pylist()):
        assert np.asarray(stored["K"]).shape == (3, 3)
        np.testing.assert_array_equal(np.asarray(stored["K"], dtype=np.float64), source["K"])
        np.testing.assert_array_equal(np.asarray(stored["boxes"]).reshape(-1, 4), source["boxes"])
        assert stored["counts"] == source["counts"] and stored["labels"] == source["labels"]
        assert stored["image"] is None and stored["name"] == source["name"]


def test_cells_that_do_not_fit_are_rejects_naming_the_column_and_the_shapes():
    rows = [row(0), row(1, K=np.eye(2)), row(2, boxes=np.zeros((2, 3))), row(3, counts=[1.5]),
            row(4, boxes=[[1, 2, 3, 4], [5, 6]]), row(5, name=None), row(6, image=12345), row(7)]
    table, rejects = rows_to_table(rows, SCHEMA)
    assert table.column("name").to_pylist() == ["row 0", "row 7"]  # the fitting rows, in order
    assert np.asarray(table.column("K").to_pylist()[1]) == pytest.approx(np.arange(9).reshape(3, 3) + 7)
    assert [reject.sample_id for reject in rejects] == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert len(rejects) == 6 and {reject.reason for reject in rejects} == {MISFIT}
    details = [reject.detail for reject in rejects]
    assert details[0] == "column 'K': shape (2, 2) does not fit the schema's (3, 3) (None: any length)"
    assert details[1] == "column 'boxes': shape (2, 3) does not fit the schema's (None, 4) (None: any length)"
    assert details[2].startswith("column 'counts': Cannot cast") and "float64" in details[2]  # 1.5 is no int32
    assert details[3].startswith("column 'boxes': ")  # ragged
    assert details[4] == "column 'name' is absent (null) but may not be"
    assert details[5] == "column 'image': Expected bytes, got a 'int' object"


def test_absent_values_are_null_not_stand_ins():
    table, rejects = rows_to_table([row(1, K=None, boxes=None, image=None), row(2)], SCHEMA)
    assert rejects == []
    stored = parquet_round_trip(table).to_pylist()
    assert stored[0]["K"] is None and stored[0]["boxes"] is None and stored[0]["image"] is None
    assert np.asarray(stored[1]["K"]).shape == (3, 3)


def test_flat_vectors_of_older_versions_read_as_the_declared_shape():
    K, boxes = SCHEMA.field("K"), SCHEMA.field("boxes")
    flat = list(range(9))
    assert as_declared(K, flat).shape == (3, 3) and as_declared(K, flat).dtype == np.float32
    assert as_declared(boxes, list(range(8))).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert as_declared(boxes, []).shape == (0, 4)
    assert torch.equal(decode_cell(flat, K), torch.arange(9, dtype=torch.float32).reshape(3, 3))
    assert decode_cell([[1, 2], [3, 4]]).shape == (2, 2)  # without a field: the nesting as stored
    assert decode_cell(["a", "b"], SCHEMA.field("labels")) == ["a", "b"]  # strings pass through


def test_a_published_version_carries_the_metadata_in_its_shards_and_manifest(tmp_path):
    version = make_encoded_version(str(tmp_path / "store"), count=4, shard_size=4)
    schema = version.schema()  # as the Parquet shard holds it
    assert describe(schema.field("K"))["description"] == K_DESCRIPTION
    assert schema.field("K").type == pa.list_(pa.list_(pa.float32(), 3), 3)
    assert version.manifest.column_metadata == describe_schema(schema)
    assert version.encodings() == {"image": "png", "mask": "png-mask", "depth": "npy", "overlay": "png"}
    assert version.validate() == []


def test_non_finite_values_inside_a_shaped_array_are_rejected():
    K = np.eye(3)
    K[1, 1] = np.nan
    table, _ = rows_to_table([{**row(0), "seed": 0}, {**row(1, K=K), "seed": 1}], full_schema(SCHEMA))
    kept, rejects = drop_non_finite(table)
    assert kept.column("sample_id").to_pylist() == ["s0"]
    assert [(r.sample_id, r.reason, r.detail) for r in rejects] == [("s1", "non-finite values", "K")]
