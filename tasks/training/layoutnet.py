"""Training LayoutNet on HO3Pairs versions: object image (augmented) -> the pair's layout.

Evaluation (on the training pairs, a small held-out set is the caller's choice of dataset): mean IoU between
the hard splat of a generated layout and the pair's true hand mask, beside the same for random layouts (uniform
location, palm size within the data's range, uniform direction) — the figure that says the model learned
where hands go.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from PIL import Image

from hoi_factory.codec import open_image
from hoi_factory.training import saved_files
from models.affordance.layout import splat
from models.affordance.layoutnet import LayoutNet, LayoutNetConfig
from tasks.training.augment import augment_objects, random_crop_and_flip

EVALUATED = 32  # pairs scored by `evaluate`


def _image(data: bytes, size: int, mode: str = "RGB") -> np.ndarray:
    return np.asarray(open_image(data, mode).resize((size, size), Image.Resampling.BILINEAR))


def _to_model_range(images: list[np.ndarray]) -> torch.Tensor:
    if not images:
        return torch.empty(0, 3, 1, 1)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def mean_iou(layouts: torch.Tensor, hands: torch.Tensor) -> float:
    masks = splat(layouts, hands.shape[-1])[:, 0] >= 0.5
    inter = (masks & hands).flatten(1).sum(1).float()
    union = (masks | hands).flatten(1).sum(1).clamp_min(1).float()
    return float((inter / union).mean())


def random_layouts(count: int, sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    location = torch.rand((count, 2), generator=generator) * 2 - 1
    low, high = float(sizes.min()), float(sizes.max())
    size = low + (high - low) * torch.rand(count, generator=generator)
    angle = torch.rand(count, generator=generator) * 2 * math.pi
    return torch.stack([location[:, 0], location[:, 1], size, angle.cos(), angle.sin()], 1)


def load_pairs(datasets, size: int, with_hoi: bool = False) -> dict[str, torch.Tensor | list]:
    """HO3Pairs rows as training tensors at `size`: object images (and their SDEdited versions) in [-1, 1],
    layouts, hand masks, prompts (the object class), and the HOI images when asked."""
    columns = (["object_image", "sdedit_image", "layout", "hand_mask", "object_class"]
               + (["hoi_image"] if with_hoi else []))
    objects, edited, has_edit, layouts, hands, prompts, hoi = [], [], [], [], [], [], []
    for version in datasets:
        missing = set(columns) - set(version.manifest.columns)
        if missing:
            raise ValueError(f"{version.ref} is not an HO3Pairs dataset: no column(s) {sorted(missing)}")
        for row in version.to_arrow(columns).to_pylist():
            objects.append(_image(row["object_image"], size))
            edited.append(_image(row["sdedit_image"], size) if row["sdedit_image"] else objects[-1])  # null: no SDEdit
            has_edit.append(bool(row["sdedit_image"]))
            layouts.append(row["layout"])
            hands.append(_image(row["hand_mask"], size, "L") > 127)
            prompts.append(row["object_class"] or "")
            if with_hoi:
                hoi.append(_image(row["hoi_image"], size))
    data = {"objects": _to_model_range(objects), "sdedited": _to_model_range(edited),
            "has_sdedit": torch.tensor(has_edit, dtype=torch.bool),
            "layouts": torch.tensor(layouts, dtype=torch.float32).reshape(-1, 5),
            "hands": torch.from_numpy(np.stack(hands)) if hands else torch.empty(0, size, size, dtype=torch.bool),
            "prompts": prompts}
    if with_hoi:
        data["hoi"] = _to_model_range(hoi)
    return data


class LayoutNetTask:
    name = "layoutnet"

    def config(self, options: dict[str, Any]) -> LayoutNetConfig:
        preset = LayoutNetConfig.tiny() if options.get("preset") == "tiny" else LayoutNetConfig()
        overrides = {k: tuple(v) if k == "channels" else v for k, v in options.items() if k != "preset"}
        return LayoutNetConfig(**{**asdict(preset), **overrides})

    def build(self, options: dict[str, Any]) -> LayoutNet:
        return LayoutNet(self.config(options))

    def load(self, datasets, options: dict[str, Any]) -> dict[str, torch.Tensor | list]:
        return load_pairs(datasets, self.config(options).image_size)

    def loss(self, module: LayoutNet, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        batch = random_crop_and_flip(batch, generator)
        objects = augment_objects(batch["objects"], batch["sdedited"], batch["has_sdedit"], generator)
        return module.loss(objects, batch["layouts"], generator)

    def files(self, module) -> dict[str, bytes]:
        return saved_files(module)

    def evaluate(self, module: LayoutNet, data: dict[str, torch.Tensor]) -> dict[str, float]:
        generator = torch.Generator().manual_seed(0)
        objects, hands = data["objects"][:EVALUATED], data["hands"][:EVALUATED]
        generated = module.generate(objects, steps=25, generator=generator)
        baseline = random_layouts(len(objects), data["layouts"][:, 2], generator)
        return {"mean_iou_generated": mean_iou(generated, hands), "mean_iou_random": mean_iou(baseline, hands),
                "mean_iou_true_layout": mean_iou(data["layouts"][:EVALUATED], hands)}

