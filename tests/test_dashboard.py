"""The factory dashboard over a real store: every version with its counts and metrics, the lineage graph from
inputs to datasets to models to datasets made with models, trends across versions; opened in headless Chromium
as a person would, served over HTTP, and written by `hoi-factory dashboard`."""

import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from pydantic import Field
from test_report_page import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from typer.testing import CliRunner

from flows.cli import app
from hoi_factory.config import Settings
from hoi_factory.dashboard import NODE_WIDTH, Factory, layout, lineage, read_factory, serve, write_dashboard
from hoi_factory.model_store import ModelStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store
from support.pipelines import ScaleConfig, ScalePipeline
from tasks.synthetic.pipeline import SyntheticConfig, SyntheticPipeline

LOCAL = {"executor": "local"}
MIN_TOTAL = 0.0  # the child keeps the parent samples whose total is at least this


class MeasuredSynthetic(SyntheticPipeline):
    """The synthetic pipeline with a figure per version: the mean of its totals."""

    def dataset_metrics(self, version):
        return version.column_means(["total"])


class TunedConfig(SyntheticConfig):
    model: str = Field(..., description="a model of the store (name: its latest), as pipelines that use one name it")


class Tuned(MeasuredSynthetic):
    name = "tuned"
    config_class = TunedConfig


@pytest.fixture(scope="module")
def factory_store(tmp_path_factory):
    """synthetic v1 (6) and v2 (9); scaled/v1 from synthetic/v1; model toy/v1 trained on synthetic/v1 and
    scaled/v1; tuned/v1 made with the model `toy` (then toy/v1); toy/v2 trained on synthetic/v2 afterwards."""
    settings = Settings(store_url=str(tmp_path_factory.mktemp("factory") / "store"))
    made = {}
    for count in (6, 9):
        version = run_pipeline(MeasuredSynthetic(), SyntheticConfig(count=count, work_ms=0, execution=LOCAL),
                               settings).dataset
        made[version.ref] = version
    scaled = run_pipeline(ScalePipeline(), ScaleConfig(parent="synthetic/v1", min_total=MIN_TOTAL, execution=LOCAL),
                          settings).dataset
    made[scaled.ref] = scaled
    models = ModelStore(Store.from_settings(settings))
    models.save("toy", {"weights.bin": b"first"}, metrics={"loss": 0.5, "evaluated_on": "training data"},
                datasets=["synthetic/v1", "scaled/v1"], card="# toy\n")
    tuned = run_pipeline(Tuned(), TunedConfig(count=4, work_ms=0, model="toy", execution=LOCAL), settings).dataset
    made[tuned.ref] = tuned
    models.save("toy", {"weights.bin": b"second"}, metrics={"loss": 0.25}, datasets=["synthetic/v2"])
    return Store.from_settings(settings), made


