"""The affordance-synthesis pipeline: object images -> LayoutNet layouts -> ContentNet HOI images, the output
of Affordance Diffusion (Ye et al., CVPR 2023) for new objects.

Objects come from a folder of images or from a dataset's object-image column (HO3Pairs' `object_image`, read
in the workers through hoi_factory.parents, so the parent version is the run's lineage). Each object gives
`samples_per_object` samples; each sample's seed (the factory's per-sample seed) fixes its layout and its image.

Model versions: the plan resolves the `layoutnet` and `contentnet` refs (`name` = its latest, or `name/vN`)
once, and every item and row carries the exact `name/vN` it was made with, so all workers use the same
weights and a dataset row names the model versions behind it.

DEVIATIONS from the official sampling script: objects are centre-cropped to a square and resized to `size`
(the official code takes HOI4D's square crops); a GPU worker runs one sample per model call (its batch is the
worker's unit of work), because the models draw a batch's noise from one generator: a sample made in a batch
would depend on its batchmates, and a batch retried sample by sample after an error would change.
"""

from __future__ import annotations

import posixpath
from typing import Literal

import fsspec
import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from pydantic import Field, model_validator

from hoi_factory.codec import decode_image, encode_png
from hoi_factory.columns import column
from hoi_factory.config import RunConfig, Variant
from hoi_factory.context import StageContext
from hoi_factory.parents import PARENT_KEYS, ReadParentRows, items_from_dataset
from hoi_factory.pipeline import Pipeline, PlanError
from hoi_factory.report import stacked_rows
from hoi_factory.stage import MapStage, Reject, Resources, Row
from models.affordance.layout import LAYOUT_DESCRIPTION, LAYOUT_FRAME, LAYOUT_SIZE, splat_mask
from models.affordance.layoutnet import GUIDABLE
from tasks.images.ingest import IMAGE_EXTENSIONS
from tasks.images.stages import ReadImage

MODEL_KEYS = frozenset({"layoutnet_version", "contentnet_version"})  # exact `name/vN` refs, on every item
CONTENT_SEED_OFFSET = 1  # ContentNet's noise seed = the sample's seed + this: not the layout's noise again


class SampledLayout(Variant):
    """LayoutNet samples the whole layout."""

    kind: Literal["sampled"] = "sampled"


class GuidedLayout(Variant):
    """LayoutNet samples with some coordinates held at given values (the paper's guided generation)."""

    kind: Literal["guided"] = "guided"
    fix: list[Literal["x", "y", "size"]] = Field(
        default_factory=lambda: ["x", "y", "size"], min_length=1,
        description="coordinates held fixed (size is the layout's sqrt_size)")
    values: dict[Literal["x", "y", "size"], float] | None = Field(
        None, description="the fixed values; none: each object's own `layout` column (source=dataset)")


class SynthesisConfig(RunConfig):
    objects: str = Field(..., description="folder of object images (path or s3:// URL), or with source=dataset a "
                         "dataset (name[/version]), e.g. an HO3Pairs version")
    source: Literal["folder", "dataset"] = Field("folder", description="what `objects` names")
    object_column: str = Field("object_image", description="source=dataset: the PNG column of object images")
    class_column: str | None = Field("object_class", description="source=dataset: the column of object classes "
                                     "(the prompt), if any")
    object_class: str = Field("object", description="the prompt of objects without a class column")
    layoutnet: str = Field(..., description="LayoutNet in the model store: name (its latest) or name/version")
    contentnet: str = Field(..., description="ContentNet in the model store: name (its latest) or name/version")
    samples_per_object: int = Field(4, ge=1, le=1000)
    layout: SampledLayout | GuidedLayout = Field(default_factory=SampledLayout, discriminator="kind")
    size: int = Field(256, ge=16, le=2048, description="side of the square object and HOI images (pixels); must "
                      "suit ContentNet (a multiple of its VAE's downsampling)")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps, for LayoutNet and ContentNet alike")
    guidance_scale: float = Field(1.0, ge=0, le=50, description="ContentNet's classifier-free guidance")
    gpus: float = Field(0.0, ge=0, le=8, description="GPUs per LayoutNet / ContentNet worker")

    @model_validator(mode="after")
    def _guide_values_exist(self) -> SynthesisConfig:
        layout = self.layout
        if isinstance(layout, GuidedLayout):
            if layout.values is None and self.source != "dataset":
                raise ValueError("layout=guided without layout.values takes each object's `layout` column: "
                                 "needs source=dataset")
            if layout.values is not None and (missing := set(layout.fix) - layout.values.keys()):
                raise ValueError(f"layout.values lacks the fixed coordinate(s) {sorted(missing)}")
        return self


def model_ref(context: StageContext, ref: str) -> str:
    """The exact `name/vN` of a model ref."""
    version = context.models.open_ref(ref)
    return f"{version.name}/{version.version}"


