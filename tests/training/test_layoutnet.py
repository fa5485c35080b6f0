"""LayoutNet: it learns (overfits a batch, beats random layouts on held-out pairs), guided generation holds
its fixed coordinates, training resumes after a crash to the same weights, a model in S3 loads back, and the
diffusion encoder starts from the pretrained inpainting UNet."""

import tempfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from hoi_factory.config import ConfigError, ExecutionConfig, Settings, validate_run_config
from hoi_factory.model_store import ModelStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store
from hoi_factory.training import TrainConfig, train
from models.affordance.layoutnet import LayoutNet, LayoutNetConfig
from models.diffusion import load_diffusion
from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline
from tasks.procedural.hand_object import write_hand_object_folder
from tasks.training.layoutnet import LayoutNetTask

LOCAL = ExecutionConfig(executor="local", shard_size=64)


def make_pairs(tmp_path, name: str, count: int, seed: int) -> str:
    folder = tmp_path / name
    write_hand_object_folder(folder, count, seed=seed, with_bad_files=False)
    config = PairsConfig(inputs=str(folder), inpainter="biharmonic", sdedit="none", size=64,
                         max_seam_score=1e9, execution=LOCAL, output={"dataset": name})
    return run_pipeline(PairsPipeline(), config).dataset.ref


def test_tiny_layoutnet_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = LayoutNet(LayoutNetConfig.tiny())
    objects = torch.rand(8, 3, 32, 32) * 2 - 1
    layouts = torch.tensor([[0.1 * i - 0.3, 0.2, 0.5, 1.0, 0.0] for i in range(8)])
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for step in range(250):
        loss = model.loss(objects, layouts, torch.Generator().manual_seed(step % 4))  # 4 fixed noise draws
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) / 20


def test_the_diffusion_encoder_starts_from_the_inpainting_unet_learns_and_loads_back():
    torch.manual_seed(0)
    model = LayoutNet(replace(LayoutNetConfig.tiny(), encoder="diffusion", encoder_base="tiny"))
    pipeline = load_diffusion("tiny", "inpainting")
    unet = pipeline.unet
    pretrained = {f"encoder.{k}": v for k, v in unet.state_dict().items() if not k.startswith(("up_", "conv_"))
                  or k.startswith("conv_in")}
    weights = model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in pretrained.items())  # every encoder-half weight, as trained
    objects = torch.rand(8, 3, 32, 32) * 2 - 1
    layouts = torch.tensor([[0.1 * i - 0.3, 0.2, 0.5, 1.0, 0.0] for i in range(8)])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    losses = []
    for step in range(60):
        loss = model.loss(objects, layouts, torch.Generator().manual_seed(step % 4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 4
    assert not torch.equal(model.state_dict()["encoder.conv_in.weight"], unet.conv_in.weight)  # fine-tuned
    vae_weights = {f"encoder.vae_encoder.{k}": v for k, v in pipeline.vae.encoder.state_dict().items()}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in vae_weights.items())  # the VAE stays frozen
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = LayoutNet.from_pretrained(folder)
    t = torch.full((8,), 10)
    assert torch.equal(loaded(layouts, t, objects), model.eval()(layouts, t, objects))


def test_guided_generation_keeps_the_fixed_coordinates():
    model = LayoutNet(LayoutNetConfig.tiny()).eval()
    objects = torch.rand(3, 3, 32, 32) * 2 - 1
    fixed = {"x": torch.tensor([-0.5, 0.0, 0.5]), "size": torch.tensor([0.4, 0.5, 0.6])}
    layouts = model.generate(objects, steps=10, fixed=fixed, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layouts[:, 0], fixed["x"]) and torch.equal(layouts[:, 2], fixed["size"])
    free = model.generate(objects, steps=10, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(free[:, 0], fixed["x"])


def test_layoutnet_learns_where_hands_go_and_resumes_after_a_crash(tmp_path, local_store_env):
    train_ref = make_pairs(tmp_path, "pairs-train", 100, seed=11)
    test_ref = make_pairs(tmp_path, "pairs-test", 40, seed=12)
    config = TrainConfig(datasets=[train_ref], eval_datasets=[test_ref], model="layoutnet", steps=600,
                         batch_size=32, learning_rate=1e-3, checkpoint_every=100, options={"preset": "tiny"})

    def crash_at(step_to_crash):
        def progress(step, steps, loss):
            if step == step_to_crash:
                raise KeyboardInterrupt("killed")
        return progress

    with pytest.raises(KeyboardInterrupt):
        train(LayoutNetTask(), config, progress=crash_at(150))  # after the checkpoint at step 100
    seen = []
    version = train(LayoutNetTask(), config, progress=lambda step, steps, loss: seen.append(step))
    assert seen[0] == 101 and seen[-1] == 600  # resumed from the checkpoint, not from scratch
    metrics = version.manifest.metrics
    assert version.manifest.datasets == [train_ref] and metrics["evaluated_on"] == test_ref
    assert metrics["final_loss"] < metrics["first_loss"] / 3
    # Held-out pairs: generated layouts cover the true hand far better than random ones.
    assert metrics["mean_iou_generated"] > 2 * metrics["mean_iou_random"], metrics
    assert {"config.json", "model.safetensors", "loss_curve.png", "training.json", "README.md"} <= set(
        version.manifest.files)
    # The interrupted-and-resumed run ends with the weights of an uninterrupted one.
    fresh = train(LayoutNetTask(), config.model_copy(update={"model": "layoutnet-straight"}))
    resumed_weights, straight_weights = version.load_state_dict(), fresh.load_state_dict()
    assert all(torch.equal(resumed_weights[k], straight_weights[k]) for k in resumed_weights)
    assert Store.from_settings(Settings()).list_dirs("checkpoints", "layoutnet") == []  # cleaned up once published


def test_a_model_in_s3_loads_back_bit_identically(tmp_path, s3_store_env):
    ref = make_pairs(tmp_path, "pairs", 16, seed=3)
    version = train(LayoutNetTask(), TrainConfig(datasets=[ref], model="layoutnet", steps=3, batch_size=4,
                                                 options={"preset": "tiny"}))
    assert version.url.startswith("s3://")
    loaded = LayoutNet.from_pretrained(version.url, **Settings().storage_options(version.url))
    stored = version.load_state_dict()
    assert all(torch.equal(loaded.state_dict()[k], stored[k]) for k in stored)
    assert loaded.config == LayoutNetConfig.tiny()
    assert ModelStore(Store.from_settings(Settings())).open("layoutnet").validate() == []


def test_bad_training_configs_fail_with_the_field():
    with pytest.raises(ConfigError, match="model name"):
        validate_run_config(TrainConfig, {"datasets": ["x"], "model": "../escape"})
    with pytest.raises(ConfigError, match="datasets"):
        validate_run_config(TrainConfig, {"datasets": [], "model": "m"})