EXPECTED_EDGES = {
    ("input:synthetic inputs", "dataset:synthetic/v1"), ("input:synthetic inputs", "dataset:synthetic/v2"),
    ("dataset:synthetic/v1", "dataset:scaled/v1"), ("dataset:synthetic/v1", "model:toy/v1"),
    ("dataset:scaled/v1", "model:toy/v1"), ("dataset:synthetic/v2", "model:toy/v2"),
    ("input:tuned inputs", "dataset:tuned/v1"), ("model:toy/v1", "dataset:tuned/v1"),  # toy/v2 came after tuned
}


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_dashboard_page_shows_every_version_the_lineage_and_trends(factory_store):
    from playwright.sync_api import sync_playwright

    store, made = factory_store
    page_url = write_dashboard(store, prefect_ui="http://prefect.example:4200", ray_dashboard=None)
    assert page_url == Path(store.path("dashboard", "index.html")).as_uri()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        problems = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(page_url)
        page.wait_for_load_state("load")
        rows = page.eval_on_selector_all("table.versions tr[data-ref]", """rows => Object.fromEntries(rows.map(r => [
            r.dataset.ref, {cells: Array.from(r.cells).map(c => c.innerText.trim()),
                            metrics: Object.fromEntries(Array.from(r.querySelectorAll('.metric')).map(
                                m => [m.dataset.name, m.querySelector('.value').innerText])),
                            links: Array.from(r.querySelectorAll('a')).map(a => a.href)}]))""")
        edges = page.eval_on_selector_all("#lineage path.edge",
                                          "paths => paths.map(p => [p.dataset.from, p.dataset.to])")
        node_kinds = page.eval_on_selector_all("#lineage g.node", "gs => gs.map(g => [g.dataset.key, g.classList[1]])")
        trends = page.eval_on_selector_all("img.trend", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth])")
        prefect_link = page.get_attribute("#prefect-link", "href")
        has_ray_link = page.query_selector("#ray-link") is not None
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-page.png"), full_page=True)
        browser.close()

    assert problems == []
    # Every dataset version, its counts read back from its shards, its metric recomputed from them, its funnel.
    assert set(rows) == set(made) | {"toy/v1", "toy/v2"}
    for ref, version in made.items():
        totals = np.array(version.to_arrow(["total"]).column("total").to_pylist()) if ref != "scaled/v1" else None
        rejects = version.rejects().to_pylist()
        cells = rows[ref]["cells"]
        assert cells[3:7] == [str(version.manifest.num_inputs), str(len(version.to_arrow())),
                              str(sum(r["kind"] == "reject" for r in rejects)), "0"], ref
        if totals is not None:
            assert rows[ref]["metrics"] == {"mean_total": f"{totals.mean():.4g}"}, ref
        # The report link opens the version's own report page.
        report = Path(unquote(urlparse(rows[ref]["links"][0]).path))
        assert report == Path(store.path("datasets", version.name, version.version, "report", "index.html"))
        assert report.is_file()
    parent_totals = made["synthetic/v1"].to_arrow(["total"]).column("total").to_pylist()
    kept = sum(total >= MIN_TOTAL for total in parent_totals)
    assert rows["scaled/v1"]["cells"][8] == f"inputs 6 → ReadParentRows 6 → Scale {kept}"
    assert rows["toy/v1"]["metrics"] == {"loss": "0.5", "evaluated_on": "training data"}
    assert rows["toy/v2"]["cells"][2] == "synthetic/v2" and rows["toy/v2"]["links"] == []  # no card: no link
    assert Path(unquote(urlparse(rows["toy/v1"]["links"][0]).path)).read_text() == "# toy\n"
    # The lineage: exactly the recorded edges, and the dataset made with a model marked as such.
    assert {tuple(edge) for edge in edges} == EXPECTED_EDGES
    assert dict(node_kinds)["dataset:tuned/v1"] == "synthesized" and dict(node_kinds)["model:toy/v2"] == "model"
    # Trends where a name has more than one version, decoded to real pixels.
    assert sorted((alt, complete and width > 200) for alt, complete, width in trends) == [
        ("synthetic across versions", True), ("toy across versions", True)]
    assert prefect_link == "http://prefect.example:4200" and not has_ray_link
    assert (ARTIFACTS / "dashboard-page.png").stat().st_size > 20_000


def test_lineage_layout_keeps_every_edge_left_to_right_and_marks_lost_parents(factory_store):
    store, _ = factory_store
    factory = read_factory(store)
    without_synthetic = Factory(datasets={k: v for k, v in factory.datasets.items() if k != "synthetic"},
                                models=factory.models)
    nodes, edges = lineage(without_synthetic, lambda area, manifest: "")
    width, height, _ = layout(nodes, edges)
    # synthetic/v1 and v2 are gone from the store: still drawn, as missing sources of what was made from them.
    assert {key for key, node in nodes.items() if node.kind == "missing"} == {"dataset:synthetic/v1",
                                                                             "dataset:synthetic/v2"}
    assert {edge for edge in edges if edge[0].startswith("dataset:synthetic")} == {
        e for e in EXPECTED_EDGES if e[0].startswith("dataset:synthetic")}
    for source, target in edges:
        assert nodes[source].layer < nodes[target].layer, (source, target)
    corners = {(node.x, node.y) for node in nodes.values()}
    assert len(corners) == len(nodes)  # no two nodes drawn on top of each other
    assert all(0 <= node.x and node.x + NODE_WIDTH <= width and 0 <= node.y < height for node in nodes.values())


