"""Training the C-HOI recognizer on HOI dataset versions: `hoi-annotations` (HICO-DET / V-COCO style) and the
factory's own CHORUS views (a person, an object and the prompt's verb per image, boxes from the masks).

The vocabulary (object classes with the background first, verbs) and the semantic co-occurrence table are
built from the training data and saved in the model's config. The recognizer trains on <person, object> pairs;
a role without object (`hoi_objects` -1) is kept for the evaluation only. Evaluation: V-COCO mAP_role
(`models.c_hoi.evaluation`, scenario 1, and `map_role_scenario_2`) of the detected triplets (verb score x human
score x object score) against the data's persons; per-verb APs are reported for the verbs with ground truth.

Options: `preset=tiny` (the CPU test size: the small backbone), `backbone`, `min_size`, `max_size`; `weights`: the
backbone's start (`IMAGENET1K_V1`-style torchvision names, fetched once into TORCH_HOME; `COCO_V1` for resnet50;
or a local .safetensors state dict), which makes the normalization frozen BatchNorm unless `norm` says
otherwise; from scratch it is trainable GroupNorm; `localization_steps`: the paper's two phases, the first
steps train the localization alone, then everything jointly. The step count lives in the task, so a run
resumed from a checkpoint counts the first phase again.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from hoi_factory.codec import decode_image, decode_mask
from hoi_factory.training import saved_files
from models.c_hoi.evaluation import Triplet, image_persons, map_role, to_hico_det, to_vcoco
from models.c_hoi.model import CascadeHOI, CHOIConfig
from models.c_hoi.relation import cooccurrence

BACKGROUND, PERSON = "__background__", "person"


def _image(data: bytes) -> torch.Tensor:
    return torch.tensor(decode_image(data, "RGB")).permute(2, 0, 1).float() / 255


def _mask_box(data: bytes) -> list[float] | None:
    rows, cols = np.nonzero(decode_mask(data))
    return [cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0] if len(rows) else None


def read_hoi_rows(version) -> list[dict]:
    """Rows as {image, boxes (K, 4), labels, triplets [(subject, object, verb)]} from either dataset kind."""
    columns = set(version.manifest.columns)
    rows = []
    if {"boxes", "labels", "hoi_verbs"} <= columns:
        table = version.to_arrow(["image", "boxes", "labels", "hoi_subjects", "hoi_objects", "hoi_verbs"])
        for row in table.to_pylist():
            rows.append({"image": row["image"], "boxes": np.reshape(row["boxes"], (-1, 4)), "labels": row["labels"],
                         "triplets": list(zip(row["hoi_subjects"], row["hoi_objects"], row["hoi_verbs"]))})
    elif {"person_mask", "object_mask", "verb", "category"} <= columns:
        for row in version.to_arrow(["image", "person_mask", "object_mask", "verb", "category"]).to_pylist():
            person, obj = _mask_box(row["person_mask"]), _mask_box(row["object_mask"])
            if person and obj:
                rows.append({"image": row["image"], "boxes": np.array([person, obj]),
                             "labels": [PERSON, row["category"]], "triplets": [(0, 1, row["verb"])]})
    else:
        raise ValueError(f"{version.ref} holds neither HOI annotations (boxes, labels, hoi_*) nor CHORUS views")
    return rows


def _category_ids(names: tuple[str, ...]) -> dict[str, int]:
    if all(name.isdigit() for name in names if name != PERSON):
        return {name: 1 if name == PERSON else int(name) for name in names}
    return {name: position for position, name in enumerate(names, start=1)}


def _json(value) -> bytes:
    return json.dumps(value, indent=1).encode()


class CHOITask:
    name = "c-hoi"

    def __init__(self):
        self.vocabulary: tuple[tuple[str, ...], tuple[str, ...], list] | None = None
        self.localization_steps = 0  # the first phase: loss calls that train the localization alone
        self.steps = 0  # loss calls so far
        self.predictions: list[Triplet] | None = None  # the last evaluation's detections, saved with the model

    def load(self, datasets, options: dict[str, Any]) -> dict[str, list]:
        rows = [row for version in datasets for row in read_hoi_rows(version)]
        if self.vocabulary is None:  # the training data fixes the vocabulary; held-out data reuses it
            objects = (BACKGROUND, PERSON) + tuple(sorted({label for r in rows for label in r["labels"]} - {PERSON}))
            verbs = tuple(sorted({verb for r in rows for _, _, verb in r["triplets"]}))
            pairs = [(r["labels"][o], v) for r in rows for _, o, v in r["triplets"] if o >= 0]
            labels = torch.tensor([objects.index(label) for label, _ in pairs], dtype=torch.long)
            targets = torch.zeros(len(labels), len(verbs))
            targets[torch.arange(len(labels)), [verbs.index(v) for _, v in pairs]] = 1
            self.vocabulary = (objects, verbs, cooccurrence(labels, targets, len(objects)).tolist())
        objects, verbs, _ = self.vocabulary
        known = [r for r in rows if set(r["labels"]) <= set(objects) and all(v in verbs for *_, v in r["triplets"])]
        return {"images": [_image(r["image"]) for r in known],
                "targets": [{"boxes": torch.tensor(r["boxes"], dtype=torch.float32).reshape(-1, 4),
                             "labels": torch.tensor([objects.index(label) for label in r["labels"]]),
                             "hoi": torch.tensor([[s, o, verbs.index(v)] for s, o, v in r["triplets"] if o >= 0],
                                                 dtype=torch.long).reshape(-1, 3)} for r in known],
                "triplets": [r["triplets"] for r in known]}

    def config(self, options: dict[str, Any]) -> CHOIConfig:
        objects, verbs, table = self.vocabulary
        norm = options.get("norm", "frozen" if options.get("weights") else "group")
        if options.get("preset") == "tiny":
            return CHOIConfig.tiny(objects, verbs, semantic_table=table, norm=norm)
        return CHOIConfig(objects, verbs, semantic_table=table, norm=norm,
                          **{k: v for k, v in options.items() if k in ("backbone", "min_size", "max_size")})

    def build(self, options: dict[str, Any]) -> CascadeHOI:
        model = CascadeHOI(self.config(options))
        self.localization_steps, self.steps = int(options.get("localization_steps", 0)), 0
        if options.get("weights"):
            model.load_backbone(options["weights"])
        return model

    def loss(self, module: CascadeHOI, batch: dict, generator: torch.Generator) -> torch.Tensor:
        joint = self.steps >= self.localization_steps
        self.steps += 1
        return sum(module(batch["images"], batch["targets"], relations=joint).values())

    def files(self, module) -> dict[str, bytes]:
        """The model, plus the last evaluation's detections in the V-COCO and HICO-DET result formats (for the
        official scripts; V-COCO's reads a pickle of the JSON list). HICO-DET ids are the dataset's own when its
        names are ids (no names file at ingest), else 1-based vocabulary positions, listed in categories.json."""
        files = saved_files(module)
        if self.predictions is not None:
            objects, verbs = (_category_ids(names) for names in (module.config.object_classes[1:], module.config.verbs))
            files |= {"predictions/vcoco.json": _json(to_vcoco(self.predictions, module.config.verbs)),
                      "predictions/hico_det.json": _json(to_hico_det(self.predictions, objects, verbs,
                                                                      person_id=objects[PERSON])),
                      "predictions/categories.json": _json({"objects": objects, "verbs": verbs})}
        return files

    @torch.no_grad()
    def evaluate(self, module: CascadeHOI, data: dict) -> dict[str, float]:
        verbs = module.config.verbs
        detections, persons = [], []
        for index, (image, target, triplets) in enumerate(zip(data["images"], data["targets"], data["triplets"])):
            result = module([image])[0]
            boxes, labels = result["boxes"].tolist(), result["labels"].tolist()
            for (h, o), scores in zip(result["pairs"].tolist(), result["verb_scores"]):
                for verb, score in zip(verbs, scores.tolist()):
                    detections.append(Triplet(str(index), verb, tuple(boxes[h]), tuple(boxes[o]),
                                              score * float(result["scores"][h] * result["scores"][o]),
                                              module.config.object_classes[labels[o]]))
            people = (target["labels"] == module.config.human_label).nonzero().flatten().tolist()
            persons += image_persons(str(index), target["boxes"].tolist(), triplets, people)
        self.predictions = detections
        mean, per_verb = map_role(detections, persons)
        return {"map_role": mean, "map_role_scenario_2": map_role(detections, persons, scenario=2)[0],
                **{f"ap_role_{verb}": ap for verb, ap in per_verb.items() if not math.isnan(ap)}}
