"""What a report shows: a seeded random sample (not the first rows) with readable captions and full-size files,
example rejects, per-column statistics equal to numpy's, and every metric of the manifest."""

import base64
import io
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_report_page import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

from hoi_factory import report
from hoi_factory.codec import encode_png
from hoi_factory.datasets import DatasetStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store
from tasks.images.ingest import IngestConfig, IngestPipeline
from tasks.procedural.image_folder import write_image_folder
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def test_picked_rows_are_distinct_uniform_and_seeded():
    counts = [50, 0, 30, 20]
    picked = report.pick_rows(counts, 10, np.random.default_rng(7))
    assert picked == report.pick_rows(counts, 10, np.random.default_rng(7))
    assert picked != report.pick_rows(counts, 10, np.random.default_rng(8))
    assert 1 not in picked and sum(map(len, picked.values())) == 10
    for shard, rows in picked.items():
        assert rows == sorted(set(rows)) and all(0 <= row < counts[shard] for row in rows)
    # More asked than there are: every row once.
    assert report.pick_rows([2, 3], 16, np.random.default_rng(0)) == {0: [0, 1], 1: [0, 1, 2]}
    assert report.pick_rows([], 16, np.random.default_rng(0)) == {}
    # Uniform: over many seeds each of the 100 rows is drawn about 10 / 100 of the time.
    hits = np.zeros(100)
    starts = np.cumsum([0, *counts[:-1]])
    for seed in range(2000):
        for shard, rows in report.pick_rows(counts, 10, np.random.default_rng(seed)).items():
            hits[starts[shard] + np.array(rows)] += 1
    assert np.all(np.abs(hits / 2000 - 0.1) < 0.035)


def test_caption_fields_are_short_readable_scalars():
    table = pa.table({"sample_id": ["a", "b"], "seed": [1, 2], "image": [b"x", b"y"], "sha256": ["f" * 64, "e" * 64],
                      "body_part": ["", ""], "category": ["hat", "cup"], "values": [[1.0], [2.0]], "score": [0.5, 1.0],
                      "views": [3, 4]})
    assert report.caption_columns(table) == ["category", "score"]  # not ids, bytes, hashes, empty text, lists


def test_png_grid_captions_stay_in_their_cells():
    image = encode_png(np.full((120, 160, 3), 180, np.uint8))
    grid = np.asarray(Image.open(io.BytesIO(report.sample_grid([image] * 8, ["0123abcd " + "W" * 40] * 8))))
    # 160 x 120 scaled to fit THUMBNAIL: 128 x 96, in cells 4 pixels wider, the caption beneath.
    cell_width, caption_rows = report.THUMBNAIL + 4, grid[2 + 96:2 + 96 + 14]
    assert (caption_rows[:, :cell_width - 2] < 100).any()  # the caption is drawn...
    for boundary in range(cell_width, grid.shape[1], cell_width):  # ...and never across the 4 white pixels between
        assert (caption_rows[:, boundary - 2:boundary + 2] == 255).all()


def _expect_numbers(stats: dict, values, nulls: int):
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    assert (stats["count"], stats["nulls"], stats["non_finite"]) == (values.size, nulls, values.size - finite.size)
    assert stats["min"] == pytest.approx(finite.min()) and stats["max"] == pytest.approx(finite.max())
    assert stats["mean"] == pytest.approx(finite.mean())
    counts, edges = np.histogram(finite, bins=report.HISTOGRAM_BINS)
    assert [c for _, _, c in stats["histogram"]] == counts.tolist()
    assert stats["histogram"][0][0] == pytest.approx(edges[0]) and stats["histogram"][-1][1] == pytest.approx(edges[-1])


