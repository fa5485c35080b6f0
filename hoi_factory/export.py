"""Exports of a published dataset version into the layouts other tools read (`hoi-factory datasets export`).

- `files`: every encoded cell as a file, `<column>/<shard>/<sample_id>.<ext>` (.png, .npy, .ply; .bin when the
  encoding is unknown), and `samples.jsonl`: one line per sample with the other columns, and each encoded column
  as its file's relative path (null where the cell is null). `rejects.jsonl`: the rejects (a reject's thumbnail
  as the path of `rejects/thumbnail/<shard>/<sample_id>.png`). Like img2dataset's
  "files" output (a folder per shard), with a folder per column above it, as a sample holds several images.
  Non-finite floats are written as NaN / Infinity, the extension of JSON that Python and pandas read. Arrays keep
  their shape (nested lists).
- `webdataset`: one tar per shard, `<shard>.tar`, holding `<sample_id>.<column>.<ext>` per encoded cell and
  `<sample_id>.json` with the other columns: WebDataset's convention (the key is the name up to the first dot,
  the rest the extension its decoders go by), which img2dataset's webdataset output follows too. Images stay
  the PNG bytes stored (no re-encoding to JPEG). Members carry mtime 0: a version exports to the same bytes.
- `hf`: a folder `datasets.load_dataset(DEST)` reads: the shards' Parquet files as they are (so their sha256 is the
  manifest's) and a dataset card (hoi_factory.card) naming the image columns.

`files` and `webdataset` also get `columns.json`: each column's dtype, shape, encoding, unit, frame and
description, as the manifest's `column_metadata` (hf: the Parquet files carry them as field metadata).

Every shard is verified against the manifest as it is read. Each export ends with `SHA256SUMS` (`sha256sum -c`
format) over the files written, written last, which `verify_export` checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import fsspec

from hoi_factory.card import card_text
from hoi_factory.columns import describe_schema
from hoi_factory.datasets import DatasetVersion, shard_name
from hoi_factory.storage import StoreError

FORMATS = ("files", "webdataset", "hf")
EXTENSIONS = {"png": "png", "png-mask": "png", "jpeg": "jpg", "npy": "npy", "ply": "ply", "json": "json",
              "safetensors": "safetensors", "bytes": "bin"}
COLUMNS_FILE = "columns.json"  # files and webdataset: what each column holds (hoi_factory.columns.describe_schema)
CHECKSUMS = "SHA256SUMS"


class ExportError(StoreError):
    """An export that cannot be made as asked: unknown format, a destination that already holds files."""


@dataclass
class ExportResult:
    dest: str
    format: str
    samples: int
    rejects: int
    files: int  # written, SHA256SUMS not counted


class _Output:
    """Files under one destination folder (any fsspec URL), each one's sha256 remembered for SHA256SUMS."""

    def __init__(self, dest: str, storage_options: dict[str, Any] | None):
        self.fs, self.root = fsspec.core.url_to_fs(dest, **(storage_options or {}))
        if self.fs.exists(self.root) and self.fs.ls(self.root):
            raise ExportError(f"{dest} already holds files: export into a new or empty folder")
        self.sums: dict[str, str] = {}

    def write(self, relative: str, data: bytes) -> str:
        path = posixpath.join(self.root, relative)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.fs.pipe_file(path, data)
        self.sums[relative] = hashlib.sha256(data).hexdigest()
        return relative

    @contextmanager
    def appending(self, relative: str) -> Iterator[Callable[[bytes], None]]:
        """A file written piece by piece (a JSONL of any length), hashed on the way."""
        path = posixpath.join(self.root, relative)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        digest = hashlib.sha256()
        with self.fs.open(path, "wb") as handle:
            def append(data: bytes) -> None:
                digest.update(data)
                handle.write(data)

            yield append
        self.sums[relative] = digest.hexdigest()

    def finish(self) -> int:
        """SHA256SUMS last: a folder without it is an unfinished export."""
        lines = "".join(f"{digest}  {relative}\n" for relative, digest in sorted(self.sums.items()))
        self.fs.pipe_file(posixpath.join(self.root, CHECKSUMS), lines.encode())
        return len(self.sums)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()


