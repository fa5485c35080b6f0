"""The affordance-evaluation pipeline: an affordance-synthesis version scored against the held-out HO3Pairs version
its objects came from (`source=dataset objects=<held-out>`), published as a dataset version of its own (per-sample
figures in rows, set figures in the manifest's metrics, both input versions as its lineage):
- FID (`fid` in the manifest) of the generated HOI images against the true ones, with torch-fidelity;
- LPIPS of each generated image against its object's true HOI image (models/metrics.py; AlexNet weights given);
- layout agreement: IoU of the hard splats of the generated and the true layout;
- contact: the generated layout's splat touches the object mask (a DEVIATION: the papers read contact off a
  hand-object detector run on the image; this checks the layout, NaN where the pair has no object mask).

FID uses torch-fidelity, the standard implementation:
its `inception-v3-compat` extractor is the TF-Inception port ("pt_inception-2015-12-05") that published FID
numbers use, unlike models/metrics.py's torchvision Inception (numbers not comparable with the papers').

Two deviations from calling torch-fidelity as is:
- its weight loader unpickles (torch's loader with weights_only off); here that call is made tensors-only
  (`weights_only=True`: the published file is a plain state dict), so no code runs from a weights file;
- nothing is downloaded: the weights are a local file (`INCEPTION_WEIGHTS_URL`, fetched once by the user),
  and a missing one is an error that says so, never a number from other weights.
Any other feature extractor registered with torch-fidelity can be named (the tests use a stand-in).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from pydantic import Field

from hoi_factory.codec import decode_image, decode_mask, encode_png
from hoi_factory.columns import column
from hoi_factory.config import RunConfig
from hoi_factory.context import StageContext
from hoi_factory.optional import require
from hoi_factory.parents import PARENT_KEYS, ReadParentRows
from hoi_factory.pipeline import Pipeline, PlanError
from hoi_factory.report import stacked_rows
from hoi_factory.stage import MapStage, Resources, Row
from models.affordance.layout import LAYOUT_DESCRIPTION, LAYOUT_FRAME, LAYOUT_SIZE, iou, splat_mask
from models.metrics import LPIPS, in_contact

INCEPTION = "inception-v3-compat"
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         "weights-inception-2015-12-05-6726825d.pth")


class _Images(torch.utils.data.Dataset):
    """uint8 (N, H, W, 3) -> the uint8 (3, H, W) tensors torch-fidelity reads."""

    def __init__(self, images: np.ndarray):
        self.images = np.asarray(images, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1)


_torch_load = torch.load  # the real one, for while torch.load is patched


def _tensors_only(path, *args, **kwargs):
    return _torch_load(path, map_location="cpu", weights_only=True)


def fidelity_fid(real: np.ndarray, generated: np.ndarray, weights: str | None = None,
                 feature_extractor: str = INCEPTION, cuda: bool = False) -> float:
    """torch-fidelity's FID between two sets of uint8 (N, H, W, 3) images. `weights`: the local file of the
    extractor's weights (required for `inception-v3-compat`: download INCEPTION_WEIGHTS_URL)."""
    fidelity = require("torch_fidelity", "metrics", "FID (torch-fidelity)")
    if min(len(real), len(generated)) < 2:
        raise ValueError("FID needs at least two images on each side")
    if feature_extractor == INCEPTION and not (weights and Path(weights).is_file()):
        raise ValueError(f"FID with {INCEPTION} needs its weights as a local file (got {weights!r}): download "
                         f"{INCEPTION_WEIGHTS_URL} and give its path; nothing is downloaded here")
    options = {"feature_extractor_weights_path": weights} if weights else {}
    with mock.patch("torch.load", _tensors_only):  # torch-fidelity's own loader would unpickle
        metrics = fidelity.calculate_metrics(
            input1=_Images(real), input2=_Images(generated), fid=True, feature_extractor=feature_extractor,
            cuda=cuda, cache=False, verbose=False, batch_size=min(64, len(real), len(generated)), **options)
    return float(metrics["frechet_inception_distance"])


