"""The report of a dataset version, written into its `report/` folder before the manifest.

- `samples.png`: a grid of the first samples of the preview column (PNG bytes);
- `funnel.png`: rows surviving each stage, with the main reject reasons;
- `<name>.png`: pictures the pipeline adds (`Pipeline.report_pictures`);
- `index.html`: one self-contained page with all of them, stage throughput, shard timings, lineage, config.
"""

from __future__ import annotations

import base64
import io
import json

import jinja2
import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from hoi_factory.codec import encode_png, open_image  # noqa: E402

GRID_COLUMNS = 4
GRID_SAMPLES = 16
THUMBNAIL = 128


def sample_grid(images: list[bytes], captions: list[str] | None = None) -> bytes:
    """A PNG grid of up to GRID_SAMPLES images, each scaled to fit a THUMBNAIL square, captions beneath."""
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
            draw.text((x, y + thumbnail.height + 1), captions[i][:20], fill="black")
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
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def table_picture(header: list[str], rows: list[list[str]], title: str) -> bytes:
    """A table as a picture, for figures a report must show per group (e.g. a metric per category)."""
    figure, axis = plt.subplots(figsize=(1.3 * len(header), 0.6 + 0.3 * (len(rows) + 1)))
    axis.axis("off")
    table = axis.table(cellText=rows or [["-"] * len(header)], colLabels=header, loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(header))))
    axis.set_title(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def preview_images(version, column: str) -> tuple[list[bytes], list[str]]:
    """The first GRID_SAMPLES images of `column` and their input ids, read shard by shard."""
    images, captions = [], []
    for index in range(len(version.shards)):
        shard = version.read_shard(index, [column, "input_id"]).to_pylist()
        for row in shard:
            if row[column]:
                images.append(row[column])
                captions.append(row["input_id"].rsplit("/", 1)[-1])
        if len(images) >= GRID_SAMPLES:
            break
    return images[:GRID_SAMPLES], captions[:GRID_SAMPLES]


_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("hoi_factory", "templates"),
                                autoescape=jinja2.select_autoescape(["html", "j2"]))


def render_html(version, pictures: dict[str, bytes]) -> str:
    manifest = version.manifest
    encoded = {name: base64.b64encode(data).decode() for name, data in pictures.items()}
    seconds = manifest.run.get("seconds") or 0
    return _TEMPLATES.get_template("report.html.j2").render(
        m=manifest, pictures=encoded,
        extra_pictures={k: v for k, v in encoded.items() if k not in ("samples", "funnel")},
        samples_per_second=manifest.num_samples / seconds if seconds else 0.0,
        config_json=json.dumps(manifest.config, indent=2, sort_keys=True),
    )


def write_report(version, pipeline) -> dict[str, str]:
    """Write the report of `version` (not yet published, its manifest's metrics already measured by the run)
    and return {kind: path relative to the version}."""
    manifest = version.manifest
    pictures = {"funnel": funnel_chart(manifest.funnel, manifest.reject_reasons, f"{version.ref}: rejection funnel")}
    if pipeline.preview_column:
        images, captions = preview_images(version, pipeline.preview_column)
        if images:
            pictures["samples"] = sample_grid(images, captions)
    pictures.update(pipeline.report_pictures(version))
    files = {name: (f"report/{name}.png", data) for name, data in pictures.items()}
    files["html"] = ("report/index.html", render_html(version, pictures).encode())
    for path, data in files.values():
        version.store.write_bytes(data, "datasets", version.name, version.version, path)
    return {name: path for name, (path, _) in files.items()}
