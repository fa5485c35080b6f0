"""models/pretrained.py's mixin on every model that uses it: saved to a folder and to memory://, loaded back
with the same arguments (tuples and dataclasses restored from JSON), the same weights and outputs, in eval mode."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import trimesh

from models.affordance.layoutnet import LayoutNet, LayoutNetConfig
from models.gaussians.mesh_gaussians import MeshGaussians
from models.hogsa.hogs import HOGS, ScenePose
from models.hogsa.super_resolution import SRMConfig, SuperResolution


def _layoutnet():
    layouts, objects = torch.randn(2, 5), torch.rand(2, 3, 32, 32) * 2 - 1
    return LayoutNet(LayoutNetConfig.tiny()), lambda m: m(layouts, torch.tensor([3, 70]), objects)


def _super_resolution():
    low = torch.rand(2, 3, 16, 16)
    return SuperResolution(SRMConfig.tiny()), lambda m: m.upscale(low)


def _cascade_hoi():
    pytest.importorskip("torchvision")
    from models.c_hoi.model import CascadeHOI, CHOIConfig

    config = CHOIConfig.tiny(["__background__", "person", "cup"], ["hold", "drink with"],
                             semantic_table=[[0.0, 0.0], [0.5, 0.5], [1.0, 0.2]])
    images = [torch.rand(3, 64, 80)]
    return CascadeHOI(config), lambda m: m(images)


def _mesh(subdivisions: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    sphere = trimesh.creation.icosphere(subdivisions, 0.1)
    return torch.tensor(sphere.vertices), torch.tensor(sphere.faces)


def _mesh_gaussians():
    vertices, faces = _mesh()
    model = MeshGaussians(vertices, faces, per_face=3, sh_degree=2, initial_scale=0.4)
    return model, lambda m: m.splats(torch.tensor([0.1, 0.2, 0.5]))


def _hogs():
    (hand, faces), (box, box_faces) = _mesh(), _mesh(0)
    weights = torch.softmax(torch.randn(len(hand), 16), -1)
    model = HOGS({"left": hand, "right": hand + 0.2}, {"left": faces, "right": faces}, {"left": weights,
                 "right": weights}, box.float(), box_faces, torch.arange(len(box)) % 2 == 0,
                 torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), per_face=2, sh_degree=1)
    turn = torch.eye(4).repeat(16, 1, 1)
    turn[:, :3, 3] = 0.01
    pose = ScenePose({"left": turn, "right": torch.eye(4).repeat(16, 1, 1)}, articulation=0.3)
    return model, lambda m: m.splats(pose, torch.tensor([0.1, 0.2, 0.5]))


MODELS = {"LayoutNet": _layoutnet, "SuperResolution": _super_resolution, "CascadeHOI": _cascade_hoi,
          "MeshGaussians": _mesh_gaussians, "HOGS": _hogs}


def assert_same(a, b, where="") -> None:
    """Equal and of the same types (a tuple is not a list), tensors exactly equal."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    else:
        assert a == b, where


def test_every_model_with_the_mixin_is_tested():
    sources = (path.read_text() for path in (Path(__file__).parents[1] / "models").rglob("*.py"))
    users = {name for text in sources for name in re.findall(r"^class (\w+)\(PretrainedMixin", text, re.M)}
    assert users == set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_save_and_load_give_the_same_model(name, tmp_path):
    torch.manual_seed(0)
    model, run = MODELS[name]()
    with torch.no_grad():  # weights that are not the initialization's
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    model.eval()
    expected = run(model)
    for url in (str(tmp_path / name), f"memory://test-pretrained/{name}"):
        model.save_pretrained(url)
        loaded = type(model).from_pretrained(url)
        assert not any(module.training for module in loaded.modules())
        assert_same(loaded.init_arguments, model.init_arguments)
        assert_same(loaded.state_dict(), model.state_dict())
        assert_same(run(loaded), expected)


def test_a_model_built_from_a_config_object_saves_its_fields(tmp_path):
    """config.json byte for byte as before the mixin: models published then load with it."""
    LayoutNet(LayoutNetConfig.tiny()).save_pretrained(str(tmp_path))
    assert (tmp_path / "config.json").read_text() == json.dumps(asdict(LayoutNetConfig.tiny()), indent=2)
    assert LayoutNet.from_pretrained(str(tmp_path)).config == LayoutNetConfig.tiny()
