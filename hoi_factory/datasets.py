"""The dataset store: versioned, immutable Parquet datasets with rejects, lineage and checksums.

    <store>/datasets/<name>/<version>/
        data/part-00000.parquet        samples (images as PNG bytes, arrays as list columns of their declared
                                       shape; every column described in its field metadata: hoi_factory.columns)
        rejects/part-00000.parquet     sample_id, input_id, stage, reason, detail
        _completions/part-00000.json   a shard's record, written after its files (resume skips these shards)
        report/...                     pictures of the run (sample grid, funnel)
        shards.parquet                 the shard index: one row per shard (files, checksums, counts, funnel)
        README.md                      the dataset card (hoi_factory.card): `datasets.load_dataset(<folder>)` reads it
        manifest.json                  written last: the commit point (lists the card's sha256)
    <store>/datasets/<name>/latest.json
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, model_validator

from hoi_factory.columns import column, declared_encoding, declared_shape, describe_schema, shaped_array
from hoi_factory.stage import Reject
from hoi_factory.storage import Store, StoreError
from hoi_factory.versions import DEFAULT_LEASE_TTL, Lease, VersionedArea, VersionedStore

SCHEMA_VERSION = 4  # 4: columns described (field metadata, `column_metadata`), arrays stored with their shape
AREA = "datasets"
ID_FIELDS = [  # the columns every dataset has, before the pipeline's
    column("sample_id", pa.string(), "deterministic id: a hash of the config, the input id and the index"),
    column("input_id", pa.string(), "the input (file, parent sample...) the sample was made from"),
    column("seed", pa.int64(), "the sample's random seed, a function of the same three"),
]
ID_NAMES = frozenset(field.name for field in ID_FIELDS)
REJECTS_SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("input_id", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
     ("detail", pa.string()), ("kind", pa.string()),  # kind: "reject" (a stage's decision) or "error"
     ("thumbnail", pa.binary())]  # PNG of what a stage rejected (null: the stage keeps none; errors)
)


# Leading bytes of the encodings pipelines store in binary columns (hoi_factory.codec writes PNG and .npy).
MAGIC_BYTES = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff", "npy": b"\x93NUMPY", "ply": b"ply\n"}
IMAGE_ENCODINGS = frozenset({"png", "png-mask", "jpeg"})
CARD = "README.md"


def encoding_of(value: bytes) -> str:
    """What a binary cell holds, from its leading bytes: a MAGIC_BYTES name, or "bytes" when unknown."""
    return next((name for name, magic in MAGIC_BYTES.items() if value.startswith(magic)), "bytes")


class CorruptShard(StoreError):
    """A shard whose bytes do not match the manifest (size or checksum): never read as data."""


class ShardRecord(BaseModel):
    index: int  # plan position of the shard's first item
    file: str
    rows: int
    sha256: str
    bytes: int = 0
    rejects_file: str
    rejects: int  # rows in rejects_file: decisions and errors
    rejects_sha256: str
    rejects_bytes: int = 0
    inputs: int
    errors: int = 0  # samples a stage failed on with an exception (in `rejects_file` with kind "error")
    first_errors: list[dict] = Field(default_factory=list)  # a few of them, with their tracebacks
    stages: dict[str, dict] = Field(default_factory=dict)
    worker: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    fingerprint: str = ""

    @property
    def covers(self) -> range:
        """The plan positions of the items this shard was made from."""
        return range(self.index, self.index + self.inputs)


def coverage_problems(spans: Iterable[tuple[int, int]], num_inputs: int) -> list[str]:
    """Shards, as (first plan position, inputs) pairs, must cover the plan's positions exactly once: a gap loses
    samples, an overlap doubles them."""
    problems = []
    position = 0
    for start, inputs in sorted(spans):
        if start != position:
            problems.append(f"plan positions {min(position, start)}-{max(position, start)} "
                            f"{'covered twice' if start < position else 'covered by no shard'}")
        position = max(position, start + inputs)
    if position != num_inputs:
        problems.append(f"shards cover {position} of {num_inputs} inputs")
    return problems


SHARD_INDEX = "shards.parquet"
_JSON_FIELDS = ("first_errors", "stages", "worker")  # nested parts of a ShardRecord, stored as JSON text
SHARD_INDEX_SCHEMA = pa.schema([
    (name, pa.string() if name in _JSON_FIELDS or annotation is str else
     pa.float64() if annotation is float else pa.int64())
    for name, annotation in ((n, f.annotation) for n, f in ShardRecord.model_fields.items())
])


class ShardLedger:
    """The driver's account of a version's finished shards, compact whatever the sample count: records are packed
    into Arrow batches as they arrive (a few hundred bytes each), sample totals and the funnel are summed on the
    way. `table()` is the shard index the version publishes as `shards.parquet`."""

    BATCH = 4096

    def __init__(self):
        self._pending: list[dict] = []
        self._batches: list[pa.RecordBatch] = []
        self.spans: list[tuple[int, int]] = []  # (first plan position, inputs) of each shard
        self.inputs = self.samples = self.rejects = self.errors = 0
        self.first_errors: list[dict] = []
        self._stage_order: list[str] = []
        self._stage_totals: dict[str, Counter] = {}
        self.reasons: Counter = Counter()

    def __len__(self) -> int:
        return len(self.spans)

    @classmethod
    def of(cls, records: Iterable[ShardRecord]) -> ShardLedger:
        ledger = cls()
        for record in records:
            ledger.add(record)
        return ledger

    def add(self, record: ShardRecord) -> None:
        self.spans.append((record.index, record.inputs))
        self.inputs += record.inputs
        self.samples += record.rows
        self.rejects += record.rejects - record.errors
        self.errors += record.errors
        if len(self.first_errors) < 10:
            self.first_errors += record.first_errors[: 10 - len(self.first_errors)]
        for stage, stats in record.stages.items():
            if stage not in self._stage_totals:
                self._stage_order.append(stage)
                self._stage_totals[stage] = Counter()
            self._stage_totals[stage].update({"rows_in": stats["rows_in"], "rows_out": stats["rows_out"],
                                              "errors": stats.get("errors", 0), "seconds": stats["seconds"]})
            for reason, count in stats["rejected"].items():
                self.reasons[f"{stage}: {reason}"] += count
        row = record.model_dump()
        self._pending.append({k: json.dumps(v) if k in _JSON_FIELDS else v for k, v in row.items()})
        if len(self._pending) >= self.BATCH:
            self._pack()

    def _pack(self) -> None:
        if self._pending:
            self._batches.append(pa.RecordBatch.from_pylist(self._pending, schema=SHARD_INDEX_SCHEMA))
            self._pending = []

    def funnel(self, num_inputs: int) -> list[dict]:
        """Per-stage rows in/out summed over the shards, in stage order, behind the plan's inputs."""
        steps = [{"stage": "inputs", "rows_out": num_inputs}]
        for stage in self._stage_order:
            totals = self._stage_totals[stage]
            steps.append({"stage": stage, "rows_in": totals["rows_in"], "rows_out": totals["rows_out"],
                          "errors": totals["errors"], "seconds": round(totals["seconds"], 3)})
        return steps

    def table(self) -> pa.Table:
        """The shard index: one row per shard, in plan order."""
        self._pack()
        return pa.Table.from_batches(self._batches, schema=SHARD_INDEX_SCHEMA).sort_by("index")


