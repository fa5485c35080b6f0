"""Self-describing dataset columns: one declaration gives the Arrow type and the metadata readers need.

A pipeline declares each column once with `column(...)`: its description, and where they apply the encoding of
its bytes (png, png-mask, jpeg, npy, ply, safetensors; json for JSON text), its array shape, unit and coordinate
frame. The metadata travels in the Parquet schema (field metadata, readable by any Arrow/Parquet tool) and
`describe` turns it into the manifest's and the dataset card's column table.

Arrays keep their shape: (3, 3) becomes a fixed-size list of fixed-size lists, a leading None a variable-length
list, so K reads back as 3x3, not as 9 floats. Writers hand numpy arrays (or nested lists) of the declared shape
to `shaped_array`, which packs them from one flat buffer and names the cells that do not fit; readers of versions
written before shapes were declared get their flat vectors reshaped by `as_declared`. Absent values are null
(`nullable=False` makes a null a misfit), never a stand-in such as empty bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

ENCODINGS = frozenset({"png", "png-mask", "jpeg", "npy", "ply", "json", "safetensors"})
_KEYS = ("description", "encoding", "shape", "unit", "frame")
_SIZED_FLOAT_NAMES = {"halffloat": "float16", "float": "float32", "double": "float64"}  # Arrow's names, sized


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
    dtype = str(_base_type(field.type))
    info = {"name": field.name, "dtype": _SIZED_FLOAT_NAMES.get(dtype, dtype), "nullable": field.nullable}
    for key in _KEYS:
        if key in metadata:
            info[key] = json.loads(metadata[key]) if key == "shape" else metadata[key]
    return info


def describe_schema(schema: pa.Schema) -> list[dict]:
    """`describe` of every column, in schema order."""
    return [describe(field) for field in schema]


def declared_shape(field: pa.Field) -> tuple[int | None, ...] | None:
    """The array shape a column declares (None: not an array column)."""
    shape = (field.metadata or {}).get(b"shape")
    return tuple(json.loads(shape)) if shape is not None else None


def declared_encoding(field: pa.Field) -> str | None:
    """What a column's bytes hold ("png", "npy"...), as declared; None when undeclared."""
    encoding = (field.metadata or {}).get(b"encoding")
    return encoding.decode() if encoding is not None else None


def numpy_dtype(field: pa.Field) -> np.dtype | None:
    """The numpy dtype of a numeric (or boolean) column's values, at any list depth; None for other columns."""
    base = _base_type(field.type)
    numeric = pa.types.is_integer(base) or pa.types.is_floating(base) or pa.types.is_boolean(base)
    return np.dtype(base.to_pandas_dtype()) if numeric else None


def _fits(actual: tuple[int, ...], declared: tuple[int | None, ...]) -> bool:
    return len(actual) == len(declared) and all(d is None or a == d for a, d in zip(actual, declared))


def _cell_array(cell, dtype: np.dtype | None) -> np.ndarray | None:
    if cell is None:
        return None
    array = np.asarray(cell)
    if dtype is None:
        return array
    return array.astype(dtype, casting="same_kind" if array.size else "unsafe")  # empty lists read as float64


def shaped_array(field: pa.Field, cells: Sequence) -> tuple[pa.Array, dict[int, str]]:
    """The Arrow array of an array column from its cells (numpy arrays or nested lists of the declared shape, or
    None), and {position: why} of the cells that do not fit (shape or dtype); those are null in the array.
    Numeric arrays are packed from one flat numpy buffer, not converted cell by cell."""
    shape = declared_shape(field)
    dtype = numpy_dtype(field)
    fixed_inner = all(size is not None for size in shape[1:])
    if dtype is not None and fixed_inner and (stacked := _uniform_cells(cells, shape, dtype)) is not None:
        lengths = np.full(len(cells), stacked.shape[1])
        return _pack(field.type, shape, stacked.reshape(-1), lengths, np.zeros(len(cells), bool)), {}
    arrays: list[np.ndarray | None] = []
    misfits: dict[int, str] = {}
    for position, cell in enumerate(cells):
        try:
            array = _cell_array(cell, dtype)
        except (TypeError, ValueError) as exc:  # ragged nesting, or a dtype that casts only with loss
            misfits[position] = f"column {field.name!r}: {exc}"
            array = None
        if array is not None and not _fits(array.shape, shape):
            misfits[position] = (f"column {field.name!r}: shape {array.shape} does not fit the schema's {shape} "
                                 "(None: any length)")
            array = None
        arrays.append(array)
    if dtype is None or not fixed_inner:  # strings, or ragged inside: Arrow converts the nested lists
        return pa.array([None if a is None else a.tolist() for a in arrays], type=field.type), misfits
    filler = np.zeros([0 if size is None else size for size in shape], dtype)  # a null row's slots
    filled = [filler if a is None else a for a in arrays]
    flat = np.concatenate([a.reshape(-1) for a in filled]) if filled else np.empty(0, dtype)
    lengths = np.array([len(a) for a in filled], dtype=np.int64)
    return _pack(field.type, shape, flat, lengths, np.array([a is None for a in arrays], bool)), misfits


def _uniform_cells(cells: Sequence, shape: tuple[int | None, ...], dtype: np.dtype) -> np.ndarray | None:
    """The cells stacked, when every one is a numpy array of the column's dtype and of one shape that fits (what
    stages usually give): packed without per-cell checks. None otherwise."""
    if not len(cells) or not isinstance(first := cells[0], np.ndarray) or first.dtype != dtype \
            or not _fits(first.shape, shape):
        return None
    if not all(type(cell) is np.ndarray and cell.shape == first.shape and cell.dtype == dtype for cell in cells):
        return None
    return np.stack(cells)


def _pack(arrow_type: pa.DataType, shape: tuple[int | None, ...], flat: np.ndarray, lengths: np.ndarray,
          null: np.ndarray) -> pa.Array:
    """Nested list arrays over one flat buffer: fixed-size levels inside, the outer level fixed or by offsets
    (`lengths`: each row's outer length)."""
    inner_types = []  # the list types below the outer one, outermost first
    inner = arrow_type.value_type
    for _ in shape[1:]:
        inner_types.append(inner)
        inner = inner.value_type
    values: pa.Array = pa.array(flat, type=inner)
    for level_type in reversed(inner_types):
        values = pa.FixedSizeListArray.from_arrays(values, type=level_type)
    mask = pa.array(null) if null.any() else None
    if shape[0] is not None:
        return pa.FixedSizeListArray.from_arrays(values, type=arrow_type, mask=mask)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=arrow_type, mask=mask)


def as_declared(field: pa.Field, cell) -> np.ndarray | None:
    """A stored cell as a numpy array of the column's dtype and declared shape. Reads versions written before
    shapes were declared too: their flat vectors are reshaped (a leading None: as many rows as the values fill)."""
    if cell is None:
        return None
    array = np.asarray(cell, dtype=numpy_dtype(field))
    shape = declared_shape(field)
    if shape is None or _fits(array.shape, shape):
        return array
    return array.reshape([-1 if size is None else size for size in shape])