def square(pixels: np.ndarray, size: int) -> np.ndarray:
    """The centred square crop of an RGB image, resized to size x size."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(pixels[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS) if side != size else crop)


class DecodeObject(MapStage):
    """A dataset's PNG object image -> `pixels`, as ReadImage gives for files."""

    def __init__(self, column: str):
        self.column = column
        self.needs = frozenset({column})
        self.makes = frozenset({"pixels"})

    def process_row(self, row: Row) -> Row | Reject:
        if not row[self.column]:
            return Reject.of(row, "no object image")
        return {**row, "pixels": decode_image(row[self.column], "RGB")}


class SquareObject(MapStage):
    """The square object image the models see, and its class (the prompt)."""

    needs = frozenset({"pixels"})
    makes = frozenset({"object_array", "object_class"})

    def __init__(self, size: int, class_column: str | None, default_class: str):
        self.size, self.class_column, self.default_class = size, class_column, default_class

    def process_row(self, row: Row) -> Row:
        object_class = row.get(self.class_column) if self.class_column else None
        return {**row, "object_array": square(row["pixels"], self.size),
                "object_class": object_class or self.default_class}


def _as_tensor(image: np.ndarray, device: str) -> torch.Tensor:
    """uint8 (S, S, 3) -> (1, 3, S, S) in [-1, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None].to(device) / 127.5 - 1


class ModelStage(MapStage):
    """Loads the model version each row names (once per worker: a run uses one) from the model store."""

    batch_size = 8

    def __init__(self, gpus: float):
        self.resources = Resources(num_gpus=gpus)

    def setup(self, context: StageContext) -> None:
        self.context = context
        self.loaded: dict[str, torch.nn.Module] = {}

    def load(self, url: str, device: str, storage_options: dict) -> torch.nn.Module:
        raise NotImplementedError

    def model(self, ref: str) -> torch.nn.Module:
        if ref not in self.loaded:
            url = self.context.models.open_ref(ref).url
            self.loaded[ref] = self.load(url, self.context.device, self.context.storage_options(url))
        return self.loaded[ref]


class SampleLayout(ModelStage):
    """LayoutNet's layout for the object, from the sample's seed (guided: with fixed coordinates)."""

    needs = frozenset({"object_array", "layoutnet_version", "seed"})
    makes = frozenset({"layout"})

    def __init__(self, layout: SampledLayout | GuidedLayout, steps: int, gpus: float):
        super().__init__(gpus)
        self.layout, self.steps = layout, steps
        if isinstance(layout, GuidedLayout) and layout.values is None:
            self.needs = self.needs | {"layout"}  # each object's own layout (the parent's column)

    def load(self, url: str, device: str, storage_options: dict) -> torch.nn.Module:
        from models.affordance.layoutnet import LayoutNet

        return LayoutNet.from_pretrained(url, device, **storage_options)

    def fixed(self, row: Row) -> dict[str, torch.Tensor] | None:
        if not isinstance(self.layout, GuidedLayout):
            return None
        if self.layout.values is not None:
            return {name: torch.tensor([self.layout.values[name]]) for name in self.layout.fix}
        given = np.asarray(row["layout"], dtype=np.float32)
        return {name: torch.tensor([given[GUIDABLE[name]]]) for name in self.layout.fix}

    def process_row(self, row: Row) -> Row | Reject:
        if isinstance(self.layout, GuidedLayout) and self.layout.values is None and row.get("layout") is None:
            return Reject.of(row, "no layout to guide by")
        layoutnet = self.model(row["layoutnet_version"])
        objects = torch.nn.functional.interpolate(
            _as_tensor(row["object_array"], self.context.device), size=layoutnet.config.image_size,
            mode="bilinear", antialias=True, align_corners=False)
        generator = torch.Generator().manual_seed(int(row["seed"]))
        layout = layoutnet.generate(objects, self.steps, self.fixed(row), generator)[0]
        return {**row, "layout": layout.cpu().numpy().astype(np.float32)}


class PaintHand(ModelStage):
    """ContentNet's HOI image for the object and layout, prompted with the object class."""

    needs = frozenset({"object_array", "layout", "object_class", "contentnet_version", "seed"})
    makes = frozenset({"hoi_array"})

    def __init__(self, steps: int, guidance_scale: float, gpus: float):
        super().__init__(gpus)
        self.steps, self.guidance_scale = steps, guidance_scale

    def load(self, url: str, device: str, storage_options: dict) -> torch.nn.Module:
        from models.affordance.contentnet import ContentNet

        return ContentNet.from_pretrained(url, device, **storage_options).eval()

    def process_row(self, row: Row) -> Row:
        device = self.context.device
        generator = torch.Generator().manual_seed(int(row["seed"]) + CONTENT_SEED_OFFSET)
        [image] = self.model(row["contentnet_version"]).generate(
            _as_tensor(row["object_array"], device), torch.as_tensor(row["layout"])[None].to(device),
            [row["object_class"]], self.steps, self.guidance_scale, generator)
        return {**row, "hoi_array": image}


