"""Prefect flow: every pipeline that exists, at small scale, on the embedded defaults; then the models.

Each pipeline says what its demo run is (`Pipeline.demo_config`), with procedural STAND-IN inputs
(see tasks/procedural/), known-bad ones included, so the demo shows rejection funnels as well as samples.
Pipelines run in registration order, so one may feed on a dataset an earlier one made.

Then (`train_models`, the `demo-models` subflow) the factory's other half, at tiny scale:
- every model trained on the demo dataset it learns from, the way the retrain triggers do it
  (`retrain_on_publish`: a model version is made only for a dataset version no version of it learned from);
- a held-out HO3Pairs version; the affordance synthesis of its objects with the LayoutNet + ContentNet just
  trained, scored by the `affordance-evaluation` pipeline and by the `evaluate-hoi-synthesis` flow;
- retraining: two new HO3Pairs versions from new scenes, one with at least `RETRAIN_MIN_NEW_SAMPLES` samples
  (a new LayoutNet and ContentNet version), one with fewer (none);
- the factory dashboard.
The models are the tiny presets trained a few steps (ContentNet from a random tiny base, C-HOI from scratch), so
their metrics say the loop runs end to end, not what the papers' models learn. The metric networks are random
stand-ins unless `inception_weights` / `lpips_weights` name real files: FID and LPIPS are then plumbing only.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.storage import Store
from models.metrics import RANDOM  # a metric network with random weights
from tasks.ho3pairs.pipeline import PairsConfig

# model -> (trainer, the demo dataset it learns from, its TrainConfig): tiny presets, a few steps (~1 min on CPU)
DEMO_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "demo-layoutnet": ("layoutnet", "demo-ho3pairs",
                       {"steps": 40, "batch_size": 8, "learning_rate": 1e-3, "options": {"preset": "tiny"}}),
    "demo-contentnet": ("contentnet", "demo-ho3pairs",
                        {"steps": 8, "batch_size": 4, "learning_rate": 1e-4,
                         "options": {"base": "tiny", "image_size": 32}}),
    "demo-c-hoi": ("c-hoi", "demo-chorus-views",
                   {"steps": 10, "batch_size": 2, "learning_rate": 2e-3, "options": {"preset": "tiny"}}),
    "demo-srm": ("srm", "demo-hogsa-models",
                 {"steps": 10, "batch_size": 4, "learning_rate": 5e-3, "options": {"preset": "tiny"}}),
}
PAIRS = "demo-ho3pairs"
HELD_OUT = "demo-ho3pairs-heldout"
RETRAIN_MIN_NEW_SAMPLES = 12
# new procedural scenes (seed, count) for the HO3Pairs versions after the demo's (seed 0): held-out pairs,
# then one version with enough new samples to retrain and one with too few
HELD_OUT_SCENES, ENOUGH_SCENES, TOO_FEW_SCENES = (1, 6), (2, 16), (3, 4)


def demo_input_folder(settings: Settings) -> Path:
    """Beside the datasets when the store is local, else a temporary folder."""
    store = Store.from_settings(settings)
    return Path(store.path("inputs")) if store.is_local else Path(tempfile.mkdtemp(prefix="hoi-demo-"))


@flow(name="demo", description="every pipeline at small scale on procedural stand-in inputs, then every model")
def demo(executor: Literal["local", "ray"] = "ray", workers: int = 2, train_models: bool = True,
         inception_weights: str = RANDOM, lpips_weights: str = RANDOM) -> dict[str, Any]:
    """{"datasets": every pipeline run's summary, "models", "retraining", "evaluation", "dashboard", "seconds"}."""
    from flows.registry import PIPELINES, pipeline_class, pipeline_flow

    logger = get_run_logger()
    execution = ExecutionConfig(executor=executor, workers=workers, shard_size=16)
    inputs = demo_input_folder(Settings())
    results, configs, seconds = [], {}, {}
    with timed("datasets", seconds):
        for name in PIPELINES:
            config = pipeline_class(name)().demo_config(inputs / name, execution)
            if config is None:
                continue
            logger.info("demo: %s, stand-in inputs under %s", name, inputs / name)
            configs[name] = config
            results.append(pipeline_flow(name)(config))
    made = {"datasets": results, "models": [], "retraining": [], "evaluation": None, "dashboard": None,
            "seconds": seconds}
    if train_models:
        made_refs = {r["dataset"]: f"{r['dataset']}/{r['version']}" for r in results}
        made = merge(made, demo_models(made_refs, configs["ho3pairs"], inputs, inception_weights, lpips_weights))
    for line in summary(made):
        logger.info("%s", line)
    return made


@contextmanager
def timed(part: str, seconds: dict[str, dict[str, float]]):
    """Put the wall-clock and this process's CPU seconds of the block in `seconds[part]`."""
    wall, cpu = time.monotonic(), time.process_time()
    yield
    seconds[part] = {"wall": round(time.monotonic() - wall, 1), "cpu": round(time.process_time() - cpu, 1)}


def merge(datasets_part: dict[str, Any], models_part: dict[str, Any]) -> dict[str, Any]:
    return {**models_part, "datasets": datasets_part["datasets"] + models_part["datasets"],
            "seconds": {**datasets_part["seconds"], **models_part["seconds"]}}


def pairs_from_scenes(pairs: PairsConfig, folder: Path, scenes: tuple[int, int], dataset: str) -> dict[str, Any]:
    """The demo's HO3Pairs run on `count` new procedural scenes drawn with `seed`, into `dataset`."""
    from flows.registry import pipeline_flow
    from tasks.procedural.hand_object import write_hand_object_folder

    seed, count = scenes
    write_hand_object_folder(folder, count, seed=seed)
    config = pairs.model_copy(update={"inputs": str(folder),
                                      "output": pairs.output.model_copy(update={"dataset": dataset})})
    return pipeline_flow("ho3pairs")(config)


def train_on(model: str, dataset_ref: str, min_new_samples: int) -> dict[str, Any]:
    """`retrain_on_publish` of a demo model on one dataset version, and the model version that learned from it."""
    from flows.training import retrain_on_publish, trained_on

    trainer, _, config = DEMO_MODELS[model]
    seconds: dict[str, dict[str, float]] = {}
    with timed("run", seconds):
        outcome = retrain_on_publish(trainer, dataset_ref, {**config, "model": model}, min_new_samples)
    version = trained_on(dataset_ref, model)
    return {"model": model, "dataset": dataset_ref, "retrained": outcome["retrained"],
            "new_samples": outcome["new_samples"], "min_new_samples": min_new_samples,
            "version": version.version if version else None, "metrics": version.manifest.metrics if version else {},
            "seconds": seconds["run"]}


@flow(name="demo-models", description="every model trained on the demo datasets, evaluated, then retrained")
def demo_models(datasets: dict[str, str], pairs: PairsConfig, inputs: Path, inception_weights: str = RANDOM,
                lpips_weights: str = RANDOM) -> dict[str, Any]:
    """Train, synthesize, evaluate and retrain on the demo's datasets (`datasets`: name -> the `name/version`
    the demo made); `pairs` is the demo's HO3Pairs config."""
    from hoi_factory.dashboard import prefect_ui_url, ray_dashboard_url, write_dashboard

    seconds: dict[str, dict[str, float]] = {}
    with timed("training", seconds):
        models = [train_on(model, datasets[dataset], 1) for model, (_, dataset, _) in DEMO_MODELS.items()]
    with timed("evaluation", seconds):
        layoutnet, contentnet = (next(f"{m['model']}/{m['version']}" for m in models if m["model"] == name)
                                 for name in ("demo-layoutnet", "demo-contentnet"))
        held_out = pairs_from_scenes(pairs, inputs / "ho3pairs-heldout", HELD_OUT_SCENES, HELD_OUT)
        evaluated = synthesize_and_evaluate(f"{held_out['dataset']}/{held_out['version']}", layoutnet, contentnet,
                                            pairs.execution, inception_weights, lpips_weights)
    with timed("retraining", seconds):
        new_versions = [pairs_from_scenes(pairs, inputs / f"ho3pairs-{label}", scenes, PAIRS)
                        for label, scenes in (("more", ENOUGH_SCENES), ("few", TOO_FEW_SCENES))]
        retraining = [train_on(model, f"{version['dataset']}/{version['version']}", RETRAIN_MIN_NEW_SAMPLES)
                      for version in new_versions for model in ("demo-layoutnet", "demo-contentnet")]
    settings = Settings()
    dashboard = write_dashboard(Store.from_settings(settings), prefect_ui_url(settings.prefect_api_url),
                                ray_dashboard_url(settings.ray_address))
    return {"datasets": [held_out, *evaluated["datasets"], *new_versions], "models": models,
            "retraining": retraining, "evaluation": evaluated["evaluation"], "dashboard": dashboard,
            "seconds": seconds}


def synthesize_and_evaluate(held_out: str, layoutnet: str, contentnet: str, execution: ExecutionConfig,
                            inception_weights: str, lpips_weights: str) -> dict[str, Any]:
    """HOI images of the held-out objects by the model pair, scored by the affordance-evaluation pipeline (layout
    IoU and contact against the held-out truth; LPIPS with real weights only) and the evaluate-hoi-synthesis flow."""
    from flows.evaluation import EvalConfig, evaluate_hoi_synthesis
    from flows.registry import pipeline_flow
    from tasks.affordance.evaluation import EvaluationConfig
    from tasks.affordance.synthesis import SynthesisConfig

    synthesis = pipeline_flow("affordance-synthesis")(SynthesisConfig(
        objects=held_out, source="dataset", layoutnet=layoutnet, contentnet=contentnet, samples_per_object=2,
        size=32, steps=5, execution=execution, output={"dataset": "demo-affordance-synthesis"}))
    scored = pipeline_flow("affordance-evaluation")(EvaluationConfig(
        synthesized=f"{synthesis['dataset']}/{synthesis['version']}", held_out=held_out,
        lpips_weights=None if lpips_weights == RANDOM else lpips_weights, execution=execution,
        output={"dataset": "demo-affordance-evaluation"}))
    evaluation = evaluate_hoi_synthesis(EvalConfig(layoutnet=layoutnet, contentnet=contentnet, dataset=held_out,
                                                   steps=5, inception_weights=inception_weights,
                                                   lpips_weights=lpips_weights))
    return {"datasets": [synthesis, scored], "evaluation": evaluation}


def summary(made: dict[str, Any]) -> list[str]:
    """What the demo made, as lines for the log and the CLI (the datasets' table is the CLI's own)."""
    lines = [f"model {m['model']}/{m['version']} from {m['dataset']} "
             + (f"(trained in {m['seconds']['wall']} s, CPU {m['seconds']['cpu']} s)" if m["retrained"]
                else "(already there)") + f": {metrics_text(m['metrics'])}" for m in made["models"]]
    for r in made["retraining"]:
        outcome = (f"new version {r['model']}/{r['version']}" if r["retrained"] else
                   f"already trained: {r['model']}/{r['version']}" if r["version"] else "no new version")
        lines.append(f"retraining {r['model']} on {r['dataset']}: {r['new_samples']} new samples "
                     f"(needs {r['min_new_samples']}) -> {outcome}")
    if made["evaluation"]:
        evaluation = made["evaluation"]
        metrics = evaluation["metrics"]
        if RANDOM in (evaluation["config"]["inception_weights"], evaluation["config"]["lpips_weights"]):
            metrics = {k: v for k, v in metrics.items() if k not in ("fid", "lpips")}
            metrics["fid, lpips"] = "not shown (random metric networks: give inception_weights, lpips_weights)"
        lines.append(f"evaluation of {evaluation['contentnet']} on {evaluation['dataset']}: {metrics_text(metrics)}")
    if made["dashboard"]:
        lines.append(f"dashboard: {made['dashboard']}  (`hoi-factory dashboard --serve 0` serves it)")
    lines.append("took " + ", ".join(f"{part} {value['wall']} s (CPU {value['cpu']} s)"
                                     for part, value in made["seconds"].items()))
    return lines


def metrics_text(metrics: dict[str, Any]) -> str:
    """The headline figures (not the per-verb APs, nor where they were measured)."""
    return ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in metrics.items()
                     if k not in ("evaluated_on", "first_loss") and not k.startswith("ap_role_"))