def test_column_statistics_equal_numpys():
    rng = np.random.default_rng(1)
    floats = rng.normal(3.0, 2.0, 200)
    floats[[3, 50]] = [np.nan, np.inf]
    float_cells = [None if i % 17 == 0 else float(v) for i, v in enumerate(floats)]
    ints = rng.integers(-5, 40, 200)
    lists = [list(rng.uniform(0, 1, n)) if n != 3 else None for n in rng.integers(0, 6, 200)]
    png, npy = encode_png(np.zeros((4, 4, 3), np.uint8)), b"\x93NUMPY" + bytes(10)
    binaries = [png if i % 2 else npy for i in range(199)] + [None]
    table = pa.table({
        "sample_id": [f"s{i}" for i in range(200)], "seed": list(range(200)),
        "score": pa.array(float_cells, pa.float32()), "count": pa.array(ints, pa.int32()),
        "ok": [bool(i % 3) for i in range(200)], "values": pa.array(lists, pa.list_(pa.float64())),
        "blob": pa.array(binaries, pa.binary()), "label": [["a", "b", "b"][i % 3] for i in range(200)],
    })
    stats = {column["name"]: column for column in report.column_statistics(table)}
    assert list(stats) == ["score", "count", "ok", "values", "blob", "label"]  # ids left out

    present = [v for v in float_cells if v is not None]
    _expect_numbers(stats["score"]["values"], np.float32(present), nulls=float_cells.count(None))
    _expect_numbers(stats["count"]["values"], ints, nulls=0)
    _expect_numbers(stats["ok"]["values"], [i % 3 != 0 for i in range(200)], nulls=0)
    present_lists = [cell for cell in lists if cell is not None]
    _expect_numbers(stats["values"]["lengths"], [len(cell) for cell in present_lists], nulls=lists.count(None))
    _expect_numbers(stats["values"]["values"], np.concatenate(present_lists), nulls=0)
    assert stats["blob"]["encoding"] == "npy, png"
    _expect_numbers(stats["blob"]["bytes"], [len(b) for b in binaries[:-1]], nulls=1)
    assert stats["label"]["distinct"] == 2 and stats["label"]["common"][0] == ("b", 133)


