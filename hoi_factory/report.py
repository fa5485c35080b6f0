"""The report of a dataset version, written into its `report/` folder before the manifest.

- `samples.png`: a grid of a seeded random choice of samples of the preview column (PNG bytes);
- `sample-<sample_id>.png`: each chosen sample at full size, linked from its tile on the page (flat names: the
  dashboard serves the files of `report/` itself, not of folders beneath it);
- `funnel.png`: rows surviving each stage, with the main reject reasons;
- `metrics.png`: bar plots of the metric families of `manifest.metrics` (`pap/<category>`, `truth_iou/<category>`);
- `<name>.png`: pictures the pipeline adds (`Pipeline.report_pictures`);
- `index.html`: one page with all of them, example rejects, per-column statistics (of a few sampled shards),
  every metric, stage throughput, shard timings, lineage, config.

Every choice (samples, rejects, shards for statistics) is seeded by the version's fingerprint, so the same run
makes the same report, and reads only the shards it picked, so a report costs the same at any dataset size.
Rejects keep ids, reason and detail, not their input: the page shows them as text, never as pictures.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections import Counter

import jinja2
import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from hoi_factory.codec import encode_png, open_image, thumbnail_png  # noqa: E402
from hoi_factory.columns import describe  # noqa: E402
from hoi_factory.datasets import ID_NAMES, encoding_of  # noqa: E402

GRID_COLUMNS = 4
GRID_SAMPLES = 16
THUMBNAIL = 128
REJECT_EXAMPLES = 8
STATS_SHARDS = 4  # statistics read at most this many shards, whatever the dataset's size
HISTOGRAM_BINS = 20
CAPTION_FIELDS = 2  # key fields under a sample's id in its caption
CAPTION_FIELD_CHARS = 24  # a string column with longer values is no caption field (hashes, paths of URLs)
ID_PREFIX = 8  # characters of a sample id shown in captions


def seeded_rng(version, purpose: str) -> np.random.Generator:
    """A generator seeded by the version's fingerprint and what it picks: the same version, the same choices."""
    digest = hashlib.sha256(f"{version.manifest.fingerprint}/{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def pick_rows(counts: list[int], size: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """`size` distinct rows drawn uniformly from shards holding `counts` rows: {shard: its sorted row numbers}."""
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    positions = np.sort(rng.choice(total, size=min(size, total), replace=False))
    shards = np.searchsorted(ends, positions, side="right")
    picked: dict[int, list[int]] = {}
    for shard, position in zip(shards.tolist(), positions.tolist()):
        picked.setdefault(shard, []).append(position - int(ends[shard] - counts[shard]))
    return picked


def short_text(value, chars: int = CAPTION_FIELD_CHARS) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def caption_columns(table: pa.Table) -> list[str]:
    """The first CAPTION_FIELDS scalar columns a person can read at a glance: numbers, booleans, short strings
    (not all empty)."""
    chosen = []
    for field in table.schema:
        if field.name in ID_NAMES or len(chosen) == CAPTION_FIELDS:
            continue
        kind = field.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            longest = pc.max(pc.utf8_length(table.column(field.name))).as_py() or 0
            if 0 < longest <= CAPTION_FIELD_CHARS:
                chosen.append(field.name)
        elif _is_number(kind):
            chosen.append(field.name)
    return chosen


def sample_tiles(version, column: str) -> list[dict]:
    """Up to GRID_SAMPLES rows drawn at random across the shards (reading only those), each with its image in
    `column`, its id, and the same caption fields; rows without an image are left out."""
    picked = pick_rows([shard.rows for shard in version.shards], GRID_SAMPLES, seeded_rng(version, "samples"))
    if not picked:
        return []
    table = pa.concat_tables([version.read_shard(shard).take(rows) for shard, rows in picked.items()])
    fields = caption_columns(table)
    return [{"sample_id": row["sample_id"], "input_id": row["input_id"], "image": row[column],
             "fields": [(name, row[name]) for name in fields]} for row in table.to_pylist() if row[column]]


def sample_grid(images: list[bytes], captions: list[str] | None = None) -> bytes:
    """A PNG grid of up to GRID_SAMPLES images, each scaled to fit a THUMBNAIL square, a caption beneath each,
    cut to its cell's width."""
    thumbnails = []
    for data in images[:GRID_SAMPLES]:
        thumbnail = open_image(data, "RGB")
        thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
        thumbnails.append(thumbnail)
    caption_height = 14 if captions else 0
    cell_w = max((t.width for t in thumbnails), default=THUMBNAIL) + 4
    cell_h = max((t.height for t in thumbnails), default=THUMBNAIL) + 4 + caption_height
    rows = max(1, -(-len(thumbnails) // GRID_COLUMNS))
    grid = Image.new("RGB", (GRID_COLUMNS * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, thumbnail in enumerate(thumbnails):
        x, y = (i % GRID_COLUMNS) * cell_w + 2, (i // GRID_COLUMNS) * cell_h + 2
        grid.paste(thumbnail, (x, y))
        if captions:
            caption = captions[i]
            while caption and draw.textlength(caption) > cell_w - 4:  # never into the next cell
                caption = caption[:-2] + "…"
            draw.text((x, y + thumbnail.height + 1), caption, fill="black")
    return encode_png(grid)


def stacked_rows(strips: list[bytes]) -> bytes:
    """PNG strips stacked top to bottom, one per line, on white (a pipeline's per-sample picture strips)."""
    images = [open_image(strip, "RGB") for strip in strips]
    width = max((image.width for image in images), default=1)
    sheet = Image.new("RGB", (width, sum(image.height + 4 for image in images) or 1), "white")
    top = 0
    for image in images:
        sheet.paste(image, (0, top))
        top += image.height + 4
    return encode_png(sheet)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def funnel_chart(funnel: list[dict], reasons: dict[str, int], title: str) -> bytes:
    """Horizontal bars: how many rows leave each step; the largest reject reasons listed beneath."""
    labels = [step["stage"] for step in funnel]
    counts = [step["rows_out"] for step in funnel]
    top_reasons = sorted(reasons.items(), key=lambda kv: -kv[1])[:6]
    figure, axis = plt.subplots(figsize=(7, 1.2 + 0.45 * len(labels) + 0.22 * len(top_reasons)))
    bars = axis.barh(labels[::-1], counts[::-1], color="#4C72B0")
    axis.bar_label(bars, padding=3)
    axis.set_xlabel("samples")
    axis.set_title(title)
    axis.margins(x=0.15)
    if top_reasons:
        text = "rejected: " + "; ".join(f"{reason} ({count})" for reason, count in top_reasons)
        figure.text(0.01, 0.01, text, fontsize=7, wrap=True)
        figure.subplots_adjust(bottom=0.12 + 0.05 * len(top_reasons))
    return _png(figure)


def table_picture(header: list[str], rows: list[list[str]], title: str) -> bytes:
    """A table as a picture, for figures a report must show per group (e.g. a metric per category)."""
    figure, axis = plt.subplots(figsize=(1.3 * len(header), 0.6 + 0.3 * (len(rows) + 1)))
    axis.axis("off")
    table = axis.table(cellText=rows or [["-"] * len(header)], colLabels=header, loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(header))))
    axis.set_title(title, fontsize=10)
    return _png(figure)


def metric_families(metrics: dict[str, float | None]) -> dict[str, dict[str, float | None]]:
    """`family/member` metrics grouped by family ({"pap": {"chair": 0.4, ...}}); plain names belong to none."""
    families: dict[str, dict[str, float | None]] = {}
    for name, value in metrics.items():
        family, slash, member = name.partition("/")
        if slash:
            families.setdefault(family, {})[member] = value
    return families


def metric_family_plot(families: dict[str, dict[str, float | None]], title: str) -> bytes:
    """One horizontal bar plot per metric family, its members as bars labelled with their values ("n/a" when
    the metric was not measured)."""
    figure, axes = plt.subplots(len(families), 1, squeeze=False,
                                figsize=(7, sum(0.7 + 0.28 * len(members) for members in families.values())),
                                gridspec_kw={"height_ratios": [max(1, len(m)) for m in families.values()]})
    for axis, (family, members) in zip(axes[:, 0], families.items()):
        names = list(members)[::-1]
        values = [members[name] for name in names]
        bars = axis.barh(names, [value or 0.0 for value in values], color="#55A868")
        axis.bar_label(bars, labels=[f"{value:.3g}" if value is not None else "n/a" for value in values],
                       padding=3, fontsize=8)
        axis.set_title(family, fontsize=10, loc="left")
        axis.tick_params(labelsize=8)
        axis.margins(x=0.2)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _png(figure)


def number_statistics(values: np.ndarray, nulls: int) -> dict:
    """count (non-null), nulls, non-finite count, and min/mean/max and a histogram of the finite values."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    stats = {"count": int(values.size), "nulls": nulls, "non_finite": int(values.size - finite.size),
             "min": None, "mean": None, "max": None, "histogram": []}
    if finite.size:
        counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS)
        stats.update(min=float(finite.min()), mean=float(finite.mean()), max=float(finite.max()),
                     histogram=[(float(edges[i]), float(edges[i + 1]), int(c)) for i, c in enumerate(counts)])
    return stats


def _numbers(array: pa.Array) -> tuple[np.ndarray, int]:
    """A numeric or boolean Arrow array's non-null values as floats, and its null count."""
    valid = pc.drop_null(array)
    if pa.types.is_boolean(array.type):
        valid = pc.cast(valid, pa.int8())
    return valid.to_numpy(zero_copy_only=False).astype(float), array.null_count


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _type_label(field: pa.Field) -> str:
    """The column's value type, with its declared shape and unit: `float (3, 3), pixels`."""
    info = describe(field)
    shape = f" {tuple(info['shape'])}" if "shape" in info else ""
    return info["dtype"] + shape + (f", {info['unit']}" if "unit" in info else "")


def column_statistics(table: pa.Table) -> list[dict]:
    """Per column (ids left out): numbers get count, nulls, min, mean, max and a histogram; list columns the same
    of their lengths and of their (flattened) numbers; binary columns their encoding and byte sizes; strings
    their distinct and most common values."""
    columns = []
    for field in table.schema:
        if field.name in ID_NAMES:
            continue
        array = table.column(field.name).combine_chunks()
        entry = {"name": field.name, "type": _type_label(field), "rows": len(array), "nulls": array.null_count}
        kind = field.type
        if _is_number(kind):
            entry.update(kind="number", values=number_statistics(*_numbers(array)))
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            entry.update(kind="list", lengths=number_statistics(*_numbers(pc.list_value_length(array))))
            flat = array
            while pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type) \
                    or pa.types.is_fixed_size_list(flat.type):
                flat = pc.list_flatten(flat)
            # None, not absent, for non-numbers (list<binary>): the template's c["values"] would find dict.values
            entry["values"] = number_statistics(*_numbers(flat)) if _is_number(flat.type) else None
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            declared = describe(field).get("encoding")
            found = Counter([declared] if declared else (encoding_of(v) for v in pc.drop_null(array).to_pylist()))
            entry.update(kind="binary", encoding=", ".join(sorted(found)) or "-",
                         bytes=number_statistics(*_numbers(pc.binary_length(array))))
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            common = Counter(pc.drop_null(array).to_pylist())
            entry.update(kind="string", distinct=len(common),
                         common=[(short_text(value, 32), count) for value, count in common.most_common(3)])
        else:
            entry["kind"] = "other"
        columns.append(entry)
    return columns


def sampled_statistics(version) -> dict:
    """Column statistics of at most STATS_SHARDS shards with samples, chosen at random (seeded), and which."""
    filled = [i for i, shard in enumerate(version.shards) if shard.rows]
    rng = seeded_rng(version, "statistics")
    chosen = sorted(rng.choice(filled, size=min(STATS_SHARDS, len(filled)), replace=False).tolist()) if filled else []
    tables = [version.read_shard(i) for i in chosen]
    table = pa.concat_tables(tables) if tables else None
    return {"shards": [version.shards[i].file for i in chosen], "of_shards": len(version.shards),
            "rows": table.num_rows if table is not None else 0,
            "columns": column_statistics(table) if table is not None else []}


def reject_examples(version) -> list[dict]:
    """Up to REJECT_EXAMPLES rejects (decisions and errors) drawn at random across the shards, reading only the
    reject files of the shards picked."""
    picked = pick_rows([shard.rejects for shard in version.shards], REJECT_EXAMPLES, seeded_rng(version, "rejects"))
    rows = [row for shard, rows in picked.items() for row in version.read_rejects(shard).take(rows).to_pylist()]
    return [{**row, "thumbnail": _b64(row["thumbnail"]) if row.get("thumbnail") else None} for row in rows]


_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("hoi_factory", "templates"),
                                autoescape=jinja2.select_autoescape(["html", "j2"]))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def render_html(version, pictures: dict[str, bytes], tiles: list[dict] | None = None,
                statistics: dict | None = None, rejects: list[dict] | None = None) -> str:
    manifest = version.manifest
    encoded = {name: _b64(data) for name, data in pictures.items()}
    seconds = manifest.run.get("seconds") or 0
    return _TEMPLATES.get_template("report.html.j2").render(
        m=manifest, shards=version.shards, pictures=encoded,
        extra_pictures={k: v for k, v in encoded.items() if k not in ("samples", "funnel", "metrics")},
        samples_per_second=manifest.num_samples / seconds if seconds else 0.0,
        config_json=json.dumps(manifest.config, indent=2, sort_keys=True),
        tiles=tiles or [], statistics=statistics, rejects=rejects or [], id_prefix=ID_PREFIX,
        plain_metrics={name: value for name, value in manifest.metrics.items() if "/" not in name},
        short_text=short_text,
    )


def sample_file(sample_id: str, image: bytes) -> str:
    """The file name of a sample's full-size image in `report/`, with its encoding's extension."""
    encoding = encoding_of(image)
    return f"sample-{sample_id}.{encoding if encoding != 'bytes' else 'bin'}"


def write_report(version, pipeline) -> dict[str, str]:
    """Write the report of `version` (not yet published, its manifest's metrics already measured by the run)
    and return {kind: path relative to the version} (the full-size sample files are linked from the page only)."""
    manifest = version.manifest
    pictures = {"funnel": funnel_chart(manifest.funnel, manifest.reject_reasons, f"{version.ref}: rejection funnel")}
    tiles = sample_tiles(version, pipeline.preview_column) if pipeline.preview_column else []
    if tiles:
        captions = [tile["sample_id"][:ID_PREFIX] + "".join(f" {short_text(v, 10)}" for _, v in tile["fields"])
                    for tile in tiles]
        pictures["samples"] = sample_grid([tile["image"] for tile in tiles], captions)
    families = metric_families(manifest.metrics)
    if families:
        pictures["metrics"] = metric_family_plot(families, f"{version.ref}: metrics")
    pictures.update(pipeline.report_pictures(version))
    files = {name: (f"report/{name}.png", data) for name, data in pictures.items()}
    for tile in tiles:
        tile["file"] = sample_file(tile["sample_id"], tile["image"])  # beside index.html: linked as is
        version.store.write_bytes(tile["image"], "datasets", version.name, version.version, "report", tile["file"])
        tile["thumbnail"] = _b64(thumbnail_png(tile.pop("image"), THUMBNAIL * 2))  # sharp on high-density screens
    page = render_html(version, pictures, tiles, sampled_statistics(version), reject_examples(version))
    files["html"] = ("report/index.html", page.encode())
    for path, data in files.values():
        version.store.write_bytes(data, "datasets", version.name, version.version, path)
    return {name: path for name, (path, _) in files.items()}