class EncodeSample(MapStage):
    needs = frozenset({"object_array", "hoi_array"})
    makes = frozenset({"object_image", "hoi_image", "size", "sample_index"})

    def process_row(self, row: Row) -> Row:
        return {**row, "object_image": encode_png(row["object_array"]), "hoi_image": encode_png(row["hoi_array"]),
                "size": row["hoi_array"].shape[0], "sample_index": row["index"]}


def sample_strip(row: dict) -> bytes:
    """Object | its layout's splat outlined over it | the HOI image."""
    hoi = decode_image(row["hoi_image"], "RGB")
    target = decode_image(row["object_image"], "RGB").copy()
    target[splat_mask(np.asarray(row["layout"]), target.shape[0])] = [255, 40, 40]
    return encode_png(np.concatenate([decode_image(row["object_image"], "RGB"), target, hoi], 1))


class SynthesisPipeline(Pipeline[SynthesisConfig]):
    name = "affordance-synthesis"
    description = "Affordance Diffusion: object images -> LayoutNet layouts -> ContentNet hand–object images"
    config_class = SynthesisConfig
    schema = pa.schema([
        column("object_class", pa.string(), "the object's class: ContentNet's prompt"),
        column("sample_index", pa.int32(), "the sample's number among its object's samples"),
        column("object_image", pa.binary(), "the object-only image, square (the models' input)", encoding="png"),
        column("hoi_image", pa.binary(), "the synthesized hand-object image", encoding="png"),
        column("size", pa.int32(), "side of the square images", unit="pixels"),
        column("layout", pa.float32(), f"LayoutNet's {LAYOUT_DESCRIPTION}", shape=(LAYOUT_SIZE,),
               frame=LAYOUT_FRAME),
        column("layoutnet_version", pa.string(), "the LayoutNet model version (name/vN) the layout came from"),
        column("contentnet_version", pa.string(), "the ContentNet model version (name/vN) the image came from"),
    ])
    preview_column = "hoi_image"
    item_keys = frozenset({"input_id"}) | MODEL_KEYS

    def planned_keys(self, config: SynthesisConfig) -> frozenset[str]:
        return self.item_keys | (PARENT_KEYS if config.source == "dataset" else {"path"})

    def _objects(self, config: SynthesisConfig, context: StageContext):
        """One item per object: a parent row, or an image file of the folder (sorted)."""
        if config.source == "dataset":
            yield from items_from_dataset(context.datasets.open_ref(config.objects))
            return
        fs, root = fsspec.core.url_to_fs(config.objects, **context.storage_options(config.objects))
        if not fs.isdir(root):
            raise PlanError(f"objects {config.objects!r} is not a folder")
        paths = [path for path in sorted(fs.find(root)) if path.lower().endswith(IMAGE_EXTENSIONS)]
        if not paths:
            raise PlanError(f"objects {config.objects!r} holds no files ending in {', '.join(IMAGE_EXTENSIONS)}")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        prefix = "" if protocol in ("file", "local") else f"{protocol}://"
        for path in paths:
            yield {"input_id": posixpath.relpath(path, root), "path": prefix + path}

    def plan(self, config: SynthesisConfig, context: StageContext):
        models = {"layoutnet_version": model_ref(context, config.layoutnet),
                  "contentnet_version": model_ref(context, config.contentnet)}
        for item in self._objects(config, context):
            for index in range(config.samples_per_object):
                yield {**item, **models, "index": index}

    def parents(self, config: SynthesisConfig, context: StageContext) -> list[str]:
        return [context.datasets.open_ref(config.objects).ref] if config.source == "dataset" else []

    def stages(self, config: SynthesisConfig):
        if config.source == "dataset":
            guide_by_parent = isinstance(config.layout, GuidedLayout) and config.layout.values is None
            load = [ReadParentRows([config.object_column, *([config.class_column] if config.class_column else []),
                                    *(["layout"] if guide_by_parent else [])]),
                    DecodeObject(config.object_column)]
        else:
            load = [ReadImage()]
        return [
            *load,
            SquareObject(config.size, config.class_column if config.source == "dataset" else None,
                         config.object_class),
            SampleLayout(config.layout, config.steps, config.gpus),
            PaintHand(config.steps, config.guidance_scale, config.gpus),
            EncodeSample(),
        ]

    def report_pictures(self, version) -> dict[str, bytes]:
        rows = version.read_shard(0, ["object_image", "hoi_image", "layout"]).to_pylist()[:8] \
            if version.shards else []
        return {"samples": stacked_rows([sample_strip(row) for row in rows])} if rows else {}

