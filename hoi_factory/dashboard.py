"""The factory dashboard: one page over the whole store, `<store>/dashboard/index.html`.

It lists every dataset and model version (when it was made, counts, reject funnel, metrics, a link to its report
or card), draws the lineage graph inputs -> datasets -> models -> datasets made with models, and plots each
name's metrics across its versions. It reads manifests only, never shards: O(versions) reads whatever the data.

Lineage comes from the manifests: a dataset's `parents`, a model's `datasets`. A dataset records no model it
used, so model edges are read from its config: a string equal to a model's `name/version`, or to a bare model
name (the newest version of that model published before the dataset). A dataset without dataset parents hangs
off an input node: the locations its config names (paths and URLs), or "<pipeline> inputs" when it names none.
"""

from __future__ import annotations

import base64
import http.server
import io
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import matplotlib
from pydantic import ValidationError

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from hoi_factory.datasets import DatasetManifest, DatasetStore  # noqa: E402
from hoi_factory.model_store import ModelManifest, ModelStore  # noqa: E402
from hoi_factory.report import _TEMPLATES  # noqa: E402
from hoi_factory.storage import Store, StoreError  # noqa: E402

FOLDER = "dashboard"
PAGE = "index.html"
MAX_PLOTTED_METRICS = 12  # per name: the table lists them all, the trend chart the first ones (sorted)
MAX_TICKS = 10  # labelled versions on a trend's axis
# Geometry of the lineage SVG (pixels).
COLUMN_WIDTH, NODE_WIDTH, NODE_HEIGHT, ROW_HEIGHT = 250, 200, 36, 50
KIND_TITLES = {"input": "inputs", "dataset": "datasets", "model": "models", "synthesized": "datasets made with models",
               "missing": "not in the store"}


@dataclass
class Node:
    key: str  # "<kind>:<ref or label>", unique in the graph
    kind: str  # a KIND_TITLES key
    label: str
    detail: str = ""
    link: str = ""
    layer: int = 0
    x: int = 0
    y: int = 0


