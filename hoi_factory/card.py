"""The dataset card: a README.md in each version folder that Hugging Face `datasets` reads.

Its YAML header declares two configs, `samples` (data/*.parquet, the default) and `rejects` (rejects/*.parquet),
so `datasets.load_dataset(<version folder>)` no longer mixes the two schemas, and declares every column's feature,
with `image` for PNG/JPEG columns (declared, or judged from the bytes for versions before declarations), so images
come back decoded (PIL) instead of as bytes, and nested fixed-length lists for shaped arrays (K: 3 lists of 3),
which parse back to the shards' Arrow types. The body says what a person needs before using the data: counts,
columns (from the pipeline's declared schema: description, shape, unit, frame; see hoi_factory.columns), the
reject funnel, lineage and metrics from the manifest.

The card is written when the version is committed, after the report and the metrics and before the manifest,
which records its sha256 (`hoi-factory datasets validate` checks it). Versions made before cards have none;
`hoi-factory datasets export REF --format hf DEST` writes a card for any version.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

from hoi_factory.columns import describe
from hoi_factory.datasets import AREA, CARD, ID_FIELDS, IMAGE_ENCODINGS, REJECTS_SCHEMA, type_name

if TYPE_CHECKING:
    from hoi_factory.datasets import DatasetVersion

SAMPLES_CONFIG, REJECTS_CONFIG = "samples", "rejects"
SPLIT = "train"  # Hugging Face's name for a dataset's one split
# Rows per batch for `datasets`' Parquet reader: without it, it takes a file's first row group size, which is 0 for
# a shard without samples or rejects, and fails ("BatchSize must be greater than 0").
READ_BATCH_ROWS = 1024
# Columns every version has: what they mean does not depend on the pipeline.
FACTORY_COLUMNS = {
    **{field.name: describe(field)["description"] for field in ID_FIELDS},  # versions before declarations lack them
    "stage": "the stage that rejected the sample",
    "reason": "why (short and stable: counted in the funnel)",
    "detail": "more about this sample's rejection",
    "kind": "`reject` (a stage's decision) or `error` (a stage failed on the sample)",
    "thumbnail": "a small PNG of what the stage rejected (null: the stage keeps none; errors)",
}
ENCODING_NAMES = {"png": "PNG image", "png-mask": "PNG mask", "jpeg": "JPEG image", "npy": "NumPy .npy array",
                  "ply": "PLY mesh", "json": "JSON text", "safetensors": "safetensors tensors", "bytes": "bytes"}
_HF_NAMES = {"float": "float32", "double": "float64", "halffloat": "float16"}  # Arrow's names HF spells otherwise


def hf_feature(arrow_type: pa.DataType, encoding: str | None = None) -> dict[str, Any]:
    """A column's feature as the card's YAML writes it (without its name): {"dtype": ...}, {"list": ...} or
    {"struct": [...]}; image bytes become {"dtype": "image"}."""
    if encoding in IMAGE_ENCODINGS:
        return {"dtype": "image"}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        item = hf_feature(arrow_type.value_type)
        length = {"length": arrow_type.list_size} if pa.types.is_fixed_size_list(arrow_type) else {}
        return {"list": item["dtype"] if list(item) == ["dtype"] else item, **length}
    if pa.types.is_struct(arrow_type):
        return {"struct": [{"name": field.name, **hf_feature(field.type)} for field in arrow_type]}
    return {"dtype": _HF_NAMES.get(str(arrow_type), str(arrow_type))}


def _encoding(field: pa.Field, encodings: dict[str, str]) -> str | None:
    return encodings.get(field.name) or describe(field).get("encoding")


def _features(schema: pa.Schema, encodings: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": field.name, **hf_feature(field.type, _encoding(field, encodings))} for field in schema]


def card_header(schema: pa.Schema, encodings: dict[str, str]) -> dict[str, Any]:
    """The YAML header: the two configs with their data files and features."""
    return {
        "configs": [
            {"config_name": SAMPLES_CONFIG, "default": True, "batch_size": READ_BATCH_ROWS,
             "data_files": [{"split": SPLIT, "path": "data/*.parquet"}]},
            {"config_name": REJECTS_CONFIG, "batch_size": READ_BATCH_ROWS,
             "data_files": [{"split": SPLIT, "path": "rejects/*.parquet"}]},
        ],
        "dataset_info": [
            {"config_name": SAMPLES_CONFIG, "features": _features(schema, encodings)},
            {"config_name": REJECTS_CONFIG, "features": _features(REJECTS_SCHEMA, {"thumbnail": "png"})},
        ],
        "tags": ["hoi-factory"],
    }


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows), ""]


def _feature_label(feature: dict[str, Any]) -> str:
    """`float32`, `list of string`, `list[3] of list[3] of float32`, `struct`."""
    kind, value = next(iter(feature.items()))
    if kind == "dtype":
        return value
    if kind != "list":
        return kind
    length = f"[{feature['length']}]" if "length" in feature else ""
    return f"list{length} of {value if isinstance(value, str) else _feature_label(value)}"


def _describe(field: pa.Field) -> str:
    """The declared description, with the shape, unit and frame when declared."""
    info = describe(field)
    extras = [f"shape {tuple(info['shape'])}" if "shape" in info else "",
              f"unit: {info['unit']}" if "unit" in info else "", f"frame: {info['frame']}" if "frame" in info else ""]
    extras = "; ".join(extra for extra in extras if extra)
    text = info.get("description") or FACTORY_COLUMNS.get(field.name, "")
    return f"{text} ({extras})" if extras else text


def card_text(version: DatasetVersion, schema: pa.Schema, encodings: dict[str, str], location: str = "") -> str:
    """The card of `version` (whose folder, or a copy at `location`, holds data/ and rejects/)."""
    m = version.manifest
    location = location or version.url
    local = "://" not in location  # a local store gives plain paths
    folder = location if local else "DEST"
    header = yaml.safe_dump({"pretty_name": version.ref, **card_header(schema, encodings)}, sort_keys=False)
    lines = [
        "---", header.rstrip(), "---", "", f"# {version.ref}", "",
        f"Made by the hoi-factory pipeline `{m.pipeline}` ({m.code_version}) on {m.created}; "
        f"config hash `{m.config_hash}`. `manifest.json` holds the full config and every shard's sha256.", "",
        *_table(("inputs", "samples", "rejected", "errors", "shards"),
                [(m.num_inputs, m.num_samples, m.num_rejects, m.num_errors, m.num_shards)]),
        "## Loading", "",
        *([] if local else [f"`datasets` opens local folders: copy this one first with `hoi-factory datasets export "
                            f"{version.ref} DEST --format hf`.", ""]),
        "```python", "import datasets",
        "", f'samples = datasets.load_dataset("{folder}")["{SPLIT}"]  # images decoded (PIL)',
        f'rejects = datasets.load_dataset("{folder}", "{REJECTS_CONFIG}")["{SPLIT}"]', "```", "",
        "Checked reading (every shard against the manifest), torch streaming and exports: see the hoi-factory "
        "README (`DatasetStore.open_ref`, `to_torch_stream`, `hoi-factory datasets export`).", "",
        "## Columns", "",
        *_table(("column", "type", "stored as", "feature", "description"),
                [(f.name, type_name(f.type), ENCODING_NAMES.get(_encoding(f, encodings) or "", "value"),
                  _feature_label(hf_feature(f.type, _encoding(f, encodings))), _describe(f)) for f in schema]),
        f"The `{REJECTS_CONFIG}` config: one row per rejected or failed input.", "",
        *_table(("column", "description"), [(f.name, _describe(f)) for f in REJECTS_SCHEMA]),
        "## Funnel", "",
        *_table(("step", "in", "out", "errors"),
                [(s["stage"], s.get("rows_in", ""), s["rows_out"], s.get("errors", "")) for s in m.funnel]),
    ]
    if m.reject_reasons:
        lines += ["Reject reasons:", "",
                  *_table(("stage: reason", "count"), sorted(m.reject_reasons.items(), key=lambda kv: -kv[1]))]
    lines += ["## Lineage", ""]
    lines += [f"- made from `{parent}`" for parent in m.parents] or ["No parent dataset: made from raw inputs."]
    lines.append("")
    if m.metrics:
        lines += ["## Metrics", "", *_table(("metric", "value"),
                                             [(k, "not measured" if v is None else f"{v:.6g}")
                                              for k, v in sorted(m.metrics.items())])]
    return "\n".join(lines)


def write_card(version: DatasetVersion, schema: pa.Schema | None = None) -> str:
    """Write README.md into the version folder; returns its sha256 (for the manifest). `schema`: the samples'
    schema as the pipeline declared it (with any column descriptions); default: the shards'."""
    data = card_text(version, schema if schema is not None else version.schema(), version.encodings()).encode()
    version.store.write_bytes(data, AREA, version.name, version.version, CARD)
    return hashlib.sha256(data).hexdigest()
