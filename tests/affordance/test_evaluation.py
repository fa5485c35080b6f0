"""affordance-evaluation: a synthesis scored against the held-out pairs its objects came from, as a dataset
version with both as parents; each figure recomputed here from the rows. FID through torch-fidelity: with a
stand-in feature extractor registered in torch-fidelity, its number equals the Fréchet distance computed here
from the same features; the TF-Inception path refuses to run without its weights file and never unpickles one."""

import numpy as np
import pytest
import torch
from PIL import Image

from hoi_factory.codec import decode_image
from hoi_factory.config import ExecutionConfig
from hoi_factory.run import run_pipeline
from models.affordance.layout import iou, splat_mask
from models.metrics import frechet_distance, in_contact
from tasks.affordance.evaluation import INCEPTION_WEIGHTS_URL, EvaluationConfig, EvaluationPipeline, fidelity_fid
from tasks.affordance.synthesis import SynthesisConfig, SynthesisPipeline, square

torch_fidelity = pytest.importorskip("torch_fidelity")
from torch_fidelity.feature_extractor_base import FeatureExtractorBase  # noqa: E402

POOL = 2  # 2 x 2 x RGB = 12 features: far fewer than the images, so both covariances are full rank


def pooled(images: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.adaptive_avg_pool2d(images.double() / 255, POOL).flatten(1)


class PooledPixels(FeatureExtractorBase):
    """A stand-in for Inception: mean colours of a 2 x 2 grid."""

    def __init__(self, name, features_list, **options):  # torch-fidelity passes all its options along
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return ("pooled",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "pooled"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, images):
        return (pooled(images),)


torch_fidelity.register_feature_extractor("test-pooled-pixels", PooledPixels)


def test_torch_fidelity_fid_is_the_frechet_distance_of_the_extractors_features():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    generated = np.clip(real[:30].astype(int) + rng.integers(0, 80, (30, 16, 16, 3)), 0, 255).astype(np.uint8)
    value = fidelity_fid(real, generated, feature_extractor="test-pooled-pixels")

    def features(images):
        return pooled(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()

    expected = frechet_distance(features(real), features(generated))
    assert expected > 1e-3 and value == pytest.approx(expected, rel=1e-4)
    assert fidelity_fid(real, real, feature_extractor="test-pooled-pixels") == pytest.approx(0, abs=1e-9)


class WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_inception_fid_needs_a_local_weights_file_and_never_unpickles_it(tmp_path):
    images = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=INCEPTION_WEIGHTS_URL):
        fidelity_fid(images, images)
    weights, marker = tmp_path / "weights.pth", tmp_path / "code-ran"
    torch.save({"a": WritesAFile(str(marker))}, weights)
    with pytest.raises(Exception, match="[Ww]eights only"):
        fidelity_fid(images, images, weights=str(weights))
    assert not marker.exists()


def test_evaluation_scores_a_synthesis_against_its_held_out_pairs_as_a_versioned_dataset(model_versions, held_out):
    local = ExecutionConfig(executor="local", shard_size=4)
    synthesized = run_pipeline(SynthesisPipeline(), SynthesisConfig(
        objects=held_out.ref, source="dataset", layoutnet="layoutnet/v1", contentnet="contentnet",
        layout={"kind": "guided", "fix": ["x", "y"]}, samples_per_object=2, size=32, steps=2, execution=local,
        output={"dataset": "synthesized"})).dataset
    evaluation = run_pipeline(EvaluationPipeline(), EvaluationConfig(
        synthesized=synthesized.ref, held_out=held_out.ref, fid_feature_extractor="test-pooled-pixels",
        execution=local, output={"dataset": "evaluation"})).dataset
    assert sorted(evaluation.manifest.parents) == sorted([synthesized.ref, held_out.ref])
    rows = evaluation.to_arrow().to_pylist()
    made = {r["sample_id"]: r for r in synthesized.to_arrow().to_pylist()}
    truth = {r["sample_id"]: r for r in held_out.to_arrow(["sample_id", "hoi_image", "layout", "object_mask"])
             .to_pylist()}
    assert sorted(r["input_id"] for r in rows) == sorted(made)  # every synthesized sample, paired
    generated, true_images = [], []
    for row in rows:
        sample = made[row["input_id"]]
        pair = truth[sample["input_id"]]
        assert row["hoi_image"] == sample["hoi_image"] and row["contentnet_version"] == "contentnet/v1"
        true_image = decode_image(row["true_hoi_image"], "RGB")
        assert true_image.shape == (32, 32, 3)
        assert np.abs(true_image.astype(int) - square(decode_image(pair["hoi_image"], "RGB"), 32)).mean() < 1
        hand = splat_mask(np.asarray(row["layout"]), 32)
        assert row["layout_iou"] == pytest.approx(iou(hand, splat_mask(np.asarray(pair["layout"]), 32)), abs=1e-6)
        object_mask = np.asarray(Image.fromarray(decode_image(pair["object_mask"])).resize((32, 32))) > 0
        assert row["contact"] == float(in_contact(hand, object_mask))
        assert np.isnan(row["lpips"])  # no LPIPS weights given: not measured, never a made-up number
        generated.append(decode_image(row["hoi_image"], "RGB"))
        true_images.append(true_image)
    metrics = evaluation.manifest.metrics
    assert metrics["mean_lpips"] is None
    assert metrics["mean_layout_iou"] == pytest.approx(np.mean([r["layout_iou"] for r in rows]), rel=1e-5)

    def features(images):
        return pooled(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)).numpy()

    assert metrics["fid"] == pytest.approx(frechet_distance(features(true_images), features(generated)), rel=1e-4)
