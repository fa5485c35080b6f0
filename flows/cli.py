"""The `hoi-factory` command line.

Imports are lazy: `--help` and a command's argument parsing import neither Prefect nor Ray nor any pipeline,
and a run's inputs are checked before Prefect or Ray start.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

if TYPE_CHECKING:
    from hoi_factory.storage import Store

app = typer.Typer(help="hoi-factory: hand-object and human-object interaction datasets, made at scale.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
datasets_app = typer.Typer(help="Dataset versions in the store.", no_args_is_help=True)
models_app = typer.Typer(help="Model versions in the store.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
console = Console()


def _fail(message: str, code: int | None = None) -> None:
    """Print the message; exit 2 for a user error, 1 for a run that failed."""
    if code is None:
        from hoi_factory.errors import USER_ERRORS

        code = 1 if isinstance(message, BaseException) and not isinstance(message, USER_ERRORS) else 2
    from rich.markup import escape

    from hoi_factory.scrub import scrub

    # escaped: a message quotes what was typed (`[a, b]`), which is not markup
    console.print(f"[bold red]error:[/] {escape(scrub(str(message), _settings().secrets()))}", highlight=False)
    raise typer.Exit(code)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors in what the user asked for, and runs failed by stage errors: shown as their message."""
    from hoi_factory.errors import NOT_RETRIED

    return NOT_RETRIED


def _settings():
    from hoi_factory.config import Settings

    return Settings()


def _store() -> Store:
    from hoi_factory.storage import Store

    return Store.from_settings(_settings())


def _usable_store(create: bool) -> Store:
    """The store, checked with one request (folder or bucket there, credentials accepted, answering); read
    commands pass create=False: a store that is not there is a wrong HOI_STORE_URL, not an empty store."""
    from hoi_factory.storage import Store

    store = Store.from_settings(_settings(), create=create)
    store.check_usable()
    return store


