"""A corpus of bad inputs: each gets a recorded rejection or a clear error, the run goes on, and nothing is
written outside the store."""

import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from hoi_factory.config import ConfigError, RunConfig, Settings, validate_run_config
from hoi_factory.datasets import DatasetStore
from hoi_factory.pipeline import Pipeline, PlanError
from hoi_factory.run import run_pipeline
from hoi_factory.stage import MapStage
from hoi_factory.storage import Store
from tasks.images.ingest import IngestConfig, IngestPipeline


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny compressed row of data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def save(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


GOOD = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
# file -> (bytes, expected reject reason or None when it must be accepted)
CORPUS = {
    "ok/plain.png": (save(Image.fromarray(GOOD), "PNG"), None),
    "ok/cmyk.jpg": (save(Image.fromarray(GOOD).convert("CMYK"), "JPEG"), None),
    "ok/grey-alpha.png": (save(Image.fromarray(GOOD).convert("LA"), "PNG"), None),
    "ok/ünïcødé name with spaces.png": (save(Image.fromarray(GOOD), "PNG"), None),
    "bad/zero-bytes.png": (b"", "empty file"),
    "bad/truncated.jpg": (save(Image.fromarray(GOOD), "JPEG")[:200], "unreadable image"),
    "bad/text-pretending.png": (b"GIF89a? no, just text", "unreadable image"),
    "bad/header-only-giant.png": (png_claiming(60_000, 60_000), "image too large"),
    "bad/16-bit.png": (save(Image.fromarray((GOOD[..., 0].astype(np.uint16) * 257)), "PNG"), "unsupported image mode"),
    "bad/float.tif": (save(Image.fromarray(GOOD[..., 0].astype(np.float32)), "TIFF"), "unsupported image mode"),
    "bad/one-pixel.png": (save(Image.new("RGB", (1, 1)), "PNG"), "image too small"),
    "bad/banner.png": (save(Image.new("RGB", (400, 20)), "PNG"), "aspect ratio too extreme"),
}


def test_every_bad_input_is_rejected_with_its_reason_and_the_rest_is_kept(local_store_env, tmp_path):
    source = tmp_path / "inputs"
    for name, (data, _) in CORPUS.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    before = {p for p in tmp_path.rglob("*")}

    dataset = run_pipeline(IngestPipeline(), IngestConfig(source=str(source), execution={"executor": "local",
                                                                                       "shard_size": 3})).dataset
    rejected = dict(zip(dataset.rejects().column("input_id").to_pylist(),
                        dataset.rejects().column("reason").to_pylist()))
    assert rejected == {name: reason for name, (_, reason) in CORPUS.items() if reason}
    kept = dataset.to_pandas()
    assert sorted(kept.input_id) == sorted(name for name, (_, reason) in CORPUS.items() if reason is None)
    assert dataset.manifest.num_inputs == len(CORPUS) and dataset.validate() == []
    # Everything new lies in the store.
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(Path(local_store_env) in p.parents or p == Path(local_store_env) for p in written)


@pytest.mark.parametrize("name", ["../escape", "/etc/cron.d/x", "a/b", "x" * 300, "名前", "bad name", "..", ""])
def test_hostile_dataset_and_version_names_fail_before_any_work(local_store_env, tmp_path, name):
    source = tmp_path / "inputs"
    source.mkdir()
    (source / "a.png").write_bytes(CORPUS["ok/plain.png"][0])
    for field in ("dataset", "version"):
        with pytest.raises(ConfigError, match=f"output.{field}: Value error, {field} .* is not allowed"):
            config = validate_run_config(IngestConfig, {"source": str(source), "output": {field: name}})
            run_pipeline(IngestPipeline(), config)
    assert not Path(local_store_env).exists() or DatasetStore(Store.from_settings(Settings())).names() == []
    assert sorted(p.name for p in tmp_path.rglob("*") if "store" not in p.parts) == ["a.png", "inputs"]


class ArrayConfig(RunConfig):
    count: int = 10


class MakeArrays(MapStage):
    """Stands in for a model stage whose numerics blew up on some inputs."""

    needs = frozenset({"index"})
    makes = frozenset({"points", "score"})

    def process_row(self, row):
        values = [[float(row["index"]), 1.0]] * 3
        if row["index"] == 3:
            values = [[float("nan"), 1.0]] + values[1:]
        return {**row, "points": values, "score": float("inf") if row["index"] == 7 else 0.5}


class ArrayPipeline(Pipeline[ArrayConfig]):
    name = "arrays"
    description = "test: array outputs"
    config_class = ArrayConfig
    schema = pa.schema([("points", pa.list_(pa.list_(pa.float32()))), ("score", pa.float64())])

    def plan(self, config, context):
        return [{"input_id": "array", "index": i} for i in range(config.count)]

    def stages(self, config):
        return [MakeArrays()]


def test_nan_and_inf_outputs_are_rejected_with_their_column(local_store_env):
    dataset = run_pipeline(ArrayPipeline(), ArrayConfig(execution={"executor": "local", "shard_size": 4})).dataset
    rejects = dataset.rejects().to_pylist()
    assert sorted((r["stage"], r["reason"], r["detail"]) for r in rejects) == [
        ("output checks", "non-finite values", "points"), ("output checks", "non-finite values", "score")]
    assert dataset.manifest.num_samples == 8 and dataset.manifest.reject_reasons == {
        "output checks: non-finite values": 2}
    stored = np.array(dataset.to_pandas().points.map(lambda p: np.stack(p)).tolist())
    assert np.isfinite(stored).all()


def test_unknown_categories_fail_before_any_work(local_store_env):
    from tasks.chorus.prompts import PromptsPipeline

    with pytest.raises(ConfigError, match=r"unknown categories.*'sofa-bed'"):
        run_pipeline(PromptsPipeline(), {"categories": ["cup", "sofa-bed"]})
    assert DatasetStore(Store.from_settings(Settings())).names() == []


def test_malformed_annotation_files_fail_the_plan_naming_the_file(local_store_env, tmp_path):
    from tasks.chorus.coco_eft import COCOEFTConfig, COCOEFTPipeline
    from tasks.chorus.standin_coco_eft import write_coco_eft

    files = write_coco_eft(tmp_path / "coco", ["cup"], count=1)
    broken = {"missing.json": None, "truncated.json": '{"data": [{"annotId": 1,', "latin1.json": b"\xff\xfe{",
              "list.json": "[]", "no-lists.json": '{"images": {}, "annotations": [], "categories": []}'}
    for name, content in broken.items():
        if content is not None:
            (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    cases = [("eft", "missing.json", "does not exist"), ("eft", "truncated.json", "is not valid JSON"),
             ("eft", "latin1.json", "is not valid JSON"), ("eft", "list.json", "must be an object with a 'data' list"),
             ("annotations", "no-lists.json", "must be an object with lists"),
             ("annotations", "truncated.json", "is not valid JSON")]
    for field, name, message in cases:
        inputs = {"eft": files["eft"], "annotations": files["annotations"], "images": files["images"],
                  "categories": ["cup"], "execution": {"executor": "local"}}
        inputs[field] = str(tmp_path / name) if field == "eft" else [*files["annotations"], str(tmp_path / name)]
        with pytest.raises(PlanError, match=f"{re.escape(str(tmp_path / name))}.*{message}"):
            run_pipeline(COCOEFTPipeline(), COCOEFTConfig(**inputs))
    assert DatasetStore(Store.from_settings(Settings())).names() == []


def test_malformed_annotation_entries_are_rejected_one_by_one(local_store_env, tmp_path):
    from tasks.chorus.coco_eft import COCOEFTConfig, COCOEFTPipeline
    from tasks.chorus.standin_coco_eft import write_coco_eft

    files = write_coco_eft(tmp_path / "coco", ["backpack"], count=9, seed=4)
    eft = json.loads(Path(files["eft"]).read_text())
    instances_path, keypoints_path = map(Path, files["annotations"])
    instances, keypoints = json.loads(instances_path.read_text()), json.loads(keypoints_path.read_text())
    fits = eft["data"]
    fits[0]["parm_pose"][3][0][0] = float("nan")  # -> malformed EFT fit
    fits[1]["parm_pose"][5] = [[2, 0, 0], [0, 1, 0], [0, 0, 1]]  # not a rotation
    fits[2]["parm_cam"][0] = -1.0  # negative weak-perspective scale
    del fits[3]["bbox_scale"]
    fits[4]["annotId"] = 999_999  # names no COCO annotation
    fits.append("not an object")
    image_of = {a["id"]: a["image_id"] for a in keypoints["annotations"]}
    images = {i["id"]: i for i in instances["images"]}
    images[image_of[fits[5]["annotId"]]]["file_name"] = "../../../etc/passwd"
    images[image_of[fits[6]["annotId"]]]["file_name"] = "not-there.jpg"
    for annotation in instances["annotations"]:  # an object whose segmentation is garbage
        if annotation["image_id"] == image_of[fits[7]["annotId"]] and annotation["category_id"] != 1:
            annotation["segmentation"] = [["x", "y"]]
    eft["data"] = fits
    Path(files["eft"]).write_text(json.dumps(eft))
    instances_path.write_text(json.dumps(instances))
    keypoints["images"] = instances["images"]
    keypoints_path.write_text(json.dumps(keypoints))

    dataset = run_pipeline(COCOEFTPipeline(), COCOEFTConfig(
        eft=files["eft"], annotations=files["annotations"], images=files["images"], categories=["backpack"],
        execution={"executor": "local", "shard_size": 3})).dataset
    reasons = sorted(r["reason"] for r in dataset.rejects().to_pylist())
    assert reasons == sorted(["malformed EFT fit"] * 4 + ["unknown COCO annotation"] * 2 + ["unsafe image path",
                             "missing file", "malformed COCO annotation"])
    details = " ".join(r["detail"] for r in dataset.rejects().to_pylist())
    assert "parm_pose" in details and "parm_cam" in details and "bbox_scale" in details
    assert dataset.manifest.num_samples == 1 and dataset.validate() == []  # the one good fit is kept
    assert dataset.to_pandas().input_id.tolist() == [f"{fits[8]['annotId']}|backpack"]


@pytest.mark.timeout(120)
def test_hostile_entries_in_an_input_folder_are_each_a_reject_and_nothing_hangs(local_store_env, tmp_path):
    """A FIFO named *.png (reading it would block forever), a symlink to a file outside the folder, a symlinked
    folder, unknown extensions: every entry is a sample or a reject with its reason, none read, none lost."""
    import os

    from hoi_factory.run import run_pipeline
    from tasks.images.ingest import IngestConfig, IngestPipeline

    folder, outside = tmp_path / "inbox", tmp_path / "outside"
    folder.mkdir()
    (outside / "deep").mkdir(parents=True)
    Image.new("RGB", (64, 48), "red").save(folder / "good.png")
    Image.new("RGB", (64, 48), "blue").save(outside / "secret.png")
    Image.new("RGB", (64, 48), "green").save(outside / "deep" / "inner.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "escape.png").symlink_to(outside / "secret.png")
    (folder / "linked").symlink_to(outside / "deep", target_is_directory=True)
    Image.new("RGB", (64, 48), "red").save(folder / "anim.gif")
    (folder / "notes.txt").write_text("not an image")
    (folder / "photo.jfif").write_bytes(b"\xff\xd8\xff")

    dataset = run_pipeline(IngestPipeline(), IngestConfig(source=str(folder), execution={"executor": "local"})).dataset
    reasons = {r["input_id"]: r["reason"] for r in dataset.rejects().to_pylist()}
    assert dataset.to_pandas(["input_id"])["input_id"].tolist() == ["good.png"]
    assert reasons == {"pipe.png": "not a regular file", "escape.png": "outside the input folder (symlink)",
                       "linked": "symlinked folder (not followed)", "anim.gif": "unknown extension",
                       "notes.txt": "unknown extension", "photo.jfif": "unknown extension"}
    assert dataset.manifest.num_inputs == 7 == dataset.manifest.num_samples + dataset.manifest.num_rejects


def test_a_read_that_never_answers_is_a_reject_after_its_deadline():
    """A stalled mount or endpoint: the read gives up after `read_seconds`, the sample is rejected, the rest go on."""
    import threading

    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from hoi_factory.config import Settings
    from hoi_factory.context import StageContext
    from tasks.images.stages import ReadImage

    released = threading.Event()

    class StalledFileSystem(MemoryFileSystem):
        protocol = "stalledtest"

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(path.replace("stalledtest://", "memory://", 1))

        def _open(self, path, mode="rb", **kwargs):
            if "stalled" in path:
                released.wait(30)  # as a read from a dead NFS server would
            return super()._open(path, mode, **kwargs)

    fsspec.register_implementation("stalledtest", StalledFileSystem, clobber=True)
    fs = StalledFileSystem()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    fs.pipe({"/ok.png": buffer.getvalue(), "/stalled.png": buffer.getvalue()})
    stage = ReadImage(read_seconds=0.5)
    stage.setup(StageContext(Settings()))
    try:
        stalled = stage.process_row({"sample_id": "s", "input_id": "s", "path": "stalledtest:///stalled.png"})
        fine = stage.process_row({"sample_id": "o", "input_id": "o", "path": "stalledtest:///ok.png"})
    finally:
        released.set()
        fs.rm(["/ok.png", "/stalled.png"])  # the memory filesystem's store is shared by the whole process
    assert stalled.reason == "read timed out" and "0.5 s" in stalled.detail
    assert fine["pixels"].shape == (8, 8, 3)