@contextmanager
def served(store: Store):
    """The dashboard server on a free port, and a GET of it: (status, body)."""
    server = serve(store, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, b""

    try:
        yield get
    finally:
        server.shutdown()
        server.server_close()


def test_served_dashboard_hands_out_pages_and_reports_but_no_data(factory_store):
    store, made = factory_store
    write_dashboard(store)
    with served(store) as get:
        status, page = get("/")
        assert status == 200 and b"hoi-factory dashboard" in page
        assert get("/dashboard/index.html") == (200, page)
        report = store.read_bytes("datasets", "scaled", "v1", "report", "index.html")
        assert get("/datasets/scaled/v1/report/index.html") == (200, report)
        assert get("/models/toy/v1/README.md") == (200, b"# toy\n")
        shard = made["scaled/v1"].shards[0].file
        for refused in ("/datasets/scaled/v1/manifest.json", f"/datasets/scaled/v1/{shard}",
                        "/dashboard/../datasets/scaled/v1/manifest.json", "/models/toy/v1/weights.bin"):
            assert get(refused)[0] == 404, refused


def test_an_s3_store_is_written_and_served_like_a_local_one(s3_store_env):
    settings = Settings()
    version = run_pipeline(SyntheticPipeline(), SyntheticConfig(count=3, work_ms=0, execution=LOCAL), settings).dataset
    store = Store.from_settings(settings)
    assert write_dashboard(store) == f"{s3_store_env}/dashboard/index.html"
    with served(store) as get:
        status, page = get("/dashboard/index.html")
        assert status == 200 and b'data-ref="synthetic/v1"' in page
        report = store.read_bytes("datasets", "synthetic", version.version, "report", "index.html")
        assert get(f"/datasets/synthetic/{version.version}/report/index.html") == (200, report)


def test_dashboard_command_writes_the_page_and_prints_its_link(factory_store, monkeypatch):
    store, _ = factory_store
    monkeypatch.setenv("HOI_STORE_URL", store.url)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")
    store.remove("dashboard", "index.html")
    result = CliRunner().invoke(app, ["dashboard"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    link = Path(store.path("dashboard", "index.html")).as_uri()
    assert link in " ".join(result.output.split())
    page = store.read_bytes("dashboard", "index.html").decode()
    assert 'href="http://head.example:8265"' in page and "scaled/v1" in page


def test_a_damaged_manifest_is_listed_without_hiding_the_rest(tmp_path):
    settings = Settings(store_url=str(tmp_path / "store"))
    for count in (3, 4):
        run_pipeline(SyntheticPipeline(), SyntheticConfig(count=count, work_ms=0, execution=LOCAL), settings)
    store = Store.from_settings(settings)
    manifest = Path(store.path("datasets", "synthetic", "v1", "manifest.json"))
    manifest.write_text(manifest.read_text().replace('"num_samples": 3', '"num_samples": 30'))
    factory = read_factory(store)  # v1 is still published, and now fails its checksum
    assert [m.version for m in factory.datasets["synthetic"]] == ["v2"]
    assert len(factory.problems) == 1 and factory.problems[0].startswith("datasets/synthetic/v1: ")
    page = Path(unquote(urlparse(write_dashboard(store)).path)).read_text()
    assert 'data-ref="synthetic/v2"' in page and "datasets/synthetic/v1: " in page