def _user_facing(command):
    """A command whose user errors (and runs failed by stage errors) end as their message, exit code 2 (1)."""

    @functools.wraps(command)
    def checked(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except _user_errors() as exc:
            _fail(exc)

    return checked


def _unknown(what: str, name: str, known) -> str:
    from hoi_factory.suggestions import did_you_mean

    return f"unknown {what} {name!r}{did_you_mean(name, known)} (available: {', '.join(sorted(known))})"


class _RunCommand(TyperCommand):
    """`run`'s help, then the settings of the pipeline named before --help (or the pipelines, if none is)."""

    def parse_args(self, ctx, args):
        ctx.meta["run_args"] = list(args)  # --help is answered while parsing, before arguments are bound
        return super().parse_args(ctx, args)

    def format_help(self, ctx, formatter) -> None:
        super().format_help(ctx, formatter)
        from flows.registry import PIPELINES

        named = next((arg for arg in ctx.meta.get("run_args", []) if arg in PIPELINES), None)
        if named is None:
            console.print(f"pipelines: {', '.join(sorted(PIPELINES))}\n"
                          "`hoi-factory run PIPELINE --help` lists a pipeline's settings.", highlight=False)
        else:
            _print_settings(named)


def _print_settings(pipeline: str) -> None:
    from flows.registry import pipeline_class
    from hoi_factory.config import RunConfig, field_docs

    chosen = pipeline_class(pipeline)
    docs = sorted(field_docs(chosen.config_class), key=lambda doc: doc.key.split(".")[0] in RunConfig.model_fields)
    table = _table(f"settings of {pipeline}: key=value overrides, or keys of a --config YAML file",
                   "setting", "type", "default", "description")
    for doc in docs:  # the pipeline's own settings first, then seed, execution.*, output.*
        table.add_row(*map(Text, doc))  # Text: `[1, 2]` and `name[/version]` are values, not markup
    console.print(f"{pipeline}: {chosen.description}", highlight=False)
    console.print(table)


def prefect_api_url() -> str | None:
    """The Prefect API this process would talk to: PREFECT_API_URL, the active Prefect profile's, or (when Prefect
    is already loaded, as under its test harness) Prefect's own setting. None: no server, only Prefect's
    temporary one, which costs ~10 s to start."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value()
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    try:
        profiles = tomllib.loads(Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).read_text())
        return profiles["profiles"][os.environ.get("PREFECT_PROFILE", profiles["active"])].get("PREFECT_API_URL")
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return None


def _with_progress(run, flow_run: bool = True):
    """Run `run()` with a rich progress bar fed by the flows' progress (samples); a `flow_run` is tagged with the
    store (`status` lists a store's runs by it)."""
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows import progress

    bars: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        def on_progress(label: str, done: int, total: int) -> None:
            if label not in bars:
                bars[label] = bar.add_task(label, total=total)
            bar.update(bars[label], completed=done, total=total)

        with progress.listening(on_progress), _store_tag() if flow_run else nullcontext():
            return run()


def _store_tag():
    from prefect import tags

    from flows.status import store_tag

    return tags(store_tag(_settings().store_url))


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _print_results(results: list[dict[str, Any]]) -> None:
    table = _table("datasets made", "dataset", "version", "samples", "rejects", "seconds", "url")
    for r in results:
        version = f"{r['version']} (already there)" if r["reused"] else r["version"]
        table.add_row(r["dataset"], version, str(r["samples"]), str(r["rejects"]), str(r["seconds"]), r["url"])
    console.print(table)
    for r in results:
        console.print(f"report of {r['dataset']}/{r['version']}: {r['report']}", highlight=False, soft_wrap=True)


@app.command(cls=_RunCommand)
@_user_facing
def run(
    pipeline: str = typer.Argument(..., help="pipeline name (see `hoi-factory pipelines`)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. execution.workers=2"),
    prefect: Optional[bool] = typer.Option(
        None, "--prefect/--no-prefect",
        help="run as a Prefect flow (artifacts, events); default: when a Prefect API is configured"),
) -> None:
    """Run one pipeline into a new dataset version (or resume an interrupted one).

    With a Prefect API configured (PREFECT_API_URL or the active Prefect profile) the run is a flow run with
    artifacts and the hoi.dataset.published event; without one it runs in this process, the same dataset
    without Prefect's temporary server (--prefect starts that one instead)."""
    from flows.registry import PIPELINES, pipeline_class, pipeline_flow

    if pipeline not in PIPELINES:
        _fail(_unknown("pipeline", pipeline, PIPELINES))
    from hoi_factory.config import load_run_config
    from hoi_factory.run import check_run

    chosen = pipeline_class(pipeline)()
    run_config = load_run_config(chosen.config_class, config, overrides or [])
    settings = _settings()
    _usable_store(create=True)
    if prefect if prefect is not None else bool(prefect_api_url()):
        check_run(chosen, run_config, settings)  # before Prefect starts: plain messages, no traceback
        result = _with_progress(lambda: pipeline_flow(pipeline)(run_config))
    else:  # run_pipeline makes the same checks itself, before any work
        result = _with_progress(lambda: _run_in_process(chosen, run_config, settings), flow_run=False)
    _print_results([result])


def _run_in_process(pipeline, config, settings) -> dict[str, Any]:
    from flows import progress
    from hoi_factory.run import run_pipeline

    return run_pipeline(pipeline, config, settings, progress.run_progress(pipeline.name)).summary()


@app.command()
@_user_facing
def train(
    trainer: str = typer.Argument(..., help="what to train (hoi-factory train --help lists them)"),
    overrides: list[str] = typer.Argument(None, help="key=value settings, e.g. 'datasets=\\[ho3pairs]' model=NAME"),
    config_file: Path | None = typer.Option(None, "--config", help="YAML training config"),
) -> None:
    """Train a model on dataset versions and publish it to the model store (resumes a killed run)."""
    from hoi_factory.config import load_run_config
    from hoi_factory.datasets import DatasetStore
    from hoi_factory.training import TrainConfig

    config = load_run_config(TrainConfig, config_file, overrides or [])
    datasets = DatasetStore(_usable_store(create=False))
    for ref in [*config.datasets, *config.eval_datasets]:  # before Prefect starts: plain messages, no traceback
        datasets.open_ref(ref)
    from flows.training import TRAINERS, train_model  # after the checks: it imports Prefect and every model

    if trainer not in TRAINERS:
        _fail(_unknown("trainer", trainer, TRAINERS))
    result = _with_progress(lambda: train_model(trainer, config))
    console.print(f"[green]✓[/] {result['model']}/{result['version']}: {result['url']}")


@app.command()
def pipelines() -> None:
    """List the pipelines `run` knows."""
    from flows.registry import PIPELINES, pipeline_class

    for name in sorted(PIPELINES):
        console.print(f"[bold]{name}[/]: {pipeline_class(name).description}")


@app.command()
@_user_facing
def demo(
    executor: str = typer.Option("auto", help="auto (in-process for small plans), ray or local"),
    workers: int = typer.Option(2, min=1),
    models: bool = typer.Option(True, "--models/--no-models",
                                help="then train, evaluate and retrain every model on the demo's datasets"),
) -> None:
    """Run every pipeline at small scale on the embedded defaults, then train every model on what they made
    (tiny models, a few steps), evaluate them and show retraining; say what was made."""
    from flows.demo import demo as demo_flow
    from flows.demo import summary

    settings = _settings()
    console.print(f"store: [bold]{settings.store_url}[/]  (set HOI_STORE_URL to change)")
    _usable_store(create=True)
    made = _with_progress(lambda: demo_flow(executor=executor, workers=workers, train_models=models))
    _print_results(made["datasets"])
    for line in summary(made):
        console.print(line, highlight=False, soft_wrap=True)


@datasets_app.command("ls")
@_user_facing
def datasets_ls() -> None:
    """Every dataset and its published versions."""
    from hoi_factory.datasets import DatasetStore

    store = DatasetStore(_usable_store(create=False))
    table = _table(f"datasets in {store.store.url}", "name", "versions", "latest", "samples")
    for name in store.names():
        latest = store.open(name)
        table.add_row(name, " ".join(store.versions(name)), latest.version, str(latest.manifest.num_samples))
    console.print(table)


@datasets_app.command("show")
@_user_facing
def datasets_show(ref: str = typer.Argument(..., help="name or name/version")) -> None:
    """A version's manifest: counts, funnel, lineage, shards."""
    from hoi_factory.datasets import DatasetStore

    version = DatasetStore(_usable_store(create=False)).open_ref(ref)
    m = version.manifest
    console.print(f"[bold]{version.ref}[/]  {m.num_samples} samples, {m.num_rejects} rejected, "
                  f"{m.num_shards} shards, made {m.created} by {m.pipeline} ({m.code_version})")
    console.print(f"url: {version.url}")
    console.print(f"parents: {', '.join(m.parents) or '-'}   config hash: {m.config_hash}")
    funnel = _table("funnel", "step", "in", "out", "seconds")
    for step in m.funnel:
        funnel.add_row(step["stage"], str(step.get("rows_in", "")), str(step["rows_out"]), str(step.get("seconds", "")))
    console.print(funnel)
    for reason, count in sorted(m.reject_reasons.items(), key=lambda kv: -kv[1]):
        console.print(f"  rejected {count:>6}  {reason}")
    console.print_json(json.dumps(m.config))


@datasets_app.command("validate")
@_user_facing
def datasets_validate(ref: str = typer.Argument(..., help="name or name/version")) -> None:
    """Check every shard against the manifest (presence, checksums, rows, schema). Exit 1 on problems."""
    from hoi_factory.datasets import DatasetStore

    version = DatasetStore(_usable_store(create=False)).open_ref(ref)
    problems = version.validate()
    for problem in problems:
        console.print(f"[red]✗[/] {problem}")
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {version.ref}: {version.manifest.num_shards} shards match the manifest")


@datasets_app.command("export")
@_user_facing
def datasets_export(
    ref: str = typer.Argument(..., help="name or name/version"),
    dest: str = typer.Argument(..., help="a new or empty folder (path or s3:// URL)"),
    format: str = typer.Option(..., "--format", "-f", help="files (images + JSONL), webdataset (tar shards) or hf"),
) -> None:
    """Export a version for other tools: image files + JSONL, WebDataset tar shards, or a Hugging Face folder.
    Shards are verified as they are read; the export ends with SHA256SUMS."""
    from hoi_factory.datasets import DatasetStore
    from hoi_factory.export import export_version

    version = DatasetStore(_usable_store(create=False)).open_ref(ref)
    result = export_version(version, dest, format, _settings().storage_options(dest))
    console.print(f"[green]✓[/] {version.ref} -> {result.dest} ({result.format}): {result.samples} samples, "
                  f"{result.rejects} rejects, {result.files} files + SHA256SUMS", highlight=False, soft_wrap=True)


@models_app.command("ls")
@_user_facing
def models_ls() -> None:
    """Every model and its published versions."""
    from hoi_factory.model_store import ModelStore

    store = ModelStore(_usable_store(create=False))
    table = _table(f"models in {store.store.url}", "name", "versions", "latest")
    for name in store.names():
        table.add_row(name, " ".join(store.versions(name)), store.area.latest(name))
    console.print(table)


@models_app.command("show")
@_user_facing
def models_show(ref: str = typer.Argument(..., help="name or name/version")) -> None:
    """A model version: files, metrics, the datasets it was trained on."""
    from hoi_factory.model_store import ModelStore

    model = ModelStore(_usable_store(create=False)).open_ref(ref)
    m = model.manifest
    console.print(f"[bold]{m.name}/{m.version}[/]  made {m.created}\nurl: {model.url}")
    console.print(f"trained on: {', '.join(m.datasets) or '-'}")
    for file, info in sorted(m.files.items()):
        console.print(f"  {info.size:>12,d}  {file}")
    console.print_json(json.dumps({"metrics": m.metrics, "config": m.config}))


@app.command()
def dashboard(
    serve: Optional[int] = typer.Option(None, "--serve", metavar="PORT", min=0, max=65535,
                                        help="then serve it on http://127.0.0.1:PORT (0: a free port)"),
    ray_dashboard: Optional[str] = typer.Option(None, help="Ray dashboard URL; default: RAY_ADDRESS's host, :8265"),
) -> None:
    """Write the factory dashboard, <store>/dashboard/index.html: every dataset and model version, the lineage
    graph, metrics across versions, links to the reports. --serve PORT then serves it and the pages it links."""
    from hoi_factory.dashboard import prefect_ui_url, ray_dashboard_url, write_dashboard
    from hoi_factory.dashboard import serve as dashboard_server

    settings, store = _settings(), _store()
    try:
        link = write_dashboard(store, prefect_ui_url(settings.prefect_api_url or prefect_api_url()),
                               ray_dashboard or ray_dashboard_url(settings.ray_address))
    except _user_errors() as exc:
        _fail(exc)
    console.print(f"[green]✓[/] dashboard: {link}", highlight=False, soft_wrap=True)
    if serve is None:
        return
    try:
        server = dashboard_server(store, serve)
    except OSError as exc:
        _fail(f"cannot serve on port {serve}: {exc}")
    console.print(f"serving http://127.0.0.1:{server.server_address[1]}/dashboard/index.html (Ctrl-C stops)",
                  highlight=False, soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def status(runs: int = typer.Option(10, min=0, help="recent flow runs to show")) -> None:
    """Where the factory points, recent flow runs, the Ray cluster, and what is in the store."""
    from flows.status import ray_cluster, recent_flow_runs

    settings = _settings()
    console.print(f"store:   {settings.store_url}")
    api = settings.prefect_api_url or prefect_api_url()
    console.print(f"prefect: {api or 'none (runs work in-process; set PREFECT_API_URL, or run --prefect)'}")
    if settings.ray_address:
        try:
            cluster = ray_cluster(settings.ray_address)
            console.print(f"ray:     {settings.ray_address}: {cluster['nodes']} nodes, {cluster['cpus']:g} CPUs, "
                          f"{cluster['gpus']:g} GPUs, dashboard {cluster['dashboard'] or '-'}")
        except Exception as exc:  # status must still show the rest
            console.print(f"ray:     {settings.ray_address}: [red]unreachable[/] ({exc})")
    else:
        console.print("ray:     local (started by each run; set RAY_ADDRESS for a cluster)")
    if runs:
        try:
            rows = recent_flow_runs(settings.store_url, runs)
        except Exception as exc:
            console.print(f"[red]flow runs unavailable:[/] {exc}")
        else:
            table = _table("recent flow runs", "flow", "run", "state", "started", "seconds")
            for row in rows:
                seconds = f"{row.seconds:.1f}" if row.seconds is not None else ""
                table.add_row(row.flow, row.name, row.state, row.started, seconds)
            console.print(table)
    from hoi_factory.storage import StoreError

    try:
        _usable_store(create=False)
    except StoreError as exc:  # status shows where things point, usable or not
        console.print(f"[red]store unusable:[/] {exc}", highlight=False)
        return
    datasets_ls()
    models_ls()


if __name__ == "__main__":
    app()