class EvaluationConfig(RunConfig):
    synthesized: str = Field(..., description="an affordance-synthesis dataset (name[/version]) made from `held_out`")
    held_out: str = Field(..., description="the held-out HO3Pairs dataset (name[/version]): true HOI images, "
                          "layouts, object masks")
    fid_weights: str | None = Field(None, description=f"local file of the FID extractor's weights ({INCEPTION}: "
                                    "download INCEPTION_WEIGHTS_URL); none: FID is not measured")
    fid_feature_extractor: str = Field(INCEPTION, description="a feature extractor registered with torch-fidelity")
    lpips_weights: str | None = Field(None, description="AlexNet state dict for LPIPS; none: not measured")
    gpus: float = Field(0.0, ge=0, le=8, description="GPUs per LPIPS worker")


SAMPLE_FIGURE_DESCRIPTIONS = {
    "lpips": "LPIPS of the synthesized image against the true one (NaN: no LPIPS weights given)",
    "layout_iou": "IoU of the hard splats of the synthesized and the true layout (NaN: no true layout)",
    "contact": "1 when the synthesized layout's splat touches the object mask, else 0 (NaN: no object mask)",
}
SAMPLE_FIGURES = tuple(SAMPLE_FIGURE_DESCRIPTIONS)


class ReadHeldOut(MapStage):
    """The held-out pair of each synthesized sample: its true HOI image, layout and object mask."""

    needs = frozenset({"held_out_shard", "held_out_row"})
    makes = frozenset({"true_hoi_image", "true_layout", "object_mask"})

    def __init__(self, ref: str):
        self.ref = ref

    def setup(self, context: StageContext) -> None:
        self.version = context.datasets.open_ref(self.ref)
        self.shards: dict[int, list[Row]] = {}

    def process_row(self, row: Row) -> Row:
        shard = row["held_out_shard"]
        if shard not in self.shards:
            self.shards[shard] = self.version.read_shard(shard, ["hoi_image", "layout", "object_mask"]).to_pylist()
        pair = self.shards[shard][row["held_out_row"]]
        return {**row, "true_hoi_image": pair["hoi_image"], "true_layout": pair["layout"],
                "object_mask": pair["object_mask"]}


class MeasureSample(MapStage):
    needs = frozenset({"hoi_image", "layout", "true_hoi_image", "true_layout", "object_mask"})
    makes = frozenset({"true_hoi_image", *SAMPLE_FIGURES})

    def __init__(self, lpips_weights: str | None, gpus: float):
        self.lpips_weights = lpips_weights
        self.resources = Resources(num_gpus=gpus)

    def setup(self, context: StageContext) -> None:
        self.lpips = LPIPS(self.lpips_weights, context.device) if self.lpips_weights else None

    def process_row(self, row: Row) -> Row:
        generated = decode_image(row["hoi_image"], "RGB")
        size = generated.shape[0]
        truth = np.asarray(Image.fromarray(decode_image(row["true_hoi_image"], "RGB")).resize(
            (size, size), Image.Resampling.LANCZOS))  # FID and LPIPS compare images of one size
        hand = splat_mask(np.asarray(row["layout"]), size)
        layout_iou = (iou(hand, splat_mask(np.asarray(row["true_layout"]), size))
                      if row["true_layout"] else math.nan)
        contact = math.nan
        if row["object_mask"]:  # null (or, in versions before nulls, empty bytes): no object mask
            object_mask = np.asarray(Image.fromarray(decode_mask(row["object_mask"])).resize((size, size)))
            contact = float(in_contact(hand, object_mask))
        lpips = float(self.lpips(generated[None], truth[None])[0]) if self.lpips else math.nan
        return {**row, "true_hoi_image": encode_png(truth), "lpips": lpips, "layout_iou": layout_iou,
                "contact": contact}


