"""Prefect flow: score a LayoutNet + ContentNet pair on held-out HO3Pairs as the papers do.

For each held-out pair the two models turn its object image into one HOI image; then FID (generated vs. the
true HOI images), LPIPS (each generated image vs. its pair's true HOI image) and contact recall (the generated
hand touches the pair's object mask; needs a hand segmenter, else None) are computed. The result is a table and a sample
grid in Prefect, and `<store>/evaluations/<contentnet>-<version>_on_<dataset>-<version>.json`.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Literal

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from hoi_factory.codec import encode_png, open_image
from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.model_store import ModelStore
from hoi_factory.report import sample_grid
from hoi_factory.storage import Store
from models.affordance.contentnet import ContentNet
from models.affordance.layoutnet import LayoutNet
from models.affordance.synthesis import synthesize
from models.metrics import LPIPS, RANDOM, InceptionFeatures, contact_recall, fid
from tasks.ho3pairs.hands import make_segmenter


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layoutnet: str = Field(..., description="model version: name (latest) or name/version")
    contentnet: str = Field(..., description="model version: name (latest) or name/version")
    dataset: str = Field(..., description="held-out HO3Pairs version: name (latest) or name/version")
    max_pairs: int = Field(500, ge=2)
    steps: int = Field(50, ge=1, le=1000)
    inception_weights: str = Field(..., description="Inception-v3 state dict for FID ('random': plumbing only)")
    lpips_weights: str = Field(..., description="AlexNet state dict for LPIPS ('random': plumbing only)")
    hand_segmentation: Literal["none", "mediapipe"] = Field("none", description="for contact recall")
    hand_landmarker: str | None = None
    seed: int = 0


def _decode(data: bytes, size: int | None = None) -> np.ndarray:
    image = open_image(data, "RGB")
    return np.asarray(image.resize((size, size)) if size else image)


@flow(name="evaluate-hoi-synthesis", description="FID, LPIPS and contact recall of LayoutNet + ContentNet")
def evaluate_hoi_synthesis(config: EvalConfig) -> dict[str, Any]:
    logger = get_run_logger()
    store = Store.from_settings(Settings())
    models = ModelStore(store)
    layout_version, content_version = models.open_ref(config.layoutnet), models.open_ref(config.contentnet)
    dataset = DatasetStore(store).open_ref(config.dataset)
    # Metric weights are checked before the expensive generation starts.
    inception, lpips = InceptionFeatures(config.inception_weights), LPIPS(config.lpips_weights)
    segmenter = make_segmenter(config.hand_segmentation, config.hand_landmarker) \
        if config.hand_segmentation != "none" else None
    storage = Settings().storage_options(layout_version.url)
    layoutnet = LayoutNet.from_pretrained(layout_version.url, **storage)
    contentnet = ContentNet.from_pretrained(content_version.url, **storage)

    rows = dataset.to_arrow(
        ["object_image", "hoi_image", "object_mask", "object_class"]).to_pylist()[: config.max_pairs]
    generated, truth, hands, objects = [], [], [], []
    for index, row in enumerate(rows):
        _, [image] = synthesize(_decode(row["object_image"]), layoutnet, contentnet, row["object_class"] or "",
                                count=1, steps=config.steps, seed=config.seed + index)
        generated.append(image)
        truth.append(_decode(row["hoi_image"], image.shape[0]))
        if segmenter is not None and row["object_mask"]:
            masks = segmenter.masks(image)
            hands.append(np.logical_or.reduce(masks) if masks else None)
            objects.append(_decode(row["object_mask"], image.shape[0])[..., 0] > 127)
    metrics = {"fid": fid(np.stack(truth), np.stack(generated), inception),
               "lpips": float(lpips(np.stack(generated), np.stack(truth)).mean()),
               "contact_recall": contact_recall(hands, objects) if hands else math.nan,
               "pairs": len(rows)}
    metrics = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}  # JSON: no NaN
    record = {"layoutnet": f"{layout_version.name}/{layout_version.version}",
              "contentnet": f"{content_version.name}/{content_version.version}", "dataset": dataset.ref,
              "config": config.model_dump(mode="json"), "metrics": metrics}
    name = f"{content_version.name}-{content_version.version}_on_{dataset.name}-{dataset.version}.json"
    store.write_json(record, "evaluations", name)
    create_table_artifact([{**metrics, "contentnet": record["contentnet"], "dataset": dataset.ref}],
                          key="hoi-synthesis-evaluation", description="FID, LPIPS, contact recall")
    grid = sample_grid([encode_png(np.concatenate([t, g], 1)) for t, g in zip(truth, generated)])
    create_markdown_artifact(f"# {record['contentnet']} on {dataset.ref}\n\ntrue | generated\n\n"
                             f"![samples](data:image/png;base64,{base64.b64encode(grid).decode()})",
                             key="hoi-synthesis-samples")
    logger.info("evaluation of %s on %s: %s", record["contentnet"], dataset.ref, metrics)
    if RANDOM in (config.inception_weights, config.lpips_weights):
        logger.warning("FID and LPIPS above come from random metric networks: they say the plumbing runs, nothing "
                       "about the images")
    return record