def _page(url: str, screenshot: Path | None = None, width: int = 1200) -> tuple[dict, list]:
    """Open `url` in Chromium; what it rendered (tile and caption boxes, tables, images) and its console errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 900})
        problems = []
        page.on("console", lambda message: message.type in ("error", "warning") and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(url)
        page.wait_for_load_state("load")
        seen = page.evaluate("""() => {
            const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
            const text = sel => Array.from(document.querySelectorAll(sel)).map(r => Array.from(r.cells).map(
                c => c.innerText));
            return {
              tiles: Array.from(document.querySelectorAll('#sample-grid .tile')).map(t => ({
                id: t.dataset.sampleId, box: box(t), href: t.querySelector('a').getAttribute('href'),
                caption: box(t.querySelector('figcaption')), text: t.querySelector('figcaption').innerText,
                lines: Array.from(t.querySelectorAll('figcaption span')).map(
                  s => [s.scrollWidth <= s.clientWidth || getComputedStyle(s).textOverflow === 'ellipsis',
                        box(s)]),
                image: [t.querySelector('img').complete, t.querySelector('img').naturalWidth]})),
              images: Object.fromEntries(Array.from(document.images).filter(i => i.id).map(
                i => [i.id, i.naturalWidth])),
              stats: Object.fromEntries(Array.from(document.querySelectorAll('#column-statistics tr[data-of]')).map(
                r => [r.dataset.column + '/' + r.dataset.of, Array.from(r.cells).map(c => c.innerText)])),
              scope: (document.getElementById('statistics-scope') || {}).innerText,
              rejects: text('#reject-examples tr'), metrics: text('#metrics-table tr'),
            };
        }""")
        if screenshot:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return seen, problems


def _intersect(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _assert_captions_fit(tiles: list[dict]):
    """Every caption line ends inside its tile (cut with an ellipsis when long); no two captions overlap."""
    for tile in tiles:
        left, top, right, bottom = tile["box"]
        for fits, (line_left, line_top, line_right, line_bottom) in tile["lines"]:
            assert fits and left <= line_left and line_right <= right and top <= line_top and line_bottom <= bottom
    captions = [tile["caption"] for tile in tiles]
    assert not any(_intersect(a, b) for i, a in enumerate(captions) for b in captions[i + 1:])


@needs_chromium
def test_long_captions_stay_inside_their_tiles_on_a_narrow_page(local_store_env, tmp_path):
    dataset = run_pipeline(SyntheticPipeline(), SyntheticConfig(count=3, work_ms=0, execution={"executor": "local"})
                           ).dataset
    thumbnail = base64.b64encode(encode_png(np.full((40, 90, 3), 200, np.uint8))).decode()
    tiles = [{"sample_id": f"{i:04d}" + "f" * 16, "input_id": "x" * 80, "file": "sample.png", "thumbnail": thumbnail,
              "fields": [("category", "W" * report.CAPTION_FIELD_CHARS), ("a_long_column_name_" * 3, 1e-7 * i)]}
             for i in range(report.GRID_SAMPLES)]
    page = tmp_path / "page.html"
    funnel = report.funnel_chart(dataset.manifest.funnel, {}, "funnel")
    page.write_text(report.render_html(dataset, {"funnel": funnel}, tiles))
    seen, problems = _page(page.as_uri(), width=520)
    assert problems == [] and len(seen["tiles"]) == report.GRID_SAMPLES
    _assert_captions_fit(seen["tiles"])


@needs_chromium
def test_report_shows_a_seeded_random_sample_rejects_and_column_statistics(local_store_env, tmp_path, monkeypatch):
    write_image_folder(tmp_path / "images", count=40, seed=3)
    config = IngestConfig(source=str(tmp_path / "images"), execution={"executor": "local", "shard_size": 8})
    dataset = run_pipeline(IngestPipeline(), config).dataset
    table = dataset.to_arrow(["sample_id", "image"])
    images = dict(zip(table.column("sample_id").to_pylist(), table.column("image").to_pylist()))
    url = dataset.store.link("datasets", dataset.name, dataset.version, dataset.manifest.report["html"])
    seen, problems = _page(url, ARTIFACTS / "report-content.png")
    assert problems == []

    # A random sample: 16 distinct samples of the version, not its first rows, from several shards.
    ids = [tile["id"] for tile in seen["tiles"]]
    assert len(set(ids)) == report.GRID_SAMPLES and set(ids) <= set(images)
    assert ids != list(images)[: report.GRID_SAMPLES]
    shard_of = {sample: i for i in range(len(dataset.shards)) for sample in dataset.read_shard(i, ["sample_id"])
                .column("sample_id").to_pylist()}
    assert len({shard_of[sample] for sample in ids}) > 1
    # Reproducible: the report of the same version draws the same samples, reading only the shards it picked.
    read = []
    monkeypatch.setattr(dataset, "read_shard", lambda i, columns=None, real=dataset.read_shard: (read.append(i),
                                                                                                  real(i, columns))[1])
    again = [tile["sample_id"] for tile in report.sample_tiles(dataset, "image")]
    assert sorted(again) == sorted(ids) and sorted(read) == sorted({shard_of[sample] for sample in ids})

    # Each tile: a decoded thumbnail linking to the full-size image, a caption inside its tile, overlapping none.
    report_folder = Path(url.removeprefix("file://")).parent
    for tile in seen["tiles"]:
        assert tile["image"][0] and tile["image"][1] > 0
        assert (report_folder / tile["href"]).read_bytes() == images[tile["id"]]
        assert tile["text"].split("\n")[0] == tile["id"][: report.ID_PREFIX] and "width 160" in tile["text"]
    _assert_captions_fit(seen["tiles"])

    # Rejects: the ones the run wrote, with their reasons.
    rejects = dataset.rejects().to_pylist()
    known = {(row["input_id"], row["stage"], row["reason"]) for row in rejects}
    shown = [tuple(row[1:5]) for row in seen["rejects"][1:]]
    assert len(shown) == min(len(rejects), report.REJECT_EXAMPLES)
    assert {(input_id, stage, reason) for input_id, _, stage, reason in shown} <= known

    # Statistics: of the shards the page names (at most STATS_SHARDS), equal to numpy's on those shards.
    files = re.findall(r"data/part-\d+\.parquet", seen["scope"])
    assert 0 < len(files) <= report.STATS_SHARDS
    shard_table = pa.concat_tables(pq.read_table(io.BytesIO(dataset.store.read_bytes(
        "datasets", dataset.name, dataset.version, file))) for file in files)
    sizes = np.array([len(cell) for cell in shard_table.column("image").to_pylist()], dtype=float)
    count, _, low, mean, high = seen["stats"]["image/bytes"][4:9]
    assert (int(count), float(low), float(high)) == (len(sizes), sizes.min(), sizes.max())
    assert float(mean) == pytest.approx(sizes.mean(), rel=1e-3)
    width = np.array(shard_table.column("width"), dtype=float)
    assert [float(v) for v in seen["stats"]["width/values"][6:9]] == [width.min(), width.mean(), width.max()]


def test_rejects_keep_a_thumbnail_of_the_image_a_stage_turned_down(local_store_env, image_folder):
    folder, expected = image_folder
    dataset = run_pipeline(IngestPipeline(), IngestConfig(source=str(folder), execution={"executor": "local"})).dataset
    rejects = {row["input_id"]: row for row in dataset.rejects().to_pylist()}
    assert {name: row["reason"] for name, row in rejects.items()} == expected
    # The sliver (300 x 20, grey) was turned down by ImageShapeFilter, which holds the decoded pixels: its
    # thumbnail is the image scaled into a 96 px square. Stages that never decoded anything keep none.
    sliver = np.asarray(Image.open(io.BytesIO(rejects["bad/sliver.png"]["thumbnail"])))
    assert sliver.shape == (6, 96, 3) and (sliver == 128).all()
    assert all(row["thumbnail"] is None for name, row in rejects.items() if name != "bad/sliver.png")
    page = dataset.store.read_bytes("datasets", dataset.name, dataset.version, dataset.manifest.report["html"]).decode()
    thumbnail = base64.b64encode(rejects["bad/sliver.png"]["thumbnail"]).decode()
    assert f'alt="rejected: aspect ratio too extreme" src="data:image/png;base64,{thumbnail}"' in page


class FamilySynthetic(SyntheticPipeline):
    """Metrics as the CHORUS occupancy pipeline measures them: families per category and their means."""

    def dataset_metrics(self, version) -> dict[str, float]:
        return {"pap/chair": 0.25, "pap/table": 0.75, "truth_iou/chair": math.nan, "truth_iou/table": 0.5,
                "pap": 0.5, "truth_iou": 0.5, "num_rows": float(len(version))}


@needs_chromium
def test_report_lists_every_metric_and_plots_their_families(tmp_path, monkeypatch):
    monkeypatch.setenv("HOI_STORE_URL", str(tmp_path / "store"))
    run_pipeline(FamilySynthetic(), SyntheticConfig(count=5, work_ms=0, execution={"executor": "local"}))
    dataset = DatasetStore(Store(str(tmp_path / "store"))).open("synthetic")
    metrics = dataset.manifest.metrics
    assert dataset.manifest.report["metrics"] == "report/metrics.png"
    seen, problems = _page(dataset.store.link("datasets", "synthetic", dataset.version, "report/index.html"))
    assert problems == []
    shown = dict(seen["metrics"][1:])
    assert set(shown) == set(metrics) and len(seen["metrics"]) == len(metrics) + 1
    for name, value in metrics.items():
        assert shown[name] == ("n/a" if value is None else f"{value:.4g}")
    assert seen["images"]["metric-families"] > 300
    assert report.metric_families(metrics) == {"pap": {"chair": 0.25, "table": 0.75},
                                               "truth_iou": {"chair": None, "table": 0.5}}
    # The list column of the synthetic pipeline: its lengths and values summarized.
    assert seen["stats"]["values/lengths"][4] == "5" and seen["stats"]["values/values"][4] == "40"
