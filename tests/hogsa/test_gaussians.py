"""HOGS Gaussians against independent computations: the torch rasterizer (tiled, in groups of tiles) against a
dense per-pixel reference (scipy rotations, autograd Jacobian, a literal front-to-back loop), its gradients against
autograd of that reference and by finite differences, its (Gaussian, tile) pairs against every pixel by brute
force, equal depths in index order, one-pass labels against a second render, spherical harmonics by their
orthonormality, gsplat against torch (on CUDA) and its fallback (a fake gsplat module), mesh-bound
Gaussians on their faces and under rigid motion, save/load, L_R against brute force, SSIM against scikit-image,
and fits on procedural multi-view renders of a textured mesh (held-out views; a per-view rigid deformation)."""

from __future__ import annotations

import importlib.util
import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation
from skimage.metrics import structural_similarity

from models.gaussians import render
from models.gaussians.fit import FitView, distance_to_initial_mesh, evaluate_views, fit_mesh_gaussians
from models.gaussians.mesh_gaussians import MeshGaussians
from models.gaussians.projection import matrix_to_quaternion, quaternion_to_matrix
from models.gaussians.render import rasterize_gaussians
from models.gaussians.spherical_harmonics import sh_basis
from models.gaussians.ssim import ssim
from models.render.camera import intrinsics, look_at, orbit_camera
from models.render.raster import rasterize


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: one intra-op thread is as fast, and on a busy 2-core machine (CI running other
    work) OpenMP threads waiting for each other at every small op make the fit 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    for i in torch.sort(cam[:, 2], stable=True).indices.tolist():  # equal depths in index order, as gsplat
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


def test_grouped_rasterizer_equals_dense_reference(monkeypatch):
    monkeypatch.setattr(render, "PAIRS_PER_GROUP", 300)  # many groups: the split must not matter
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


def test_equal_depths_composite_in_index_order():
    """Hand-worked: two identical splats, red then blue, at the same depth. With a the alpha of one of them at a
    pixel, red comes first: colour = a red + (1 - a) a blue; in the other index order, blue first."""
    width, height = 16, 12
    K = torch.tensor(intrinsics(width, height))
    view = torch.eye(4, dtype=torch.float64)
    means, quats = torch.tensor([[0.0, 0.0, 0.5]] * 2, dtype=torch.float64), torch.tensor([[1.0, 0, 0, 0]] * 2)
    scales, opacities = torch.full((2, 3), 0.02, dtype=torch.float64), torch.tensor([0.8, 0.8], dtype=torch.float64)
    red_blue = torch.tensor([[1.0, 0, 0], [0, 0, 1]], dtype=torch.float64)
    a = rasterize_gaussians(means[:1], quats[:1], scales[:1], opacities[:1], red_blue[:1], view, K, width, height,
                            backend="torch")["alpha"]
    assert a.max() > 0.5
    for colours, first, second in ((red_blue, 0, 2), (red_blue.flip(0), 2, 0)):
        image = rasterize_gaussians(means, quats, scales, opacities, colours, view, K, width, height,
                                    backend="torch")["image"]
        torch.testing.assert_close(image[..., first], a, atol=1e-12, rtol=0)
        torch.testing.assert_close(image[..., second], (1 - a) * a, atol=1e-12, rtol=0)


def test_many_equal_depths_match_the_reference_in_index_order():
    """300 overlapping splats on one plane facing the camera (every depth exactly 0.5): enough ties that a
    non-stable sort reorders them."""
    g = torch.Generator().manual_seed(7)
    count, width, height = 300, 40, 32
    means = torch.cat([(torch.rand(count, 2, generator=g, dtype=torch.float64) - 0.5) * 0.3,
                       torch.full((count, 1), 0.5, dtype=torch.float64)], 1)
    quats = torch.randn(count, 4, generator=g, dtype=torch.float64)
    scales = torch.rand(count, 3, generator=g, dtype=torch.float64) * 0.02 + 0.005
    opacities = torch.rand(count, generator=g, dtype=torch.float64) * 0.5 + 0.3
    colors = torch.rand(count, 3, generator=g, dtype=torch.float64)
    view, K, background = torch.eye(4, dtype=torch.float64), torch.tensor(intrinsics(width, height)), torch.zeros(3)
    out = rasterize_gaussians(means, quats, scales, opacities, colors, view, K, width, height, backend="torch")
    image, alpha, _ = dense_reference(means, quats, scales, opacities, colors, view, K, width, height, background)
    torch.testing.assert_close(out["image"], image, atol=1e-9, rtol=0)
    torch.testing.assert_close(out["alpha"], alpha, atol=1e-9, rtol=0)


