"""Exports (files + JSONL, WebDataset tars, Hugging Face folder) read back by other tools equal the source rows;
shards are verified on the way out and SHA256SUMS on the way back in."""

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before `datasets` reads it: local folders only, never the hub

import datasets
import fsspec
import numpy as np
import pytest
import webdataset
from typer.testing import CliRunner

from flows.cli import app
from hoi_factory.codec import decode_image
from hoi_factory.config import Settings
from hoi_factory.datasets import CorruptShard
from hoi_factory.export import CHECKSUMS, COLUMNS_FILE, ExportError, export_version, verify_export
from support.encoded_pipeline import make_encoded_version

ENCODED = {"image": "png", "mask": "png", "depth": "npy", "overlay": "png"}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    return make_encoded_version(str(tmp_path_factory.mktemp("store")), count=14, shard_size=4)


def source_rows(version) -> dict[str, dict]:
    return {row["sample_id"]: row for row in version.to_arrow().to_pylist()}


def test_files_export_round_trip(encoded, tmp_path):
    dest = tmp_path / "files"
    result = export_version(encoded, str(dest), "files")
    assert verify_export(str(dest)) == []
    subprocess.run(["sha256sum", "--check", "--quiet", CHECKSUMS], cwd=dest, check=True)  # coreutils agrees
    source = source_rows(encoded)
    lines = [json.loads(line) for line in (dest / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == result.samples == len(source) == 10
    for line in lines:
        row = dict(line)
        for column, extension in ENCODED.items():
            if line[column] is not None:
                assert line[column].startswith(f"{column}/") and line[column].endswith(f".{extension}")
                row[column] = (dest / line[column]).read_bytes()
        assert row == source[line["sample_id"]]
        assert np.shape(line["K"]) == (3, 3)  # arrays keep their shape
    columns = {c["name"]: c for c in json.loads((dest / COLUMNS_FILE).read_text())}
    assert list(columns) == encoded.schema().names
    assert columns == {c["name"]: c for c in encoded.manifest.column_metadata}
    assert columns["K"]["shape"] == [3, 3] and columns["mask"]["encoding"] == "png-mask"
    assert sum(1 for path in dest.rglob("*") if path.is_file()) == result.files + 1  # + SHA256SUMS
    rejects = [json.loads(line) for line in (dest / "rejects.jsonl").read_text().splitlines()]
    assert rejects == encoded.rejects().to_pylist() and len(rejects) == 4


def test_webdataset_export_is_read_by_webdataset(encoded, tmp_path):
    dest = tmp_path / "wds"
    export_version(encoded, str(dest), "webdataset")
    assert verify_export(str(dest)) == []
    tars = sorted(str(p) for p in dest.glob("*.tar"))
    assert len(tars) == sum(1 for s in encoded.shards if s.rows)
    source = source_rows(encoded)
    seen = []
    for sample in webdataset.WebDataset(tars, shardshuffle=False, empty_check=False):
        row = json.loads(sample["json"])
        for column, extension in ENCODED.items():
            row[column] = sample.get(f"{column}.{extension}")
        assert row == source[sample["__key__"]]
        seen.append(sample["__key__"])
    assert sorted(seen) == sorted(source)

    decoded = next(iter(webdataset.WebDataset(tars[:1], shardshuffle=False).decode("rgb8")))
    np.testing.assert_array_equal(decoded["image.png"], decode_image(source[decoded["__key__"]]["image"]))

    again = tmp_path / "wds-again"  # the same version exports to the same bytes
    export_version(encoded, str(again), "webdataset")
    assert (again / CHECKSUMS).read_bytes() == (dest / CHECKSUMS).read_bytes()


def test_webdataset_members_follow_the_key_dot_extension_convention(encoded, tmp_path):
    dest = tmp_path / "wds"
    export_version(encoded, str(dest), "webdataset")
    with tarfile.open(sorted(dest.glob("*.tar"))[0]) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 for m in tar.getmembers())
    source = source_rows(encoded)
    keys = list(dict.fromkeys(name.split(".")[0] for name in names))  # WebDataset's key: up to the first dot
    assert set(keys) <= set(source)
    expected = []
    for key in keys:
        expected += [f"{key}.{c}.{e}" for c, e in ENCODED.items() if source[key][c] is not None] + [f"{key}.json"]
    assert names == expected  # each sample's files together, null cells left out


def test_hf_export_loads_with_datasets(encoded, tmp_path):
    dest = tmp_path / "hf"
    export_version(encoded, str(dest), "hf")
    assert verify_export(str(dest)) == []
    for shard in encoded.shards:  # the shards as they are: the manifest's checksums hold for the copies
        assert hashlib.sha256((dest / shard.file).read_bytes()).hexdigest() == shard.sha256
    assert f'load_dataset("{dest}")' in (dest / "README.md").read_text()
    samples = datasets.load_dataset(str(dest), cache_dir=str(tmp_path / "cache"))["train"]
    source = source_rows(encoded)
    assert sorted(samples["sample_id"]) == sorted(source)
    for row in samples:
        truth = source[row["sample_id"]]
        np.testing.assert_array_equal(np.asarray(row["image"]), decode_image(truth["image"]))
        assert row["depth"] == truth["depth"] and row["label"] == truth["label"]
    rejects = datasets.load_dataset(str(dest), "rejects", cache_dir=str(tmp_path / "cache"))["train"]
    assert sorted(rejects["sample_id"]) == sorted(encoded.rejects().column("sample_id").to_pylist())


@pytest.mark.parametrize("format", ["files", "webdataset"])
def test_reject_thumbnails_export_as_files_named_in_rejects_jsonl(local_store_env, image_folder, tmp_path, format):
    from hoi_factory.run import run_pipeline
    from tasks.images.ingest import IngestConfig, IngestPipeline

    folder, _ = image_folder
    version = run_pipeline(IngestPipeline(), IngestConfig(source=str(folder), execution={"executor": "local"})).dataset
    stored = {row["sample_id"]: row["thumbnail"] for row in version.rejects().to_pylist()}
    export_version(version, str(tmp_path / "out"), format)
    lines = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert {line["sample_id"] for line in lines} == set(stored)
    for line in lines:  # a thumbnail is a file beside the rejects; rejects without one stay null
        if stored[line["sample_id"]] is None:
            assert line["thumbnail"] is None
        else:
            assert (tmp_path / "out" / line["thumbnail"]).read_bytes() == stored[line["sample_id"]]
    assert sum(thumbnail is not None for thumbnail in stored.values()) == 1  # the sliver's
    assert verify_export(str(tmp_path / "out")) == []


def test_verify_export_finds_changed_and_missing_files(encoded, tmp_path):
    dest = tmp_path / "files"
    export_version(encoded, str(dest), "files")
    changed = next(dest.glob("image/*/*.png"))
    changed.write_bytes(changed.read_bytes() + b"\0")
    (dest / "rejects.jsonl").unlink()
    assert sorted(verify_export(str(dest))) == sorted([f"{changed.relative_to(dest)}: checksum mismatch",
                                                       "rejects.jsonl: missing"])
    (dest / CHECKSUMS).unlink()
    assert verify_export(str(dest)) == [f"{CHECKSUMS}: missing (an unfinished export)"]


def test_export_refuses_a_corrupt_shard_a_used_folder_and_unknown_formats(tmp_path):
    version = make_encoded_version(str(tmp_path / "store"), count=8, shard_size=4)
    with pytest.raises(ExportError, match="unknown export format"):
        export_version(version, str(tmp_path / "out"), "tfrecord")
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already holds files"):
        export_version(version, str(used), "files")
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    shard = version.shards[1]
    path = Path(version.store.path("datasets", version.name, version.version, shard.file))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShard, match="checksum mismatch"):
        export_version(version, str(tmp_path / "out"), "webdataset")


