"""Self-describing dataset columns: one declaration gives the Arrow type and the metadata readers need.

A pipeline declares each column once with `column(...)`: its description, and where they apply the encoding of
its bytes (png, png-mask, npy, ply), its array shape, unit and coordinate frame. The metadata travels in the
Parquet schema (field metadata, readable by any Arrow/Parquet tool) and `describe` turns it into the manifest's
and the dataset card's column table. Arrays keep their shape: (3, 3) becomes a fixed-size list of fixed-size
lists, a leading None a variable-length list, so K reads back as 3x3, not as 9 floats.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

ENCODINGS = frozenset({"png", "png-mask", "npy", "ply", "json"})
_KEYS = ("description", "encoding", "shape", "unit", "frame")


def shaped(value_type: pa.DataType, shape: Sequence[int | None]) -> pa.DataType:
    """The nested list type of an array of `shape` (None: any length) holding `value_type`."""
    for size in reversed(shape):
        value_type = pa.list_(value_type) if size is None else pa.list_(value_type, int(size))
    return value_type


def column(name: str, value_type: pa.DataType, description: str, *, shape: Sequence[int | None] | None = None,
           encoding: str | None = None, unit: str | None = None, frame: str | None = None,
           nullable: bool = True) -> pa.Field:
    """An Arrow field of `value_type` (nested to `shape` when given) carrying its description, encoding, shape,
    unit and frame as field metadata. `nullable`: whether a row may leave it absent (null, never a stand-in
    value such as empty bytes)."""
    if not description.strip():
        raise ValueError(f"column {name!r}: a description is required")
    if encoding is not None and encoding not in ENCODINGS:
        raise ValueError(f"column {name!r}: encoding {encoding!r} is not one of {sorted(ENCODINGS)}")
    if encoding is not None and value_type not in (pa.binary(), pa.large_binary(), pa.string()):
        raise ValueError(f"column {name!r}: an encoded column holds bytes, not {value_type}")
    info = {"description": description, "encoding": encoding, "unit": unit, "frame": frame,
            "shape": json.dumps(list(shape)) if shape is not None else None}
    arrow_type = shaped(value_type, shape) if shape is not None else value_type
    metadata = {key: value for key, value in info.items() if value is not None}
    return pa.field(name, arrow_type, nullable=nullable, metadata=metadata)


def _base_type(arrow_type: pa.DataType) -> pa.DataType:
    while pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type) \
            or pa.types.is_large_list(arrow_type):
        arrow_type = arrow_type.value_type
    return arrow_type


def describe(field: pa.Field) -> dict:
    """The column's metadata as plain data (manifest, card, report): name, dtype, shape, nullable and whatever
    of description / encoding / unit / frame it declares."""
    metadata = {key.decode(): value.decode() for key, value in (field.metadata or {}).items()}
    info = {"name": field.name, "dtype": str(_base_type(field.type)), "nullable": field.nullable}
    for key in _KEYS:
        if key in metadata:
            info[key] = json.loads(metadata[key]) if key == "shape" else metadata[key]
    return info


def describe_schema(schema: pa.Schema) -> list[dict]:
    """`describe` of every column, in schema order."""
    return [describe(field) for field in schema]