def test_features_in_one_pass_equal_a_second_render_of_them_as_colours():
    """HOGS coverage labels: composited with the colours in one pass, they equal what a second render with the
    labels as colours (over black) gave; the colour outputs do not change."""
    means, quats, scales, opacities, sh, view = random_scene(300, seed=8)
    width, height = 44, 36
    K = torch.tensor(intrinsics(width, height, fov_degrees=30))
    labels = torch.eye(3, dtype=torch.float64)[torch.randint(0, 3, (len(means),),
                                                             generator=torch.Generator().manual_seed(9))]
    background = torch.tensor([0.3, 0.6, 0.1], dtype=torch.float64)
    one_pass = rasterize_gaussians(means, quats, scales, opacities, sh, view, K, width, height, background,
                                   backend="torch", features=labels)
    colours = rasterize_gaussians(means, quats, scales, opacities, sh, view, K, width, height, background,
                                  backend="torch")
    labels_as_colours = rasterize_gaussians(means, quats, scales, opacities, labels, view, K, width, height,
                                            backend="torch")
    torch.testing.assert_close(one_pass["features"], labels_as_colours["image"], atol=1e-12, rtol=0)
    torch.testing.assert_close(one_pass["features"].sum(-1), one_pass["alpha"], atol=1e-12, rtol=0)
    for key in ("image", "alpha", "depth"):
        torch.testing.assert_close(one_pass[key], colours[key], atol=1e-12, rtol=0)


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


