"""ContentNet (tiny inpainting pipeline fine-tuned): it learns a fixed batch, its published version loads back
from the model store bit for bit, and the LayoutNet -> ContentNet chain turns an object image into HOI images."""

import numpy as np
import safetensors.torch
import torch

from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.run import run_pipeline
from hoi_factory.training import TrainConfig, train
from models.affordance.contentnet import ContentNet
from models.affordance.layoutnet import LayoutNet, LayoutNetConfig
from models.affordance.synthesis import synthesize
from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline
from tasks.procedural.hand_object import write_hand_object_folder
from tasks.training.contentnet import ContentNetTask


def test_tiny_contentnet_overfits_a_fixed_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("HOI_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = ContentNet.from_pretrained("tiny")
    hoi, objects = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    layouts = torch.tensor([[0.0, 0.0, 0.5, 1.0, 0.0]] * 4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    losses = []
    for step in range(60):
        loss = model.loss(hoi, objects, layouts, ["mug"] * 4, torch.Generator().manual_seed(step % 2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 10
    assert all(p.grad is None for p in model.vae.parameters())  # only the UNet is fine-tuned


def test_contentnet_training_publishes_a_diffusers_folder_that_loads_back(tmp_path, s3_store_env, monkeypatch):
    monkeypatch.setenv("HOI_CACHE", str(tmp_path / "cache"))
    write_hand_object_folder(tmp_path / "scenes", 12, seed=4, with_bad_files=False)
    pairs = run_pipeline(PairsPipeline(), PairsConfig(
        inputs=str(tmp_path / "scenes"), inpainter="biharmonic", sdedit="none", size=32, max_seam_score=1e9,
        execution=ExecutionConfig(executor="local"))).dataset
    version = train(ContentNetTask(), TrainConfig(datasets=[pairs.ref], model="contentnet", steps=3, batch_size=2,
                                                  options={"base": "tiny", "image_size": 32}))
    assert version.url.startswith("s3://") and "model_index.json" in version.manifest.files
    assert np.isfinite(version.manifest.metrics["l1_outside_splat"])
    loaded = ContentNet.from_pretrained(version.url, **Settings().storage_options(version.url))
    stored = safetensors.torch.load(version.read_bytes("unet/diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(loaded.unet.state_dict()[k], stored[k]) for k in stored)
    base = ContentNet.from_pretrained("tiny")
    assert any(not torch.equal(base.unet.state_dict()[k], stored[k]) for k in stored)  # it was trained


def test_layoutnet_then_contentnet_turn_an_object_image_into_hoi_images(tmp_path, monkeypatch):
    monkeypatch.setenv("HOI_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    object_image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    layoutnet, contentnet = LayoutNet(LayoutNetConfig.tiny()).eval(), ContentNet.from_pretrained("tiny")
    layouts, images = synthesize(object_image, layoutnet, contentnet, "mug", count=3, fixed={"x": 0.25}, steps=4)
    assert layouts.shape == (3, 5) and np.all(layouts[:, 0] == np.float32(0.25))
    assert len(images) == 3 and all(image.shape == (32, 32, 3) and image.dtype == np.uint8 for image in images)
    again, _ = synthesize(object_image, layoutnet, contentnet, "mug", count=3, fixed={"x": 0.25}, steps=4)
    assert np.array_equal(layouts, again)  # seeded
