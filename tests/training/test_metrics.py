"""FID, LPIPS and contact recall, each against an independent computation on a small case."""

import numpy as np
import pytest
import safetensors.torch
import torch

from models.metrics import LPIPS, RANDOM, InceptionFeatures, contact_recall, fid, frechet_distance, in_contact


def test_frechet_distance_matches_the_closed_form_and_an_eigenvalue_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) + [1.0, 2.0, 0.0]  # same covariance (I), means 1 and 2 apart
    assert frechet_distance(a, b) == pytest.approx(5.0, abs=0.15)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # General covariances: Tr((S_a S_b)^1/2) = sum of sqrt of the eigenvalues of S_a S_b (real, >= 0).
    c = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4))
    d = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4)) + 0.5
    cov_c, cov_d = np.cov(c, rowvar=False), np.cov(d, rowvar=False)
    trace_root = np.sqrt(np.clip(np.linalg.eigvals(cov_c @ cov_d).real, 0, None)).sum()
    expected = ((c.mean(0) - d.mean(0)) ** 2).sum() + np.trace(cov_c) + np.trace(cov_d) - 2 * trace_root
    assert frechet_distance(c, d) == pytest.approx(expected, rel=1e-6)


def test_fid_runs_inception_features_from_a_weights_file(tmp_path):
    import torchvision

    weights = tmp_path / "inception.safetensors"
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    extractor = InceptionFeatures(str(weights))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    features = extractor(images)
    assert features.shape == (6, 2048)
    scale = np.trace(np.cov(features, rowvar=False))  # random weights: huge features, so compare relatively
    assert abs(fid(images, images, extractor)) < 1e-5 * scale
    assert fid(images[:3], images[3:], extractor) > 1e-3 * scale
    with pytest.raises(ValueError, match="no such file"):
        InceptionFeatures(str(tmp_path / "missing.pth"))


def test_lpips_equals_its_definition_computed_by_hand():
    pytest.importorskip("lpips")
    torch.manual_seed(0)
    metric = LPIPS(RANDOM)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    model = metric.model

    # LPIPS: per layer, unit-normalize features over channels, square the difference, weight channels with the
    # linear head, average over space; sum over layers. Inputs scaled to [-1, 1], then the package's shift/scale.
    def by_hand(x, y):
        x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = torch.from_numpy(y).permute(0, 3, 1, 2).float() / 127.5 - 1
        fx, fy = model.net(model.scaling_layer(x)), model.net(model.scaling_layer(y))
        total = 0
        for layer, (u, v) in enumerate(zip(fx, fy)):
            u = u / (u.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            v = v / (v.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            weight = model.lins[layer].model[-1].weight[0, :, 0, 0]
            total = total + ((u - v) ** 2 * weight[None, :, None, None]).sum(1).mean((1, 2))
        return total.detach().numpy()

    np.testing.assert_allclose(metric(a, b), by_hand(a, b), rtol=1e-5)
    assert np.allclose(metric(a, a), 0)


def test_contact_recall_counts_hands_touching_the_object():
    obj = np.zeros((20, 20), bool)
    obj[5:15, 5:15] = True
    touching, near, far = (np.zeros((20, 20), bool) for _ in range(3))
    touching[8:10, 14:18] = True  # overlaps
    near[8:10, 16:19] = True  # one pixel gap: within reach
    far[0:2, 0:2] = True
    assert in_contact(touching, obj) and in_contact(near, obj) and not in_contact(far, obj)
    assert not in_contact(near, obj, reach_px=0)
    assert contact_recall([touching, near, far, None], [obj] * 4) == pytest.approx(0.5)
