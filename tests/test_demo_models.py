"""The demo's model part (flows/demo.py `demo_models`) on the smallest demo datasets: every model trained and
published with its lineage, the affordance synthesis and both evaluations of the pair on held-out pairs, retraining
on a version with enough new samples and not on one with too few; run again, nothing is made twice."""

import json
import math

import numpy as np
import pytest
import torch

from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.model_store import ModelStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store

LOCAL = ExecutionConfig(executor="local", shard_size=16)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """The datasets the demo's models learn from, under the demo's names, each as small as it can be made."""
    from tasks.chorus.prompts import PromptsConfig, PromptsPipeline
    from tasks.chorus.views import ViewsConfig, ViewsPipeline
    from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline
    from tasks.hogsa.hogs_models import HOGSModelsConfig, HOGSModelsPipeline
    from tasks.procedural.hand_object import write_hand_object_folder

    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOI_STORE_URL", str(root / "store"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: threads only contend
        write_hand_object_folder(root / "inputs" / "ho3pairs", 8, seed=0)
        pairs = PairsConfig(inputs=str(root / "inputs" / "ho3pairs"), inpainter="biharmonic", sdedit="none", size=64,
                            max_seam_score=1e9, execution=LOCAL, output={"dataset": "demo-ho3pairs"})
        made = [run_pipeline(PairsPipeline(), pairs).dataset]
        run_pipeline(PromptsPipeline(), PromptsConfig(categories=["cup"], prompts_per_category=2, viewpoints=False,
                                                      execution=LOCAL, output={"dataset": "demo-chorus-prompts"}))
        made.append(run_pipeline(ViewsPipeline(), ViewsConfig(
            prompts="demo-chorus-prompts", images_per_prompt=2, calibration="given", execution=LOCAL,
            output={"dataset": "demo-chorus-views"})).dataset)
        made.append(run_pipeline(HOGSModelsPipeline(), HOGSModelsConfig(
            sequences=["box"], iterations=10, source={"size": 32, "cameras": 4, "frames": 1}, gaussians_per_face=1,
            sh_degree=0, execution=LOCAL, output={"dataset": "demo-hogsa-models"})).dataset)
        yield {"datasets": {version.name: version.ref for version in made}, "pairs": pairs, "inputs": root / "inputs"}
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_part(demo_store, prefect_harness):
    """The model part run twice: what each run returned."""
    from flows.demo import demo_models

    arguments = (demo_store["datasets"], demo_store["pairs"], demo_store["inputs"])
    return demo_models(*arguments), demo_models(*arguments)


def test_every_model_is_published_with_the_dataset_version_it_learned_from(demo_store, model_part):
    from flows.demo import DEMO_MODELS
    from models.affordance.layoutnet import LayoutNet

    first, _ = model_part
    store = Store.from_settings(Settings())
    models, datasets = ModelStore(store), DatasetStore(store)
    assert set(DEMO_MODELS) <= set(models.names())
    for name, (trainer, dataset, config) in DEMO_MODELS.items():
        version = models.open(name, "v1")
        learned_from = demo_store["datasets"][dataset]
        assert version.manifest.datasets == [learned_from] and version.validate() == []
        assert version.manifest.metrics["steps"] == config["steps"] and version.manifest.metrics["examples"] > 0
        assert math.isfinite(version.manifest.metrics["final_loss"])
        assert json.loads(version.read_bytes("training.json"))["datasets"] == [learned_from]
        assert {"model": name, "version": "v1", "dataset": learned_from, "retrained": True} \
            .items() <= next(m for m in first["models"] if m["model"] == name).items()
    # LayoutNet saw every HO3Pairs sample, and its weights load back
    layoutnet = models.open("demo-layoutnet", "v1")
    pairs = datasets.open_ref(demo_store["datasets"]["demo-ho3pairs"])
    assert layoutnet.manifest.metrics["examples"] == pairs.manifest.num_samples
    loaded = LayoutNet.from_pretrained(layoutnet.url)
    assert all(torch.isfinite(p).all() for p in loaded.parameters())