def shard_records(index: pa.Table) -> list[ShardRecord]:
    """The ShardRecords of a shard index table (see ShardLedger)."""
    return [ShardRecord.model_validate({k: json.loads(v) if k in _JSON_FIELDS else v for k, v in row.items()})
            for batch in index.to_batches() for row in batch.to_pylist()]


class DatasetManifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    created: str
    pipeline: str
    config: dict
    config_hash: str
    fingerprint: str
    code_version: str
    parents: list[str] = Field(default_factory=list)
    num_inputs: int
    num_samples: int
    num_rejects: int
    num_errors: int = 0
    errors: list[dict] = Field(default_factory=list)  # the first errors, with their tracebacks
    code: dict[str, str] = Field(default_factory=dict)  # package version, pipeline source hash, git commit
    columns: dict[str, str]
    column_metadata: list[dict] = Field(default_factory=list)  # hoi_factory.columns.describe_schema of the samples
    num_shards: int = 0
    shard_index: dict[str, Any] = Field(default_factory=dict)  # file, sha256, bytes of shards.parquet
    shards: list[ShardRecord] = Field(default_factory=list)  # inline: versions published before the shard index
    funnel: list[dict]
    reject_reasons: dict[str, int]
    report: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float | None] = Field(default_factory=dict)  # the pipeline's figures of the version
    run: dict[str, Any] = Field(default_factory=dict)
    card_sha256: str = ""  # of README.md, the dataset card; "" for versions published before cards

    @model_validator(mode="after")
    def _count_inline_shards(self) -> DatasetManifest:
        if self.shards and not self.num_shards:
            self.num_shards = len(self.shards)
        return self

    def problems(self, spans: Iterable[tuple[int, int]], rows: int) -> list[str]:
        """What does not add up, given the shards' (first plan position, inputs) spans and their row total: every
        input a sample, a reject or an error, once; shard rows the sample count."""
        problems = [f"manifest: {p}" for p in coverage_problems(spans, self.num_inputs)]
        if rows != self.num_samples:
            problems.append("manifest: shard rows do not add up to num_samples")
        if self.num_inputs != self.num_samples + self.num_rejects + self.num_errors:
            problems.append(f"manifest: {self.num_inputs} inputs but {self.num_samples} samples + "
                            f"{self.num_rejects} rejects + {self.num_errors} errors")
        return problems


