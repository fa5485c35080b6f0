"""Pictures of a run, written into the version's `report/` folder before its manifest.

- `samples.png`: a grid of the first samples of the preview column (PNG bytes);
- `funnel.png`: rows surviving each stage, with the main reject reasons.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

GRID_COLUMNS = 4
GRID_SAMPLES = 16
THUMBNAIL = 128


def sample_grid(images: list[bytes], captions: list[str] | None = None) -> bytes:
    """A PNG grid of up to GRID_SAMPLES images, each fitted into a THUMBNAIL square."""
    images = images[:GRID_SAMPLES]
    rows = max(1, -(-len(images) // GRID_COLUMNS))
    cell = THUMBNAIL + 4
    grid = Image.new("RGB", (GRID_COLUMNS * cell, rows * (cell + 14)), "white")
    draw = ImageDraw.Draw(grid)
    for i, data in enumerate(images):
        thumbnail = Image.open(io.BytesIO(data)).convert("RGB")
        thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
        x, y = (i % GRID_COLUMNS) * cell + 2, (i // GRID_COLUMNS) * (cell + 14) + 2
        grid.paste(thumbnail, (x, y))
        if captions:
            draw.text((x, y + THUMBNAIL + 1), captions[i][:20], fill="black")
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
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
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def preview_images(version, column: str) -> list[bytes]:
    images: list[bytes] = []
    for index in range(len(version.manifest.shards)):
        images += [v for v in version.read_shard(index, [column]).column(column).to_pylist() if v]
        if len(images) >= GRID_SAMPLES:
            break
    return images[:GRID_SAMPLES]


def write_report(version, preview_column: str | None) -> dict[str, str]:
    """Write the pictures of `version` (not yet published) and return {kind: relative path}."""
    manifest = version.manifest
    files = {"funnel": funnel_chart(manifest.funnel, manifest.reject_reasons, f"{version.ref}: rejection funnel")}
    if preview_column:
        images = preview_images(version, preview_column)
        if images:
            files["samples"] = sample_grid(images)
    written = {}
    for kind, data in files.items():
        path = f"report/{kind}.png"
        version.store.write_bytes(data, "datasets", version.name, version.version, path)
        written[kind] = path
    return written