class EvaluationPipeline(Pipeline[EvaluationConfig]):
    name = "affordance-evaluation"
    description = "Affordance Diffusion: FID, LPIPS, layout agreement and contact of synthesized HOI images"
    config_class = EvaluationConfig
    schema = pa.schema([
        column("hoi_image", pa.binary(), "the synthesized hand-object image", encoding="png"),
        column("true_hoi_image", pa.binary(), "the held-out pair's real hand-object image, resized to the "
               "synthesized one's size", encoding="png"),
        column("layout", pa.float32(), f"the synthesized {LAYOUT_DESCRIPTION}", shape=(LAYOUT_SIZE,),
               frame=LAYOUT_FRAME),
        column("true_layout", pa.float32(), f"the held-out pair's {LAYOUT_DESCRIPTION} (null: none)",
               shape=(LAYOUT_SIZE,), frame=LAYOUT_FRAME),
        column("layoutnet_version", pa.string(), "the LayoutNet model version (name/vN) of the synthesis"),
        column("contentnet_version", pa.string(), "the ContentNet model version (name/vN) of the synthesis"),
        *(column(name, pa.float32(), description) for name, description in SAMPLE_FIGURE_DESCRIPTIONS.items()),
    ])
    preview_column = "hoi_image"
    allow_non_finite = frozenset(SAMPLE_FIGURES)
    item_keys = frozenset({"input_id", "held_out_shard", "held_out_row"}) | PARENT_KEYS

    def plan(self, config: EvaluationConfig, context: StageContext):
        """One item per synthesized sample whose object is a held-out sample (its input id)."""
        held_out = context.datasets.open_ref(config.held_out)
        positions = {sample_id: (shard, row) for shard in range(len(held_out.shards))
                     for row, sample_id in enumerate(held_out.read_shard(shard, ["sample_id"])
                                                     .column("sample_id").to_pylist())}
        synthesized = context.datasets.open_ref(config.synthesized)
        paired = 0
        for shard in range(len(synthesized.shards)):
            ids = synthesized.read_shard(shard, ["sample_id", "input_id"]).to_pylist()
            for row, sample in enumerate(ids):
                if sample["input_id"] in positions:
                    paired += 1
                    held_shard, held_row = positions[sample["input_id"]]
                    yield {"input_id": sample["sample_id"], "parent": synthesized.ref, "parent_shard": shard,
                           "parent_row": row, "held_out_shard": held_shard, "held_out_row": held_row}
        if not paired:
            raise PlanError(f"no object of {synthesized.ref} is a sample of {held_out.ref}: synthesize from it "
                            f"(affordance-synthesis source=dataset objects={held_out.ref})")

    def parents(self, config: EvaluationConfig, context: StageContext) -> list[str]:
        return [context.datasets.open_ref(config.held_out).ref]

    def stages(self, config: EvaluationConfig):
        return [ReadParentRows(["hoi_image", "layout", "layoutnet_version", "contentnet_version"]),
                ReadHeldOut(config.held_out), MeasureSample(config.lpips_weights, config.gpus)]

    def dataset_metrics(self, version) -> dict[str, Any]:
        """The sample figures' means, and FID over the whole version (NaN: not measured)."""
        config = EvaluationConfig.model_validate(version.manifest.config)
        table = version.to_arrow(["hoi_image", "true_hoi_image"])
        fid = math.nan
        if (config.fid_weights or config.fid_feature_extractor != INCEPTION) and table.num_rows >= 2:
            generated, truth = ([decode_image(data, "RGB") for data in table.column(column).to_pylist()]
                                for column in ("hoi_image", "true_hoi_image"))
            fid = fidelity_fid(np.stack(truth), np.stack(generated), config.fid_weights,
                               config.fid_feature_extractor)
        return {**version.column_means(list(SAMPLE_FIGURES)), "fid": fid}

    def report_pictures(self, version) -> dict[str, bytes]:
        rows = version.read_shard(0, ["hoi_image", "true_hoi_image"]).to_pylist()[:8] if version.shards else []
        strips = [encode_png(np.concatenate([decode_image(r["true_hoi_image"], "RGB"),
                                             decode_image(r["hoi_image"], "RGB")], 1)) for r in rows]
        return {"pairs": stacked_rows(strips)}  # true | generated if strips else {}