def test_cli_exports(tmp_path, monkeypatch):
    store = tmp_path / "store"
    version = make_encoded_version(str(store), count=5, shard_size=5)
    monkeypatch.setenv("HOI_STORE_URL", str(store))
    runner = CliRunner()
    dest = tmp_path / "out"
    result = runner.invoke(app, ["datasets", "export", version.ref, str(dest), "--format", "webdataset"])
    assert result.exit_code == 0, result.output
    assert "4 samples, 1 rejects" in " ".join(result.output.split())
    assert verify_export(str(dest)) == [] and len(list(dest.glob("*.tar"))) == 1
    result = runner.invoke(app, ["datasets", "export", version.ref, str(tmp_path / "x"), "--format", "zip"])
    assert result.exit_code == 2 and "unknown export format 'zip'" in result.output
    with tarfile.open(next(dest.glob("*.tar"))) as tar:
        assert tar.extractfile(tar.getmembers()[0]).read(8) == b"\x89PNG\r\n\x1a\n"


def test_export_from_and_to_s3(s3_store_env):
    version = make_encoded_version(s3_store_env, count=6, shard_size=3)
    dest = f"{s3_store_env}-export"
    options = Settings().storage_options(dest)
    export_version(version, dest, "files", options)
    assert verify_export(dest, options) == []
    fs, root = fsspec.core.url_to_fs(dest, **options)
    lines = [json.loads(line) for line in fs.cat_file(f"{root}/samples.jsonl").decode().splitlines()]
    source = source_rows(version)
    assert sorted(line["sample_id"] for line in lines) == sorted(source)
    for line in lines:
        assert fs.cat_file(f"{root}/{line['image']}") == source[line["sample_id"]]["image"]
    card = version.store.read_bytes("datasets", version.name, version.version, "README.md").decode()
    assert f"datasets export {version.ref} DEST --format hf" in card and 'load_dataset("DEST")' in card