@dataclass
class Factory:
    """What the store holds, read from manifests: versions oldest first within each name."""

    datasets: dict[str, list[DatasetManifest]] = field(default_factory=dict)
    models: dict[str, list[ModelManifest]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # versions whose manifest could not be read


def read_factory(store: Store) -> Factory:
    factory = Factory()
    for versioned, found in ((DatasetStore(store), factory.datasets), (ModelStore(store), factory.models)):
        for name in versioned.names():
            for version in versioned.versions(name):
                try:
                    found.setdefault(name, []).append(versioned.open(name, version).manifest)
                except (StoreError, ValidationError) as exc:  # one damaged manifest must not hide the factory
                    factory.problems.append(f"{versioned.area_name}/{name}/{version}: {str(exc).splitlines()[0]}")
    return factory


def _strings(value) -> list[str]:
    """Every string inside a config (nested dicts and lists)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _is_location(text: str) -> bool:
    return "://" in text or text.startswith(("/", "./", "../", "~"))


def models_used(manifest: DatasetManifest, models: dict[str, list[ModelManifest]]) -> list[str]:
    """The model versions a dataset's config names (see the module docstring)."""
    refs = set()
    for text in _strings(manifest.config):
        name, _, version = text.partition("/")
        if name not in models:
            continue
        if version:
            if any(m.version == version for m in models[name]):
                refs.add(text)
        elif before := [m for m in models[name] if m.created <= manifest.created]:
            refs.add(f"{name}/{max(before, key=lambda m: m.created).version}")
    return sorted(refs)


def lineage(factory: Factory, link) -> tuple[dict[str, Node], list[tuple[str, str]]]:
    """Nodes and edges (from key, to key) of the lineage graph; `link(area, manifest)` makes node links."""
    nodes: dict[str, Node] = {}
    edges: set[tuple[str, str]] = set()

    def node(kind: str, ref: str, **fields) -> str:
        key = f"{'dataset' if kind == 'synthesized' else kind}:{ref}"
        nodes.setdefault(key, Node(key, kind, ref, **fields))
        return key

    for name, manifests in factory.models.items():
        for m in manifests:
            key = node("model", f"{name}/{m.version}", detail=_metrics_line(m.metrics), link=link("models", m))
            for ref in m.datasets:
                edges.add((f"dataset:{ref}", key))
    for name, manifests in factory.datasets.items():
        for m in manifests:
            used = models_used(m, factory.models)
            key = node("synthesized" if used else "dataset", f"{name}/{m.version}", detail=f"{m.num_samples} samples",
                       link=link("datasets", m))
            edges.update((f"model:{ref}", key) for ref in used)
            edges.update((f"dataset:{ref}", key) for ref in m.parents)
            if not m.parents:
                locations = sorted({s for s in _strings(m.config) if _is_location(s)})
                label = ", ".join(locations) if locations else f"{m.pipeline} inputs"
                edges.add((node("input", label), key))
    for source, _ in edges:  # a parent or training set since deleted, or never in this store
        nodes.setdefault(source, Node(source, "missing", source.split(":", 1)[1]))
    return nodes, sorted(edges)


def layout(nodes: dict[str, Node], edges: list[tuple[str, str]]) -> tuple[int, int, list[tuple[int, list[str]]]]:
    """Longest-path layers (a node one column right of its furthest source; a node with no source, one column
    left of its nearest target), nodes ordered in each column by their sources' mean row (fewer crossings); sets
    x and y; returns the width, the height and each column's x and titles (the kinds it holds)."""
    sources: dict[str, list[str]] = {key: [] for key in nodes}
    targets: dict[str, list[str]] = {key: [] for key in nodes}
    for source, target in edges:
        sources[target].append(source)
        targets[source].append(target)
    layers: dict[str, int] = {}

    def layer(key: str, visiting: frozenset = frozenset()) -> int:
        if key not in layers:  # versions are immutable, so no cycle; a hand-edited manifest is cut off
            layers[key] = 1 + max((layer(s, visiting | {key}) for s in sources[key] if s not in visiting),
                                  default=-1)
        return layers[key]

    for key in nodes:
        layer(key)
    for key in nodes:  # an input beside the dataset it feeds, not in the first column with a long edge
        if not sources[key] and targets[key]:
            layers[key] = min(layers[t] for t in targets[key]) - 1
    columns: dict[int, list[Node]] = {}
    for key, item in nodes.items():
        item.layer = layers[key]
        columns.setdefault(item.layer, []).append(item)
    kinds = {index: sorted({n.kind for n in column}, key=list(KIND_TITLES).index) for index, column in columns.items()}
    top = 16 * max((len(k) for k in kinds.values()), default=1) + 14  # room for the titles
    row: dict[str, float] = {}
    for index in sorted(columns):
        columns[index].sort(key=lambda n: (  # stable: ties keep the store's order (names, then versions)
            sum(row[s] for s in sources[n.key]) / len(sources[n.key]) if sources[n.key] else -1, n.kind))
        for position, item in enumerate(columns[index]):
            row[item.key] = position
            item.x, item.y = 10 + index * COLUMN_WIDTH, top + position * ROW_HEIGHT
    titles = [(10 + index * COLUMN_WIDTH, [KIND_TITLES[kind] for kind in kinds[index]]) for index in sorted(columns)]
    width = 20 + max(columns, default=0) * COLUMN_WIDTH + NODE_WIDTH
    height = top + max((len(c) for c in columns.values()), default=1) * ROW_HEIGHT
    return width, height, titles


def edge_path(source: Node, target: Node) -> str:
    """SVG path data of an edge: a curve into the next column; past columns between, along the gap above the
    source's row (rows line up across columns, so the gap crosses no node)."""
    x1, y1, x2, y2 = source.x + NODE_WIDTH, source.y + NODE_HEIGHT // 2, target.x, target.y + NODE_HEIGHT // 2
    if target.layer == source.layer + 1:
        return f"M{x1},{y1} C{x1 + 30},{y1} {x2 - 30},{y2} {x2},{y2}"
    gap = source.y - (ROW_HEIGHT - NODE_HEIGHT) // 2
    return (f"M{x1},{y1} C{x1 + 20},{y1} {x1 + 20},{gap} {x1 + 40},{gap} L{x2 - 40},{gap} "
            f"C{x2 - 20},{gap} {x2 - 20},{y2} {x2},{y2}")


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _metrics_line(metrics: dict, limit: int = 2) -> str:
    shown = [f"{k} {v:.3g}" for k, v in sorted(metrics.items()) if _number(v) is not None][:limit]
    return ", ".join(shown)


def trend_chart(title: str, versions: list[str], series: dict[str, list[float | None]]) -> bytes:
    """Small line plots, one per series, over a name's versions (gaps where a version lacks the figure)."""
    ticks = list(range(len(versions)))[::-(-len(versions) // MAX_TICKS)]  # ticks cost: 900 took seconds a chart
    columns = min(4, len(series))
    rows = -(-len(series) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.2 * rows), squeeze=False)
    for axis, (metric, values) in zip(axes.flat, series.items()):
        ys = [math.nan if v is None else v for v in values]
        axis.plot(range(len(versions)), ys, marker="o" if len(versions) <= 50 else None, color="#4C72B0")
        axis.set_title(metric.replace("_", " "), fontsize=9)
        axis.set_xticks(ticks, [versions[i] for i in ticks], fontsize=7, rotation=45 if len(ticks) > 6 else 0)
        axis.tick_params(axis="y", labelsize=7)
        axis.margins(x=0.15, y=0.2)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(series):]:
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _series(manifests, base: dict) -> dict[str, list[float | None]]:
    """`base` (figures every version has) then the numeric metrics, the first MAX_PLOTTED_METRICS by name."""
    names = sorted({k for m in manifests for k, v in m.metrics.items() if _number(v) is not None})
    return {**base, **{k: [_number(m.metrics.get(k)) for m in manifests] for k in names[:MAX_PLOTTED_METRICS]}}


def trend_pictures(factory: Factory) -> dict[str, str]:
    """`<area>/<name>` -> base64 PNG of its figures across versions: for datasets the samples and the rejected
    share, then the metrics; names with one version have no trend and no picture."""
    pictures = {}
    for area, names in (("datasets", factory.datasets), ("models", factory.models)):
        for name, manifests in names.items():
            base = ({"samples": [float(m.num_samples) for m in manifests],
                     "rejected share": [m.num_rejects / m.num_inputs if m.num_inputs else None for m in manifests]}
                    if area == "datasets" else {})
            if len(manifests) > 1 and (series := _series(manifests, base)):
                pictures[f"{area}/{name}"] = base64.b64encode(
                    trend_chart(f"{area[:-1]} {name}", [m.version for m in manifests], series)).decode()
    return pictures


def _funnel_text(manifest: DatasetManifest) -> str:
    """`inputs 16 → ReadImage 13 → ...`: rows left after each step."""
    return " → ".join(f"{step['stage']} {step['rows_out']}" for step in manifest.funnel)


def _when(created: str) -> str:
    try:
        return datetime.fromisoformat(created).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return created


def render_dashboard(store: Store, factory: Factory, prefect_ui: str | None = None,
                     ray_dashboard: str | None = None) -> str:
    """The page's HTML: links relative to `<store>/dashboard/`, pictures embedded."""

    def link(area: str, m) -> str:
        if area == "datasets":
            return f"../datasets/{m.name}/{m.version}/{m.report['html']}" if m.report.get("html") else ""
        return f"../models/{m.name}/{m.version}/README.md" if "README.md" in m.files else ""

    nodes, edges = lineage(factory, link)
    width, height, titles = layout(nodes, edges)
    return _TEMPLATES.get_template("dashboard.html.j2").render(
        store_url=store.url, made=_when(datetime.now(timezone.utc).isoformat()), factory=factory, link=link,
        numeric=_number, funnel_text=_funnel_text, when=_when, models_used=lambda m: models_used(m, factory.models),
        nodes=list(nodes.values()), edges=[(nodes[a], nodes[b], edge_path(nodes[a], nodes[b])) for a, b in edges],
        graph=(width, height), titles=titles, node_size=(NODE_WIDTH, NODE_HEIGHT), trends=trend_pictures(factory),
        prefect_ui=prefect_ui, ray_dashboard=ray_dashboard,
    )


def write_dashboard(store: Store, prefect_ui: str | None = None, ray_dashboard: str | None = None) -> str:
    """Write `<store>/dashboard/index.html` (self-contained: pictures embedded) and return its link."""
    page = render_dashboard(store, read_factory(store), prefect_ui, ray_dashboard)
    store.write_bytes(page.encode(), FOLDER, PAGE)
    return store.link(FOLDER, PAGE)


def prefect_ui_url(api_url: str | None) -> str | None:
    """The Prefect UI of an API URL (`http://host:4200/api` -> `http://host:4200`)."""
    return re.sub(r"/api/?$", "", api_url) if api_url else None


def ray_dashboard_url(address: str | None) -> str | None:
    """The dashboard of a Ray cluster address, on Ray's default dashboard port 8265 (`ray://head:10001`,
    `head:6379` -> `http://head:8265`); None for a local Ray, which a dashboard run outlives."""
    if not address or address in ("auto", "local"):
        return None
    host = re.sub(r"^[a-z]+://", "", address).rsplit(":", 1)[0]
    return f"http://{host}:8265"


# What the server hands out: the dashboard, report folders and cards; never shards or manifests.
SERVED = re.compile(r"(dashboard/[^/]+|datasets/[^/]+/[^/]+/report/[^/]+|(datasets|models)/[^/]+/[^/]+/README\.md)")
CONTENT_TYPES = {"html": "text/html; charset=utf-8", "png": "image/png", "md": "text/plain; charset=utf-8"}


def serve(store: Store, port: int, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server (not yet serving: call `serve_forever`) for the dashboard and the pages it links to, read
    through the store, so an s3:// store is served as a local one."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].lstrip("/") or f"{FOLDER}/{PAGE}"
            if not SERVED.fullmatch(path) or ".." in path.split("/"):
                return self.send_error(404, "not part of the dashboard")
            try:
                data = store.read_bytes(*path.split("/"))
            except StoreError:
                return self.send_error(404)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPES.get(path.rsplit(".", 1)[-1], "application/octet-stream"))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # quiet: the CLI prints the link, not every request
            pass

    return http.server.ThreadingHTTPServer((host, port), Handler)