def test_gradients_equal_autograd_of_the_dense_reference(monkeypatch):
    """The grouped, padded compositing differentiated by autograd against the literal front-to-back loop
    differentiated by autograd (quaternions excepted: the reference takes its rotations from scipy; the finite
    differences above cover them)."""
    means, quats, scales, opacities, _, view = random_scene(50, seed=11)
    scales, opacities = 2 * scales, 0.9 + 0.09 * opacities  # large, nearly opaque: pixels reach the 1e-4 stop
    colors = torch.rand(len(means), 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    width, height = 24, 20
    K = torch.tensor(intrinsics(width, height, fov_degrees=30))
    weights = torch.rand(height, width, 5, generator=torch.Generator().manual_seed(13), dtype=torch.float64)

    def gradients(render_function):
        inputs = [x.clone().requires_grad_() for x in (means, scales, opacities, colors)]
        image, alpha, depth = render_function(inputs[0], quats, *inputs[1:])
        loss = (torch.cat([image, alpha[..., None], (depth * alpha)[..., None]], -1) * weights).sum()
        return torch.autograd.grad(loss, inputs)

    def ours(means, quats, scales, opacities, colors):
        out = rasterize_gaussians(means, quats, scales, opacities, colors, view, K, width, height, backend="torch")
        return out["image"], out["alpha"], out["depth"]

    def reference(means, quats, scales, opacities, colors):
        return dense_reference(means, quats, scales, opacities, colors, view, K, width, height, torch.zeros(3))

    stopped = ours(means, quats, scales, opacities, colors)[0]
    monkeypatch.setattr(render, "TRANSMITTANCE_STOP", 1e-300)  # never reached
    assert (ours(means, quats, scales, opacities, colors)[0] - stopped).abs().max() > 1e-6  # the 1e-4 stop acts
    monkeypatch.undo()
    for name, got, expected in zip(("means", "scales", "opacities", "colors"), gradients(ours),
                                   gradients(reference)):
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-7, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tile_pairs_hold_every_pixel_a_gaussian_reaches(dtype):
    """Against brute force (every Gaussian at every pixel centre): each (Gaussian, tile) pair where alpha > 1/255
    at some pixel of the tile is generated, once, in (tile, depth, index) order; and the pairs per band of tile
    rows are fewer than their boxes' (the ellipse test does cull)."""
    means, quats, scales, opacities, _, view = random_scene(400, seed=14, dtype=dtype)
    scales[:, 0] *= 0.1  # flat, elongated splats at every angle: their boxes' corners hold many tiles
    width, height = 70, 54
    K = torch.tensor(intrinsics(width, height, fov_degrees=30), dtype=dtype)
    splats = render.project(means, quats, scales, opacities, view, K, width, height)
    ids = torch.nonzero(splats.visible).squeeze(1)
    tiles_x = -(-width // render.TILE)
    gaussian, tile = render._tile_intersections(splats, ids, opacities, tiles_x, width, height)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype) + 0.5, torch.arange(width, dtype=dtype) + 0.5,
                            indexing="ij")
    dx, dy = xs[None] - splats.means2d[ids, 0, None, None], ys[None] - splats.means2d[ids, 1, None, None]
    a, b, c = (splats.conics[ids, i, None, None] for i in range(3))
    alpha = opacities[ids, None, None] * torch.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
    reached = torch.nonzero(alpha > render.ALPHA_THRESHOLD)  # (Gaussian in ids, row, column)
    needed = set(zip(ids[reached[:, 0]].tolist(), ((reached[:, 1] // render.TILE) * tiles_x
                                                   + reached[:, 2] // render.TILE).tolist()))
    pairs = list(zip(gaussian.tolist(), tile.tolist()))
    assert len(set(pairs)) == len(pairs) and needed <= set(pairs)
    depth = splats.depths.detach()[gaussian]
    assert all((t, d, g) <= (t2, d2, g2) for (g, t), d, (g2, t2), d2 in zip(pairs, depth.tolist(), pairs[1:],
                                                                            depth[1:].tolist()))
    # The tiles of each alpha >= 1/255 box (gsplat's pairs), counted as the rasterizer counted them before.
    first = torch.ceil(splats.means2d[ids] - splats.half_sizes[ids] - 0.5).clamp_min(0)
    last = torch.minimum(torch.floor(splats.means2d[ids] + splats.half_sizes[ids] - 0.5),
                         torch.tensor([width - 1, height - 1], dtype=dtype))
    boxes = ((last // render.TILE - first // render.TILE + 1) * (last >= first)).prod(1).sum()
    print(f"{len(pairs)} pairs, {len(needed)} needed, {int(boxes)} in the boxes")
    assert len(pairs) < 0.75 * boxes and len(pairs) < 1.3 * len(needed)


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


def fake_gsplat(monkeypatch, fails: bool) -> list[int]:
    """A gsplat module whose rasterization raises at its first call when `fails` (as the PyPI wheel does without a
    CUDA toolkit); returns the list its calls are counted in."""
    calls = []

    def rasterization(*args, **kwargs):
        calls.append(1)
        if fails and len(calls) == 1:
            raise RuntimeError("gsplat: CUDA extension _C is None")
        return torch.zeros(1, 8, 8, 4), torch.zeros(1, 8, 8, 1), {}

    monkeypatch.setitem(sys.modules, "gsplat", types.SimpleNamespace(rasterization=rasterization))
    monkeypatch.setattr(render, "_GSPLAT_WORKS", {})
    return calls


def test_auto_backend_falls_back_to_torch_once_when_gsplats_first_call_fails(monkeypatch):
    calls = fake_gsplat(monkeypatch, fails=True)
    with pytest.warns(RuntimeWarning, match="gsplat cannot render on cpu .*_C is None.*pure-torch"):
        assert not render._gsplat_works(torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning only, and no second try
        assert not render._gsplat_works(torch.device("cpu"))
    assert len(calls) == 1


def test_auto_backend_keeps_gsplat_when_its_probe_renders(monkeypatch):
    calls = fake_gsplat(monkeypatch, fails=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert render._gsplat_works(torch.device("cpu")) and render._gsplat_works(torch.device("cpu"))
    assert len(calls) == 1


def test_gsplat_backend_refuses_float64(monkeypatch):
    fake_gsplat(monkeypatch, fails=False)
    means, quats, scales, opacities, sh, view = random_scene(10, seed=10)
    K = torch.tensor(intrinsics(16, 16))
    with pytest.raises(ValueError, match="float32 only, got torch.float64"):
        rasterize_gaussians(means, quats, scales, opacities, sh, view, K, 16, 16, backend="gsplat")


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(5)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(40, 48, 3)), 0), 1)
    reference = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    noisy = np.clip(reference + rng.normal(0, 0.05, reference.shape), 0, 1)
    expected = structural_similarity(noisy, reference, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0, channel_axis=-1)
    assert float(ssim(torch.tensor(noisy), torch.tensor(reference))) == pytest.approx(expected, abs=1e-9)
    assert float(ssim(torch.tensor(reference), torch.tensor(reference))) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def ellipsoid() -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(3, 0.08)
    mesh.vertices *= [1.0, 0.75, 0.9]
    return mesh


def test_mesh_gaussians_lie_on_their_faces_and_follow_a_rigid_motion(ellipsoid):
    model = MeshGaussians(torch.tensor(ellipsoid.vertices), torch.tensor(ellipsoid.faces), per_face=3).double()
    with torch.no_grad():
        model.barycentric_logits.normal_(0, 1)
        model.log_scale_multipliers.normal_(-1, 0.3)
    means, quats, scales = model.gaussians()
    assert means.shape == (3 * len(ellipsoid.faces), 3)
    # On the plane of its own face, inside the triangle, flat along the face normal (the rotation's first axis).
    stored = trimesh.Trimesh(model.rest_vertices.numpy(), ellipsoid.faces, process=False)  # float32-rounded
    triangles = torch.tensor(stored.triangles).repeat_interleave(3, 0)
    normals = torch.tensor(stored.face_normals).repeat_interleave(3, 0)
    assert ((means - triangles[:, 0]) * normals).sum(1).abs().max() < 1e-9
    barycentric = trimesh.triangles.points_to_barycentric(triangles.numpy(), means.detach().numpy())
    assert barycentric.min() > 0
    axes = quaternion_to_matrix(quats)
    torch.testing.assert_close(axes[:, :, 0].abs(), normals.abs())
    assert (scales[:, 0] < 0.02 * scales[:, 1:].min(1).values).all()

    rotation = torch.tensor(Rotation.from_rotvec([0.3, -1.2, 0.7]).as_matrix())
    translation = torch.tensor([0.1, -0.25, 0.6], dtype=torch.float64)
    moved_means, moved_quats, moved_scales = model.gaussians(model.canonical_vertices() @ rotation.T + translation)
    torch.testing.assert_close(moved_means, means @ rotation.T + translation)
    torch.testing.assert_close(quaternion_to_matrix(moved_quats), rotation @ axes)
    torch.testing.assert_close(moved_scales, scales)
    # View-dependent colour is evaluated in the faces' frames: moving the camera with the object changes nothing.
    with torch.no_grad():
        model.sh_rest.normal_(0, 0.3)
    camera = torch.tensor([0.05, 0.3, 0.25], dtype=torch.float64)
    torch.testing.assert_close(model.colors(rotation @ camera + translation, model.canonical_vertices() @ rotation.T
                                            + translation), model.colors(camera))
    assert not torch.allclose(model.colors(camera), model.colors(-camera))  # and it is view-dependent


def test_mesh_gaussians_save_and_load(ellipsoid, tmp_path):
    model = MeshGaussians(torch.tensor(ellipsoid.vertices), torch.tensor(ellipsoid.faces), per_face=2, sh_degree=2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    for url in (str(tmp_path / "hogs-object"), "memory://models/hogs-object/v1"):
        model.save_pretrained(url)
        loaded = MeshGaussians.from_pretrained(url)
        assert (loaded.per_face, loaded.sh_degree) == (2, 2)
        for name, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), name
    rotation, translation = look_at(np.array([0.1, 0.2, 0.35]), np.zeros(3))
    K = torch.tensor(intrinsics(40, 40), dtype=torch.float32)
    view = viewmat(rotation, translation, torch.float32)
    torch.testing.assert_close(loaded.render(view, K, 40, 40)["image"], model.render(view, K, 40, 40)["image"])


def test_distance_regularization_is_the_distance_to_the_initial_mesh():
    mesh = trimesh.creation.icosphere(2, 0.1)
    vertices, faces = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    noise = torch.randn(vertices.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    moved = vertices + noise * 0.15 * float(mesh.edges_unique_length.mean())
    # Brute force: every moved vertex against every face of the initial mesh.
    pairs = np.repeat(moved.numpy(), len(mesh.faces), 0)
    closest = trimesh.triangles.closest_point(np.tile(mesh.triangles, (len(moved), 1, 1)), pairs)
    expected = np.linalg.norm(closest - pairs, axis=1).reshape(len(moved), -1).min(1).mean()
    assert float(distance_to_initial_mesh(moved, vertices, faces)) == pytest.approx(expected, rel=1e-6)
    assert float(distance_to_initial_mesh(vertices, vertices, faces)) < 1e-9


def solid_texture(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Colour bands over the surface, lit by a fixed light (view-independent)."""
    light = np.array([0.4, 0.8, 0.45]) / np.linalg.norm([0.4, 0.8, 0.45])
    base = 0.5 + 0.3 * np.stack([np.sin(45 * points[:, 0] + 1), np.sin(38 * points[:, 1] + 60 * points[:, 2]),
                                 np.cos(50 * points[:, 2] - 30 * points[:, 0])], 1)
    return base * (0.55 + 0.45 * np.clip(normals @ light, 0, 1))[:, None]


def photograph(mesh: trimesh.Trimesh, azimuth: float, elevation: float, size: int, supersampling: int = 3) -> FitView:
    """A procedural ground-truth image: z-buffer at 3x resolution, the solid texture at each pixel's surface
    point, box-filtered down (anti-aliased edges, as a camera integrates over its pixels)."""
    rotation, translation = orbit_camera(azimuth, elevation, 0.3)
    K = intrinsics(size, size, fov_degrees=40)
    fine_K, fine = np.diag([supersampling, supersampling, 1.0]) @ K, size * supersampling
    depth, face = rasterize(mesh.vertices @ rotation.T + translation, np.asarray(mesh.faces), fine_K, fine, fine)
    rows, cols = np.nonzero(face >= 0)
    rays = np.stack([cols + 0.5, rows + 0.5, np.ones(len(rows))], 1) @ np.linalg.inv(fine_K).T
    points = (rays * depth[rows, cols, None] - translation) @ rotation
    image = np.zeros((fine, fine, 3))
    image[rows, cols] = solid_texture(points, mesh.face_normals[face[rows, cols]])
    image = image.reshape(size, supersampling, size, supersampling, 3).mean((1, 3))
    return FitView(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), None, K, rotation, translation)


@pytest.fixture(scope="module")
def photographs(ellipsoid) -> tuple[list[FitView], list[FitView]]:
    """10 training views around the object, 3 held-out views between them, 80 x 80."""
    train = [photograph(ellipsoid, azimuth, 25 if i % 2 else -20, 80) for i, azimuth in enumerate(range(0, 360, 36))]
    held_out = [photograph(ellipsoid, azimuth, elevation, 80)
                for azimuth, elevation in ((18, 5), (138, 35), (258, -10))]
    return train, held_out


def test_fit_reproduces_held_out_views(ellipsoid, photographs):
    train, held_out = photographs
    steps = []
    start = fit_mesh_gaussians(ellipsoid.vertices, ellipsoid.faces, train, iterations=0, sh_degree=1)
    result = fit_mesh_gaussians(ellipsoid.vertices, ellipsoid.faces, train, iterations=100, sh_degree=1,
                                progress=lambda step, total, loss: steps.append((step, total)))
    assert steps[-1] == (100, 100) and len(steps) == 100
    assert np.mean(result.losses[-10:]) < 0.6 * np.mean(result.losses[:10])
    initial_psnr, _ = evaluate_views(start.model, held_out)
    psnr, ssim_values = evaluate_views(result.model, held_out)
    print(f"held-out PSNR {np.round(psnr, 2)} (initial {np.round(initial_psnr, 2)}), SSIM {np.round(ssim_values, 3)}; "
          f"training PSNR {np.mean(result.psnr):.2f}")
    assert min(psnr) >= 25 and min(ssim_values) >= 0.85
    assert min(np.subtract(psnr, initial_psnr)) > 2  # the optimization, not only the colour initialization
    # The vertices were refined (the paper trains them), but stay near the initial mesh (L_R).
    model = result.model
    with torch.no_grad():
        distance = distance_to_initial_mesh(model.canonical_vertices(), model.rest_vertices, model.faces)
    print(f"mean vertex distance to the initial mesh {float(distance) * 1000:.2f} mm")
    assert model.vertex_offsets.detach().abs().max() > 0 and float(distance) < 0.05 * 0.08  # 5% of the radius


def test_fit_through_a_deformation_per_view(ellipsoid, photographs):
    """The object moved rigidly in every view, and each camera moved with it, gives the same pictures: a fit
    that places the canonical mesh through `deform` must see the same losses as the static fit."""
    train = photographs[0][:5]
    rotations = [Rotation.from_rotvec([0.4 * i, -0.3, 0.2 * i]).as_matrix() for i in range(len(train))]
    translations = [np.array([0.1 * i, -0.05, 0.02 * i]) for i in range(len(train))]
    moved = []
    for view, rotation, translation in zip(train, rotations, translations):
        camera_rotation = view.R @ rotation.T  # x_cam = R x + t with x = rotation^T (x_world - translation)
        moved.append(FitView(view.image, None, view.K, camera_rotation, view.t - camera_rotation @ translation))

    def deform(index, vertices):
        rotation, translation = (torch.tensor(x, dtype=vertices.dtype) for x in (rotations[index], translations[index]))
        return vertices @ rotation.T + translation

    static = fit_mesh_gaussians(ellipsoid.vertices, ellipsoid.faces, train, iterations=6, sh_degree=1)
    posed = fit_mesh_gaussians(ellipsoid.vertices, ellipsoid.faces, moved, iterations=6, sh_degree=1, deform=deform)
    np.testing.assert_allclose(posed.losses, static.losses, rtol=1e-4)
    np.testing.assert_allclose(posed.psnr, static.psnr, atol=0.01)
