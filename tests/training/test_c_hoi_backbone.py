"""C-HOI's backbone: the normalization choices and the pretrained weights (a local safetensors file here;
torchvision's named weights go through the same loading once torchvision has fetched them)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

OBJECTS, VERBS = ("__background__", "person", "cup"), ("hold",)


def _model(**kwargs):
    from models.c_hoi.model import CascadeHOI, CHOIConfig

    return CascadeHOI(CHOIConfig.tiny(OBJECTS, VERBS, **kwargs))


def test_from_scratch_the_backbone_normalization_trains():
    model = _model()  # the default: GroupNorm, every layer trainable
    norms = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(p.requires_grad for m in norms for p in m.parameters())
    with pytest.raises(ValueError, match="norm 'layer'"):
        _model(norm="layer")


def test_resnet_weights_from_a_safetensors_file_load_and_freeze_the_first_stage(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    torch.manual_seed(0)
    imagenet_like = resnet18()
    imagenet_like.bn1.running_mean.uniform_(-1, 1)  # statistics a frozen BatchNorm must keep
    file = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in imagenet_like.state_dict().items()}, file)  # fc.* included

    model = _model(backbone="resnet18", norm="frozen")
    model.load_backbone(str(file))
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, imagenet_like.conv1.weight)
    assert torch.equal(body.bn1.running_mean, imagenet_like.bn1.running_mean)
    assert torch.equal(body.layer4[1].conv2.weight, imagenet_like.layer4[1].conv2.weight)
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad  # torchvision's detectors train layer2..4

    with pytest.raises(ValueError, match="not 'group'"):  # GroupNorm has no place for BatchNorm statistics
        _model(backbone="resnet18").load_backbone(str(file))
    with pytest.raises(ValueError, match="do not fit resnet50"):
        _model(backbone="resnet50", norm="frozen").load_backbone(str(file))
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):  # an unknown name lists the known ones
        _model(backbone="resnet18", norm="frozen").load_backbone("IMAGENET_V9")


def test_detector_weights_load_the_backbone_and_its_pyramid(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    trained = _model(norm="batch")
    file = tmp_path / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, file)  # backbone.*, rpn.*, ...
    torch.manual_seed(1)
    model = _model(norm="batch")
    model.load_backbone(str(file))
    assert all(torch.equal(value, trained.backbone.state_dict()[key])
               for key, value in model.backbone.state_dict().items())
    assert not torch.equal(model.rpn.head.conv[0][0].weight, trained.rpn.head.conv[0][0].weight)  # not the rest


def test_the_task_builds_a_frozen_norm_model_from_weights_and_two_phases(tmp_path):
    from safetensors.torch import save_file

    from tasks.training.c_hoi import CHOITask

    task = CHOITask()
    from support.hoi_scenes import hoi_scene

    task.vocabulary = (OBJECTS, VERBS, [[0.0], [0.0], [1.0]])
    file = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in _model(norm="frozen").backbone.body.state_dict().items()}, file)
    model = task.build({"preset": "tiny", "weights": str(file), "localization_steps": 2})
    assert model.config.norm == "frozen" and task.config({"preset": "tiny"}).norm == "group"
    image, target, _ = hoi_scene(0)
    target["labels"] = target["labels"].clamp(max=2)  # this vocabulary has cups only
    target["hoi"][:, 2] = 0
    batch = {"images": [image], "targets": [target]}
    model.train()
    relation = model.relations[0].visual[0].weight
    for _ in range(2):  # the first phase: the relation module gets no gradient
        model.zero_grad()
        task.loss(model, batch, torch.Generator()).backward()
        assert relation.grad is None
    model.zero_grad()
    task.loss(model, batch, torch.Generator()).backward()  # the joint phase
    assert relation.grad is not None and relation.grad.abs().sum() > 0
