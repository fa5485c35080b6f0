"""The ingest pipeline: a folder of images (local or s3://) -> a checked, resized image dataset."""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

import fsspec
import pyarrow as pa
from pydantic import Field

from hoi_factory.columns import column
from hoi_factory.config import ExecutionConfig, RunConfig
from hoi_factory.context import StageContext
from hoi_factory.pipeline import Pipeline, PlanError
from tasks.images.stages import EncodePNG, ImageShapeFilter, InputProblem, ReadImage, ResizeToFit
from tasks.procedural.image_folder import write_image_folder

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _problem(name: str) -> str:
    return "" if name.lower().endswith(IMAGE_EXTENSIONS) else "unknown extension"


def local_entries(root: str) -> list[tuple[str, str]]:
    """(path, problem) for everything under a local folder: regular files inside it are candidates; FIFOs and
    devices, symlinks leading out of it and symlinked folders (not followed) are problems, never read."""
    real_root = os.path.realpath(root)
    entries = []
    for folder, subfolders, files in os.walk(root, followlinks=False):
        for name in subfolders:
            if os.path.islink(os.path.join(folder, name)):
                entries.append((os.path.join(folder, name), "symlinked folder (not followed)"))
        for name in files:
            path = os.path.join(folder, name)
            target = os.path.realpath(path)
            if os.path.commonpath([real_root, target]) != real_root:
                entries.append((path, "outside the input folder (symlink)"))
                continue
            try:
                mode = os.stat(path).st_mode
            except OSError:  # a dangling link
                entries.append((path, "missing file"))
                continue
            entries.append((path, _problem(name) if stat.S_ISREG(mode) else "not a regular file"))
    return sorted(entries)


class IngestConfig(RunConfig):
    source: str = Field(..., description="folder of images: a path or s3:// URL, searched recursively")
    max_side: int = Field(512, ge=8, le=8192, description="longer side after resizing")
    min_side: int = Field(16, ge=1, description="images with a shorter side are rejected")
    max_aspect: float = Field(4.0, ge=1.0, description="longer/shorter side above this is rejected")
    max_pixels: int = Field(50_000_000, ge=1, description="larger images are rejected before decoding")
    limit: int | None = Field(None, ge=1, description="take only the first N files (sorted by path)")


class IngestPipeline(Pipeline[IngestConfig]):
    name = "ingest"
    description = "image folder -> checked, resized PNG image dataset"
    config_class = IngestConfig
    schema = pa.schema([
        column("path", pa.string(), "the source file (path or URL)"),
        column("source_sha256", pa.string(), "sha256 of the source file's bytes"),
        column("image", pa.binary(), "the checked, resized RGB image", encoding="png"),
        column("width", pa.int32(), "image width", unit="pixels"),
        column("height", pa.int32(), "image height", unit="pixels"),
    ])
    item_keys = frozenset({"input_id", "path", "problem"})
    preview_column = "image"

    def plan(self, config: IngestConfig, context: StageContext) -> list[dict]:
        """Every entry of the folder is an item: an image to read, or a reject with its reason (InputProblem)."""
        fs, root = fsspec.core.url_to_fs(config.source, **context.storage_options(config.source))
        if not fs.isdir(root):
            raise PlanError(f"source {config.source!r} is not a folder")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if protocol in ("file", "local"):
            entries, prefix = local_entries(root), ""
        else:  # object stores hold objects only: no links, no devices
            entries, prefix = [(p, _problem(p)) for p in sorted(fs.find(root))], f"{protocol}://"
        if not any(not problem for _, problem in entries):
            raise PlanError(f"source {config.source!r} holds no files ending in {', '.join(IMAGE_EXTENSIONS)}")
        entries = entries[: config.limit] if config.limit else entries
        return [{"input_id": posixpath.relpath(path, root), "path": prefix + path, "problem": problem}
                for path, problem in entries]

    def demo_config(self, inputs: Path, execution: ExecutionConfig) -> IngestConfig:
        """48 stand-in scenes plus the known-bad files, so the demo shows rejects too."""
        write_image_folder(inputs, count=48, seed=0)
        return IngestConfig(source=str(inputs), execution=execution, output={"dataset": "demo-images"})

    def stages(self, config: IngestConfig):
        return [
            InputProblem(),
            ReadImage(config.max_pixels),
            ImageShapeFilter(config.min_side, config.max_aspect),
            ResizeToFit(config.max_side),
            EncodePNG(),
        ]