def type_name(arrow_type: pa.DataType) -> str:
    """A type's name without list item field names, which Parquet renames ('item' is read back as 'element')."""
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"list<{type_name(arrow_type.value_type)}>"
    if pa.types.is_fixed_size_list(arrow_type):
        return f"fixed_size_list<{type_name(arrow_type.value_type)}>[{arrow_type.list_size}]"
    if pa.types.is_struct(arrow_type):
        return "struct<" + ", ".join(f"{f.name}: {type_name(f.type)}" for f in arrow_type) + ">"
    return str(arrow_type)


def column_types(schema: pa.Schema) -> dict[str, str]:
    return {field.name: type_name(field.type) for field in schema}


def shard_name(index: int) -> str:
    """By the plan position of the shard's first item (zero-padded so names sort in plan order)."""
    return f"part-{index:09d}"


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def full_schema(schema: pa.Schema) -> pa.Schema:
    """The pipeline's columns behind the id columns every dataset has."""
    return pa.schema(ID_FIELDS + [f for f in schema if f.name not in ID_NAMES])


MISFIT = "output does not fit the dataset schema"


def _plain_table(rows: list[dict], schema: pa.Schema) -> tuple[pa.Table, dict[int, str]]:
    """The columns Arrow converts from Python values (not shaped arrays), and {position: why} of rows it refuses
    (their cells are null in the table)."""
    try:
        return pa.Table.from_pylist(rows, schema=schema), {}
    except (pa.ArrowException, TypeError, ValueError):
        misfits = {}
        for position, row in enumerate(rows):
            for field in schema:
                try:
                    pa.array([row.get(field.name)], type=field.type)
                except (pa.ArrowException, TypeError, ValueError) as exc:
                    misfits[position] = f"column {field.name!r}: {exc}"
                    break
        fitting = [{} if position in misfits else row for position, row in enumerate(rows)]
        return pa.Table.from_pylist(fitting, schema=schema), misfits


