"""The evaluation flow end to end: trained tiny LayoutNet + ContentNet from the model store, scored on a
held-out HO3Pairs version; metric weights missing -> a clear error before any generation."""

import json
import math

import pytest

from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store
from hoi_factory.training import TrainConfig, train
from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline
from tasks.procedural.hand_object import write_hand_object_folder
from tasks.training.contentnet import ContentNetTask
from tasks.training.layoutnet import LayoutNetTask


def test_evaluation_flow_scores_generated_hoi_images(tmp_path, local_store_env, prefect_harness, monkeypatch):
    pytest.importorskip("lpips")
    from flows.evaluation import EvalConfig, evaluate_hoi_synthesis

    monkeypatch.setenv("HOI_CACHE", str(tmp_path / "cache"))
    write_hand_object_folder(tmp_path / "scenes", 10, seed=5, with_bad_files=False)
    pairs = run_pipeline(PairsPipeline(), PairsConfig(
        inputs=str(tmp_path / "scenes"), inpainter="biharmonic", sdedit="none", size=32, max_seam_score=1e9,
        execution=ExecutionConfig(executor="local"))).dataset
    tiny = {"preset": "tiny"}
    train(LayoutNetTask(), TrainConfig(datasets=[pairs.ref], model="layoutnet", steps=2, batch_size=2, options=tiny))
    train(ContentNetTask(), TrainConfig(datasets=[pairs.ref], model="contentnet", steps=2, batch_size=2,
                                        options={"base": "tiny", "image_size": 32}))
    config = EvalConfig(layoutnet="layoutnet", contentnet="contentnet", dataset=pairs.ref, steps=3,
                        inception_weights="random", lpips_weights="random")
    record = evaluate_hoi_synthesis(config)
    metrics = record["metrics"]
    assert metrics["pairs"] == pairs.manifest.num_samples and math.isfinite(metrics["fid"])
    assert metrics["lpips"] > 0 and metrics["contact_recall"] is None  # no segmenter: not measured
    stored = Store.from_settings(Settings()).read_bytes(
        "evaluations", f"contentnet-v1_on_{pairs.name}-{pairs.version}.json")
    assert json.loads(stored)["metrics"]["lpips"] == pytest.approx(metrics["lpips"])

    with pytest.raises(ValueError, match="no such file"):
        evaluate_hoi_synthesis(config.model_copy(update={"inception_weights": str(tmp_path / "none.pth")}))