def test_retraining_makes_a_version_for_enough_new_samples_and_none_for_too_few(model_part):
    from flows.demo import RETRAIN_MIN_NEW_SAMPLES, summary
    from flows.training import trained_on

    first, _ = model_part
    store = Store.from_settings(Settings())
    pairs = DatasetStore(store)
    assert pairs.versions("demo-ho3pairs") == ["v1", "v2", "v3"]
    enough, too_few = (pairs.open("demo-ho3pairs", v).manifest.num_samples for v in ("v2", "v3"))
    assert enough >= RETRAIN_MIN_NEW_SAMPLES > too_few > 0
    models = ModelStore(store)
    for name in ("demo-layoutnet", "demo-contentnet"):
        assert models.versions(name) == ["v1", "v2"]
        retrained = models.open(name, "v2")
        assert retrained.manifest.datasets == ["demo-ho3pairs/v2"] and retrained.manifest.metrics["examples"] == enough
        assert trained_on("demo-ho3pairs/v3", name) is None
    outcomes = {(r["model"], r["dataset"]): (r["retrained"], r["new_samples"], r["version"])
                for r in first["retraining"]}
    assert outcomes == {("demo-layoutnet", "demo-ho3pairs/v2"): (True, enough, "v2"),
                        ("demo-contentnet", "demo-ho3pairs/v2"): (True, enough, "v2"),
                        ("demo-layoutnet", "demo-ho3pairs/v3"): (False, too_few, None),
                        ("demo-contentnet", "demo-ho3pairs/v3"): (False, too_few, None)}
    lines = summary(first)
    assert (f"retraining demo-layoutnet on demo-ho3pairs/v2: {enough} new samples (needs "
            f"{RETRAIN_MIN_NEW_SAMPLES}) -> new version demo-layoutnet/v2") in lines
    assert (f"retraining demo-contentnet on demo-ho3pairs/v3: {too_few} new samples (needs "
            f"{RETRAIN_MIN_NEW_SAMPLES}) -> no new version") in lines


def test_synthesis_and_evaluations_of_the_trained_pair_on_held_out_pairs(model_part):
    from flows.demo import HELD_OUT

    first, again = model_part
    store = Store.from_settings(Settings())
    datasets = DatasetStore(store)
    held_out = datasets.open(HELD_OUT, "v1")
    held = {row["sample_id"]: row for row in held_out.to_arrow(["sample_id", "layout"]).to_pylist()}
    synthesis = datasets.open("demo-affordance-synthesis", "v1")
    assert synthesis.manifest.num_samples == 2 * held_out.manifest.num_samples  # two per held-out object
    rows = synthesis.to_arrow(["input_id", "layoutnet_version", "contentnet_version", "hoi_image"]).to_pylist()
    assert {r["input_id"] for r in rows} == set(held)
    assert {(r["layoutnet_version"], r["contentnet_version"]) for r in rows} == {("demo-layoutnet/v1",
                                                                                  "demo-contentnet/v1")}
    scored = datasets.open("demo-affordance-evaluation", "v1")
    assert scored.manifest.num_samples == synthesis.manifest.num_samples
    # each score is against its own held-out pair: the true layout is that pair's
    for row in scored.to_arrow(["true_layout", "layout_iou", "layoutnet_version"]).to_pylist():
        assert row["layoutnet_version"] == "demo-layoutnet/v1" and 0 <= row["layout_iou"] <= 1
    true_layouts = sorted(tuple(np.round(r["true_layout"], 5)) for r in scored.to_arrow(["true_layout"]).to_pylist())
    assert true_layouts == sorted(tuple(np.round(r["layout"], 5)) for r in held.values() for _ in range(2))

    evaluation = first["evaluation"]
    assert (evaluation["layoutnet"], evaluation["contentnet"], evaluation["dataset"]) == (
        "demo-layoutnet/v1", "demo-contentnet/v1", held_out.ref)
    # the second run wrote it again (random metric networks are drawn anew: other numbers, same pairs)
    stored = json.loads(store.read_bytes("evaluations", f"demo-contentnet-v1_on_{HELD_OUT}-v1.json"))
    assert stored["metrics"] == again["evaluation"]["metrics"] and stored["config"]["inception_weights"] == "random"
    assert evaluation["metrics"]["pairs"] == held_out.manifest.num_samples
    assert math.isfinite(evaluation["metrics"]["fid"]) and evaluation["metrics"]["lpips"] > 0

    page = store.read_bytes("dashboard", "index.html").decode()
    assert first["dashboard"].endswith("dashboard/index.html")
    assert all(name in page for name in ("demo-layoutnet", "demo-srm", "demo-c-hoi", "demo-affordance-evaluation"))


def test_a_second_run_makes_nothing_twice(model_part):
    first, again = model_part
    assert [(m["model"], m["version"]) for m in again["models"]] == [(m["model"], "v1") for m in first["models"]]
    assert not any(m["retrained"] for m in again["models"] + again["retraining"])
    assert all(d["reused"] for d in again["datasets"])
    models = ModelStore(Store.from_settings(Settings()))
    assert [models.versions(m["model"]) for m in again["models"]] == [["v1", "v2"], ["v1", "v2"], ["v1"], ["v1"]]
