"""HOI annotations in the HICO-DET / V-COCO style -> an HOI dataset version (what the C-HOI recognizer trains on).

Input: the JSON list used by the public HICO-DET and V-COCO conversions (PPDM, QPIC), one entry per image:
    {"file_name": "HICO_train2015_00000001.jpg",
     "annotations": [{"bbox": [x0, y0, x1, y1], "category_id": 1}, ...],
     "hoi_annotation": [{"subject_id": 0, "object_id": 1, "category_id": 73}, ...]}
(`object_id` -1: the role has no object, e.g. occluded or out of frame). Such a triplet is kept, with
`hoi_objects` -1, so the evaluation counts the person among the ground truth (V-COCO's npos); the recognizer
trains on the pairs only. Names come from optional {id: name} maps (`object_names`, `verb_names` files);
without them the ids are the names.

Output rows: `image` (PNG), `boxes` (K x 4 floats), `labels` (K names), `hoi_subjects`,
`hoi_objects` (indices into the boxes, -1: none) and `hoi_verbs` (names). A malformed file stops the plan
naming it; a malformed entry is rejected with its reason.
"""

from __future__ import annotations

import json
import math
import posixpath

import fsspec
import numpy as np
import pyarrow as pa
from pydantic import Field

from hoi_factory.columns import column
from hoi_factory.config import RunConfig
from hoi_factory.context import StageContext
from hoi_factory.pipeline import Pipeline, PlanError
from hoi_factory.stage import MapStage, Reject, Row
from tasks.images.stages import EncodePNG, ReadImage

HOI_SCHEMA = pa.schema([
    column("image", pa.binary(), "the image, as read (RGB)", encoding="png"),
    column("width", pa.int32(), "image width", unit="pixels"),
    column("height", pa.int32(), "image height", unit="pixels"),
    column("boxes", pa.float32(), "the annotated boxes: x0, y0, x1, y1", shape=(None, 4), unit="pixels",
           frame="image (origin top left, y down)"),
    column("labels", pa.string(), "each box's object name (category id without a names file)", shape=(None,)),
    column("hoi_subjects", pa.int32(), "each triplet's person: an index into boxes", shape=(None,)),
    column("hoi_objects", pa.int32(), "each triplet's object: an index into boxes (-1: no object)", shape=(None,)),
    column("hoi_verbs", pa.string(), "each triplet's verb name (verb id without a names file)", shape=(None,)),
])


class HOIAnnotationsConfig(RunConfig):
    annotations: str = Field(..., description="the HICO-DET / V-COCO style JSON file (path or URL)")
    images: str = Field(..., description="folder holding the files the JSON names")
    object_names: str | None = Field(None, description="JSON {category id: name}; default: ids as names")
    verb_names: str | None = Field(None, description="JSON {verb id: name}; default: ids as names")
    limit: int | None = Field(None, ge=1, description="only the first N entries")


def _read_json(url: str, what: str, context: StageContext):
    try:
        with fsspec.open(url, "rb", **context.storage_options(url)) as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise PlanError(f"{what} {url!r} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanError(f"{what} {url!r} is not valid JSON: {exc}") from None


def _names(url: str | None, what: str, context: StageContext) -> dict[str, str]:
    if url is None:
        return {}
    names = _read_json(url, what, context)
    if not isinstance(names, dict):
        raise PlanError(f"{what} {url!r} must be a JSON object {{id: name}}")
    return {str(k): str(v) for k, v in names.items()}


def _box(value) -> list[float] | None:
    if not isinstance(value, list) or len(value) != 4 or not all(isinstance(v, (int, float)) for v in value):
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in value)
    except OverflowError:  # a JSON integer beyond any float
        return None
    return [x0, y0, x1, y1] if all(math.isfinite(v) for v in (x0, y0, x1, y1)) and x1 > x0 and y1 > y0 else None


def parse_entry(entry, object_names: dict[str, str], verb_names: dict[str, str]) -> dict | str:
    """One JSON entry -> its boxes, labels and triplets, or the reason it is unusable."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
        return "entry without a file_name"
    annotations, triplets = entry.get("annotations"), entry.get("hoi_annotation")
    if not isinstance(annotations, list) or not isinstance(triplets, list):
        return "entry without annotations and hoi_annotation lists"
    boxes, labels = [], []
    for annotation in annotations:
        box = _box(annotation.get("bbox")) if isinstance(annotation, dict) else None
        if box is None or "category_id" not in annotation:
            return "malformed box annotation"
        boxes.append(box)
        labels.append(object_names.get(str(annotation["category_id"]), str(annotation["category_id"])))
    subjects, objects, verbs = [], [], []
    for triplet in triplets:
        if not isinstance(triplet, dict) or not all(k in triplet for k in ("subject_id", "object_id", "category_id")):
            return "malformed hoi_annotation"
        subject, obj = triplet["subject_id"], triplet["object_id"]
        if (not isinstance(subject, int) or not isinstance(obj, int) or not 0 <= subject < len(boxes)
                or not -1 <= obj < len(boxes)):
            return "hoi_annotation names a box that does not exist"
        subjects.append(subject)
        objects.append(obj)
        verbs.append(verb_names.get(str(triplet["category_id"]), str(triplet["category_id"])))
    return {"file_name": entry["file_name"], "boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": labels,
            "hoi_subjects": subjects, "hoi_objects": objects, "hoi_verbs": verbs}


class ParseHOIEntry(MapStage):
    """An annotation entry -> its boxes, labels, triplets and the `path` of its image; malformed entries are
    rejected with what is wrong."""

    needs = frozenset({"entry", "images", "object_names", "verb_names"})
    makes = frozenset({"boxes", "labels", "hoi_subjects", "hoi_objects", "hoi_verbs", "path"})

    def process_row(self, row: Row) -> Row | Reject:
        parsed = parse_entry(row["entry"], row["object_names"], row["verb_names"])
        if isinstance(parsed, str):
            return Reject.of(row, parsed)
        name = parsed.pop("file_name")
        if posixpath.normpath(name) == "." or "\x00" in name:  # would open the folder itself, or no file at all
            return Reject.of(row, "unusable file_name", repr(name))
        if posixpath.isabs(name) or ".." in posixpath.normpath(name).split("/"):
            return Reject.of(row, "image path leaves the images folder", name)
        return {**row, **parsed, "path": row["images"].rstrip("/") + "/" + name}


class HOIAnnotationsPipeline(Pipeline[HOIAnnotationsConfig]):
    name = "hoi-annotations"
    description = "HICO-DET / V-COCO style HOI annotations + images -> an HOI dataset (boxes, labels, triplets)"
    config_class = HOIAnnotationsConfig
    schema = HOI_SCHEMA
    item_keys = frozenset({"input_id", "entry", "images", "object_names", "verb_names"})
    preview_column = "image"

    def plan(self, config: HOIAnnotationsConfig, context: StageContext) -> list[dict]:
        entries = _read_json(config.annotations, "annotation file", context)
        if not isinstance(entries, list):
            raise PlanError(f"annotation file {config.annotations!r} must hold a JSON list of image entries")
        object_names = _names(config.object_names, "object names", context)
        verb_names = _names(config.verb_names, "verb names", context)
        entries = entries[: config.limit] if config.limit else entries
        return [{"input_id": f"{i}:{entry.get('file_name', '?') if isinstance(entry, dict) else '?'}", "entry": entry,
                 "images": config.images, "object_names": object_names, "verb_names": verb_names}
                for i, entry in enumerate(entries)]

    def stages(self, config: HOIAnnotationsConfig):
        return [ParseHOIEntry(), ReadImage(), EncodePNG()]
