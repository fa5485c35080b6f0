"""A dataset version's HTML report, opened in headless Chromium as a person would: pictures load, funnel drawn."""

import shutil
from pathlib import Path

import pytest

from hoi_factory.run import run_pipeline
from tasks.images.ingest import IngestConfig, IngestPipeline

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: no background calls that would be refused.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_page_shows_samples_funnel_and_stage_table(local_store_env, image_folder):
    from playwright.sync_api import sync_playwright

    folder, _ = image_folder
    dataset = run_pipeline(IngestPipeline(), IngestConfig(source=str(folder), execution={"executor": "local"})).dataset
    page_url = dataset.store.link("datasets", dataset.name, dataset.version, dataset.manifest.report["html"])
    assert page_url.startswith("file://")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(page_url)
        page.wait_for_load_state("load")
        loaded = page.evaluate("""() => Object.fromEntries(Array.from(document.images).map(
            img => [img.id || img.alt, [img.complete, img.naturalWidth, img.naturalHeight]]))""")
        funnel_rows = page.eval_on_selector_all("#funnel-table tr", "rows => rows.map(r => r.innerText)")
        reasons = page.eval_on_selector_all("#reasons tr td:first-child", "cells => cells.map(c => c.innerText)")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report-page.png"), full_page=True)
        browser.close()

    # The pictures decoded to real pixels: a thumbnail per sample (12 samples: all of them fit the grid) and the
    # funnel chart.
    tiles = [size for name, size in loaded.items() if name.startswith("sample ")]
    assert len(tiles) == dataset.manifest.num_samples == 12 and all(done and width > 0 for done, width, _ in tiles)
    assert loaded["funnel"][0] and loaded["funnel"][1] > 300 and loaded["funnel"][2] > 150
    # The funnel table: a header, the inputs, then one row per stage with what went in and out.
    assert [row.split("\t")[:3] for row in funnel_rows[1:4]] == [["inputs", "", "16"], ["InputProblem", "16", "16"],
                                                                  ["ReadImage", "16", "13"]]
    assert set(reasons) == {"ReadImage: empty file", "ReadImage: unreadable image",
                            "ImageShapeFilter: aspect ratio too extreme"}
    assert (ARTIFACTS / "report-page.png").stat().st_size > 10_000