def rows_to_table(rows: list[dict], schema: pa.Schema) -> tuple[pa.Table, list[Reject]]:
    """Rows -> a table of `schema`; a row that does not fit is rejected rather than failing the shard. Array columns
    (a declared shape) take numpy arrays or nested lists of that shape; a null in a non-nullable column, a wrong
    shape or a lossy dtype is a misfit, named with its column."""
    shaped = {field.name for field in schema if declared_shape(field) is not None}
    plain, misfits = _plain_table(rows, pa.schema([f for f in schema if f.name not in shaped]))
    columns = []
    for field in schema:
        if field.name not in shaped:
            array = plain.column(field.name).combine_chunks()
        else:
            array, shape_misfits = shaped_array(field, [row.get(field.name) for row in rows])
            for position, why in shape_misfits.items():
                misfits.setdefault(position, why)
        if not field.nullable and array.null_count:
            for position in np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)):
                misfits.setdefault(int(position), f"column {field.name!r} is absent (null) but may not be")
        columns.append(array)
    table = pa.Table.from_arrays(columns, schema=schema)
    if not misfits:
        return table, []
    keep = np.ones(len(rows), dtype=bool)
    keep[list(misfits)] = False
    rejects = [Reject.of(rows[position], MISFIT, why) for position, why in sorted(misfits.items())]
    return table.filter(pa.array(keep)), rejects


def _rows_with_non_finite(column: pa.ChunkedArray) -> np.ndarray:
    """Indices of rows whose floats (at any list depth) include NaN or infinity."""
    values = column.combine_chunks()
    levels = []  # the list arrays above the floats, outermost first
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) \
            or pa.types.is_fixed_size_list(values.type):
        levels.append(values)
        values = pc.list_flatten(values)
    if not pa.types.is_floating(values.type) or len(values) == 0:
        return np.empty(0, dtype=int)
    finite = pc.fill_null(pc.is_finite(values), True)
    if pc.all(finite).as_py():  # the usual case: no need to trace values back to their rows
        return np.empty(0, dtype=int)
    rows = np.arange(len(column))
    for level in levels:
        rows = rows[pc.list_parent_indices(level).to_numpy()]
    return np.unique(rows[~finite.to_numpy(zero_copy_only=False)])


def drop_non_finite(table: pa.Table, allowed: frozenset[str] = frozenset()) -> tuple[pa.Table, list[Reject]]:
    """Reject rows holding NaN or infinity in float columns (except `allowed` ones): a dataset never carries
    them silently."""
    bad: dict[int, list[str]] = {}
    for name in table.column_names:
        if name not in allowed:
            for row in _rows_with_non_finite(table.column(name)):
                bad.setdefault(int(row), []).append(name)
    if not bad:
        return table, []
    ids = table.select(["sample_id", "input_id"]).to_pylist()
    rejects = [Reject.of(ids[row], "non-finite values", ", ".join(columns)) for row, columns in sorted(bad.items())]
    keep = np.ones(table.num_rows, dtype=bool)
    keep[list(bad)] = False
    return table.filter(pa.array(keep)), rejects


class ShardSink:
    """Writes one version's shards; small and picklable, so workers write their shards themselves."""

    def __init__(self, store: Store, name: str, version: str, schema: pa.Schema, fingerprint: str):
        self.store = store
        self.name = name
        self.version = version
        self.schema = full_schema(schema)
        self.fingerprint = fingerprint  # of the run writing: records of any other run are never reused

    def parts(self, *more: str) -> tuple[str, ...]:
        return (AREA, self.name, self.version, *more)

    def done_shards(self) -> dict[int, ShardRecord]:
        """Shards this run (or an interrupted run of the same config and inputs) already finished."""
        records = {}
        for file in self.store.list_files(*self.parts("_completions")):
            if file.endswith(".json"):
                record = ShardRecord.model_validate(self.store.read_json(*self.parts("_completions", file)))
                if record.fingerprint == self.fingerprint and not record.errors:  # errored shards are redone
                    records[record.index] = record
        return records

    def write(self, index: int, table: pa.Table, rejects: pa.Table, inputs: int, stages: dict, worker: dict,
              seconds: float = 0.0, errors: int = 0, first_errors: list[dict] | None = None) -> ShardRecord:
        """Shard data, then rejects, then the completion record: a shard without its record is redone."""
        name = shard_name(index)
        data = _parquet_bytes(table.cast(self.schema))
        reject_data = _parquet_bytes(rejects.cast(REJECTS_SCHEMA))
        self.store.write_bytes(data, *self.parts("data", f"{name}.parquet"))
        self.store.write_bytes(reject_data, *self.parts("rejects", f"{name}.parquet"))
        record = ShardRecord(
            index=index, file=f"data/{name}.parquet", rows=table.num_rows, sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data), rejects_file=f"rejects/{name}.parquet", rejects=rejects.num_rows,
            rejects_sha256=hashlib.sha256(reject_data).hexdigest(), rejects_bytes=len(reject_data), inputs=inputs,
            errors=errors, first_errors=first_errors or [], stages=stages, worker=worker,
            seconds=round(seconds, 4), fingerprint=self.fingerprint,
        )
        self.store.write_json(record.model_dump(), *self.parts("_completions", f"{name}.json"))
        return record