def _split_row(row: dict, encodings: dict[str, str]) -> tuple[dict, dict[str, tuple[bytes, str]]]:
    """(the plain columns, {encoded column: (bytes, extension)}) of a row; null cells stay with the plain ones."""
    plain, encoded = {}, {}
    for name, value in row.items():
        if name in encodings and value is not None:
            encoded[name] = (value, EXTENSIONS[encodings[name]])
        else:
            plain[name] = value
    return plain, encoded


def _export_files(version: DatasetVersion, out: _Output, encodings: dict[str, str]) -> None:
    with out.appending("samples.jsonl") as append:
        for index, shard in enumerate(version.shards):
            lines = []
            for row in version.read_shard(index).to_pylist():
                plain, encoded = _split_row(row, encodings)
                for name, (data, extension) in encoded.items():
                    plain[name] = out.write(f"{name}/{shard_name(shard.index)}/{row['sample_id']}.{extension}", data)
                lines.append(plain)
            append(_jsonl(lines))


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _export_webdataset(version: DatasetVersion, out: _Output, encodings: dict[str, str]) -> None:
    for index, shard in enumerate(version.shards):
        if not shard.rows:
            continue
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for row in version.read_shard(index).to_pylist():
                key = row["sample_id"]  # hex: no dot, so WebDataset's key is the whole id
                plain, encoded = _split_row(row, encodings)
                for name, (data, extension) in encoded.items():
                    _tar_member(tar, f"{key}.{name}.{extension}", data)
                _tar_member(tar, f"{key}.json", json.dumps(plain, sort_keys=True).encode())
        out.write(f"{shard_name(shard.index)}.tar", buffer.getvalue())


def _export_hf(version: DatasetVersion, out: _Output, encodings: dict[str, str], dest: str) -> None:
    for index, shard in enumerate(version.shards):
        out.write(shard.file, version.shard_bytes(index))
        out.write(shard.rejects_file, version.shard_bytes(index, rejects=True))
    out.write("README.md", card_text(version, version.schema(), encodings, location=dest).encode())


def export_version(version: DatasetVersion, dest: str, format: str,
                   storage_options: dict[str, Any] | None = None) -> ExportResult:
    """Export `version` into the new folder `dest` (a path or URL) in `format` (one of FORMATS)."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    out = _Output(dest, storage_options)
    encodings = version.encodings()
    if format == "files":
        _export_files(version, out, encodings)
    elif format == "webdataset":
        _export_webdataset(version, out, encodings)
    else:
        _export_hf(version, out, encodings, dest)
    if format != "hf":  # hf's rejects are its `rejects` config, its columns described by the Parquet files
        out.write(COLUMNS_FILE, json.dumps(describe_schema(version.schema()), indent=1).encode())
        with out.appending("rejects.jsonl") as append:
            for index, shard in enumerate(version.shards):
                lines = []
                for row in version.read_rejects(index).to_pylist():
                    plain, thumbnail = _split_row(row, {"thumbnail": "png"})
                    if thumbnail:  # beside the rejects, as the samples' images: rejects/thumbnail/<shard>/<id>.png
                        plain["thumbnail"] = out.write(
                            f"rejects/thumbnail/{shard_name(shard.index)}/{row['sample_id']}.png", row["thumbnail"])
                    lines.append(plain)
                append(_jsonl(lines))
    files = out.finish()
    return ExportResult(dest, format, version.manifest.num_samples, version.manifest.num_rejects, files)


def verify_export(dest: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Every problem with an export, each a line: no SHA256SUMS (unfinished), a file missing or changed."""
    fs, root = fsspec.core.url_to_fs(dest, **(storage_options or {}))
    try:
        listing = fs.cat_file(posixpath.join(root, CHECKSUMS)).decode()
    except FileNotFoundError:
        return [f"{CHECKSUMS}: missing (an unfinished export)"]
    problems = []
    for line in listing.splitlines():
        digest, relative = line.split("  ", 1)
        try:
            data = fs.cat_file(posixpath.join(root, relative))
        except FileNotFoundError:
            problems.append(f"{relative}: missing")
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"{relative}: checksum mismatch")
    return problems

