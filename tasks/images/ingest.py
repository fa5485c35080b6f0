"""The ingest pipeline: a folder of images (local or s3://) -> a checked, resized image dataset."""

from __future__ import annotations

import posixpath
from pathlib import Path

import fsspec
import pyarrow as pa
from pydantic import Field

from hoi_factory.config import ExecutionConfig, RunConfig
from hoi_factory.context import StageContext
from hoi_factory.pipeline import Pipeline, PlanError
from tasks.images.stages import EncodePNG, ImageShapeFilter, ReadImage, ResizeToFit
from tasks.procedural.image_folder import write_image_folder

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


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
    schema = pa.schema([("path", pa.string()), ("source_sha256", pa.string()), ("image", pa.binary()),
                        ("width", pa.int32()), ("height", pa.int32())])
    item_keys = frozenset({"input_id", "path"})
    preview_column = "image"

    def plan(self, config: IngestConfig, context: StageContext) -> list[dict]:
        fs, root = fsspec.core.url_to_fs(config.source, **context.storage_options(config.source))
        if not fs.isdir(root):
            raise PlanError(f"source {config.source!r} is not a folder")
        files = sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise PlanError(f"source {config.source!r} holds no files ending in {', '.join(IMAGE_EXTENSIONS)}")
        files = files[: config.limit] if config.limit else files
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        prefix = "" if protocol in ("file", "local") else f"{protocol}://"
        return [{"input_id": posixpath.relpath(f, root), "path": prefix + f} for f in files]

    def demo_config(self, inputs: Path, execution: ExecutionConfig) -> IngestConfig:
        """48 stand-in scenes plus the known-bad files, so the demo shows rejects too."""
        write_image_folder(inputs, count=48, seed=0)
        return IngestConfig(source=str(inputs), execution=execution, output={"dataset": "demo-images"})

    def stages(self, config: IngestConfig):
        return [
            ReadImage(config.max_pixels),
            ImageShapeFilter(config.min_side, config.max_aspect),
            ResizeToFit(config.max_side),
            EncodePNG(),
        ]