class DatasetVersion:
    """A published version, opened for reading."""

    def __init__(self, store: Store, manifest: DatasetManifest):
        self.store = store
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self._shards: list[ShardRecord] | None = None

    @property
    def shards(self) -> list[ShardRecord]:
        """The shard records, in plan order: from the shard index (`shards.parquet`, verified against the
        manifest; read once) or, for versions published before it, the manifest itself."""
        if self._shards is None:
            index = self.manifest.shard_index
            self._shards = self.manifest.shards if not index else shard_records(pq.read_table(io.BytesIO(
                self._verified_bytes(index["file"], index["bytes"], index["sha256"]))))
        return self._shards

    def __repr__(self) -> str:
        return f"DatasetVersion({self.name}/{self.version}, {self.manifest.num_samples} samples)"

    def __len__(self) -> int:
        return self.manifest.num_samples

    @property
    def ref(self) -> str:
        """`name/version`, the form lineage uses."""
        return f"{self.name}/{self.version}"

    @property
    def url(self) -> str:
        return self.store.full_url(AREA, self.name, self.version)

    def _path(self, file: str) -> str:
        return self.store.path(AREA, self.name, self.version, file)

    def shard_urls(self) -> list[str]:
        return [self.store.full_url(AREA, self.name, self.version, s.file) for s in self.shards]

    def _verified_bytes(self, file: str, size: int, sha256: str) -> bytes:
        """A shard file's bytes, checked against the manifest before anything reads them as data."""
        data = self.store.read_bytes(AREA, self.name, self.version, file)
        where = self.store.full_url(AREA, self.name, self.version, file)
        if size and len(data) != size:
            raise CorruptShard(f"{where}: {len(data)} bytes, the manifest says {size}")
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CorruptShard(f"{where}: checksum mismatch (the manifest says sha256 {sha256[:12]}…)")
        return data

    def shard_bytes(self, index: int, rejects: bool = False) -> bytes:
        """The Parquet bytes of shard `index` (or of its rejects), verified against the manifest."""
        shard = self.shards[index]
        if rejects:
            return self._verified_bytes(shard.rejects_file, shard.rejects_bytes, shard.rejects_sha256)
        return self._verified_bytes(shard.file, shard.bytes, shard.sha256)

    def read_shard(self, index: int, columns: list[str] | None = None) -> pa.Table:
        """Shard `index` (its position in the manifest's list), verified against the manifest."""
        return pq.read_table(io.BytesIO(self.shard_bytes(index)), columns=columns)

    def read_rejects(self, index: int) -> pa.Table:
        return pq.read_table(io.BytesIO(self.shard_bytes(index, rejects=True)))

    def schema(self) -> pa.Schema:
        """The samples' Arrow schema, as the shards hold it (the id columns, then the pipeline's)."""
        return pq.read_schema(io.BytesIO(self.shard_bytes(0))) if self.shards else full_schema(pa.schema([]))

    def encodings(self) -> dict[str, str]:
        """Binary column -> what its cells hold ("png", "png-mask", "npy", "ply"... or "bytes": unknown or mixed):
        as the column declares it, or, for versions written before declarations, judged from the first shard with
        samples (a pipeline writes one encoding per column)."""
        schema = self.schema()
        binary = [f for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        encodings = {f.name: declared_encoding(f) for f in binary if declared_encoding(f)}
        undeclared = [f.name for f in binary if f.name not in encodings]
        sample = next((self.read_shard(i, undeclared) for i, s in enumerate(self.shards) if s.rows), None) \
            if undeclared else None
        for name in undeclared:
            found = {encoding_of(v) for v in sample.column(name).to_pylist() if v is not None} \
                if sample is not None else set()
            encodings[name] = found.pop() if len(found) == 1 else "bytes"
        return encodings

    def to_arrow(self, columns: list[str] | None = None) -> pa.Table:
        tables = [self.read_shard(i, columns) for i in range(len(self.shards))]
        return pa.concat_tables(tables) if tables else full_schema(pa.schema([])).empty_table()

    def column_means(self, columns: list[str]) -> dict[str, float]:
        """`mean_<column>` over the finite values of float columns (NaN where none is finite)."""
        table = self.to_arrow(list(columns))
        means = {}
        for name in columns:
            values = np.array(table.column(name).to_pylist(), dtype=float)
            values = values[np.isfinite(values)]
            means[f"mean_{name}"] = float(values.mean()) if len(values) else math.nan
        return means

    def content_digest(self) -> str:
        """sha256 of the rows and rejects, in sample order, independent of how the work was cut into shards and of
        the Parquet writer: two runs that made the same data have the same digest."""
        digest = hashlib.sha256()
        for table in (self.to_arrow(), self.rejects()):
            keys = [key for key in ("sample_id", "stage") if key in table.schema.names]
            table = table.sort_by([(key, "ascending") for key in keys])
            for name in sorted(table.schema.names):
                digest.update(name.encode())
                for value in table.column(name).to_pylist():
                    digest.update(repr(value).encode())
        return digest.hexdigest()

    def to_pandas(self, columns: list[str] | None = None):
        return self.to_arrow(columns).to_pandas()

    def rejects(self) -> pa.Table:
        tables = [self.read_rejects(i) for i in range(len(self.shards))]
        return pa.concat_tables(tables) if tables else REJECTS_SCHEMA.empty_table()

    def to_ray(self):
        import ray.data

        paths = [self._path(s.file) for s in self.shards]
        return ray.data.read_parquet(paths, filesystem=pa.fs.PyFileSystem(pa.fs.FSSpecHandler(self.store.fs)))

    def to_torch(self, columns: list[str] | None = None, transform: Callable[[dict], Any] | None = None):
        """Random access (index -> row). For training epochs use `to_torch_stream`: a DataLoader shuffling this
        one re-reads a shard for almost every sample. `transform=hoi_factory.torch_views.decode_row` decodes."""
        from hoi_factory.torch_views import ParquetTorchDataset

        return ParquetTorchDataset(self, columns, transform)

    def to_torch_stream(self, columns: list[str] | None = None, shuffle: bool = False, seed: int = 0,
                        buffer_size: int = 1000, decode: bool = True, transform: Callable[[dict], Any] | None = None,
                        rank: int | None = None, world_size: int | None = None):
        """An IterableDataset reading each shard once per epoch, split by DataLoader worker and DDP rank, shuffled
        by shard order and a buffer, cells decoded to tensors (see hoi_factory.torch_views.ShardStream)."""
        from hoi_factory.torch_views import ShardStream

        return ShardStream(self, columns, shuffle=shuffle, seed=seed, buffer_size=buffer_size, decode=decode,
                           transform=transform, rank=rank, world_size=world_size)

    def validate(self) -> list[str]:
        """Every problem found, each a line: missing, resized or changed shards, row counts, schema drift, shard
        files the manifest does not list, coverage of the plan and the sample accounting."""
        problems = []
        manifest = self.manifest
        try:
            shards = self.shards
        except StoreError as exc:  # CorruptShard included: the index itself is damaged
            return [str(exc).replace(self.url + "/", "") if isinstance(exc, CorruptShard)
                    else f"{manifest.shard_index['file']}: missing"]
        files = [(shard, file, size, digest) for shard in shards
                 for file, size, digest in ((shard.file, shard.bytes, shard.sha256),
                                            (shard.rejects_file, shard.rejects_bytes, shard.rejects_sha256))]
        if manifest.card_sha256:  # size 0: the manifest records only the card's checksum
            files.append((None, CARD, 0, manifest.card_sha256))
        for shard, file, size, digest in files:
            try:
                data = self._verified_bytes(file, size, digest)
            except CorruptShard as exc:
                problems.append(str(exc).replace(self.url + "/", ""))
                continue
            except StoreError:
                problems.append(f"{file}: missing")
                continue
            if shard is not None and file == shard.file:
                table = pq.read_table(io.BytesIO(data))
                if table.num_rows != shard.rows:
                    problems.append(f"{file}: {table.num_rows} rows, manifest says {shard.rows}")
                columns = column_types(table.schema)
                if columns != manifest.columns:
                    problems.append(f"{file}: columns {columns} differ from the manifest's {manifest.columns}")
        listed = {s.file.split("/")[-1] for s in shards}
        for file in self.store.list_files(AREA, self.name, self.version, "data"):
            if file not in listed:
                problems.append(f"data/{file}: a shard file the manifest does not list")
        return problems + manifest.problems([(s.index, s.inputs) for s in shards], sum(s.rows for s in shards))


class DatasetWriter:
    """The driver's side of writing a version: holds the lease, knows finished shards, commits."""

    def __init__(self, area: VersionedArea, lease: Lease, schema: pa.Schema):
        self.area = area
        self.lease = lease
        self.sink = ShardSink(area.store, lease.name, lease.version, schema, lease.fingerprint)

    def commit(self, ledger: ShardLedger,
               before_manifest: Callable[[DatasetVersion], dict[str, str]] | None = None, **fields) -> DatasetVersion:
        """Write the shard index, the report (`before_manifest`), the card, then the manifest (last), and move
        `latest`. The manifest stays small whatever the sample count: the shards are listed in the index."""
        index = ledger.table()
        self._remove_unlisted_shards(index.column("index").to_pylist())
        manifest = DatasetManifest(
            name=self.lease.name, version=self.lease.version, created=datetime.now(timezone.utc).isoformat(),
            fingerprint=self.lease.fingerprint, num_samples=ledger.samples, num_rejects=ledger.rejects,
            num_errors=ledger.errors, errors=ledger.first_errors, columns=column_types(self.sink.schema),
            column_metadata=describe_schema(self.sink.schema),
            num_shards=len(ledger), funnel=ledger.funnel(fields["num_inputs"]), reject_reasons=dict(ledger.reasons),
            **fields,
        )
        if problems := manifest.problems(ledger.spans, ledger.samples):  # a lost or doubled sample is never published
            raise RuntimeError(f"{self.lease.name}/{self.lease.version}: {'; '.join(problems)}: not publishing")
        data = _parquet_bytes(index)
        self.sink.store.write_bytes(data, *self.sink.parts(SHARD_INDEX))
        manifest.shard_index = {"file": SHARD_INDEX, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        version = DatasetVersion(self.area.store, manifest)
        if before_manifest:
            manifest.report = before_manifest(version)
        from hoi_factory.card import write_card  # the card module reads versions: imported here, not at the top

        manifest.card_sha256 = write_card(version, self.sink.schema)  # last before the manifest: it describes it
        self.area.publish(self.lease, manifest.model_dump())
        return version


    def _remove_unlisted_shards(self, indices: Iterable[int]) -> None:
        """Files of shards an interrupted attempt cut differently (or that failed): not part of this version."""
        listed = {shard_name(index) for index in indices}
        for folder in ("data", "rejects", "_completions"):
            for file in self.sink.store.list_files(*self.sink.parts(folder)):
                if file.rsplit(".", 1)[0] not in listed:
                    self.sink.store.remove(*self.sink.parts(folder, file))


class DatasetStore(VersionedStore[DatasetVersion]):
    """List, open and write dataset versions in a store."""

    area_name = AREA
    manifest_class = DatasetManifest
    version_class = DatasetVersion

    def begin(self, name: str, version: str, fingerprint: str, schema: pa.Schema,
              ttl: float = DEFAULT_LEASE_TTL) -> DatasetWriter:
        return DatasetWriter(self.area, self.area.acquire(name, version, fingerprint, ttl), schema)
