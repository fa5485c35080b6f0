"""Fixtures of the affordance tests: tiny model versions in the store, a small held-out HO3Pairs version."""

import pytest
import torch

from hoi_factory.config import ExecutionConfig, Settings
from hoi_factory.model_store import ModelStore
from hoi_factory.run import run_pipeline
from hoi_factory.storage import Store
from models.affordance.contentnet import ContentNet
from models.affordance.layoutnet import LayoutNet, LayoutNetConfig
from tasks.ho3pairs.pipeline import PairsConfig, PairsPipeline
from tasks.procedural.hand_object import write_hand_object_folder

LOCAL = ExecutionConfig(executor="local", shard_size=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: threads only contend (on a loaded 2-core machine, 2 threads ran 40x slower than one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_versions(tmp_path, local_store_env):
    """Two random tiny LayoutNet versions (v1, v2) and one tiny ContentNet, published: the mechanics are tested,
    not what the models learned."""
    models = ModelStore(Store.from_settings(Settings()))
    for seed in (0, 1):
        torch.manual_seed(seed)
        LayoutNet(LayoutNetConfig.tiny()).save_pretrained(tmp_path / f"layoutnet-{seed}")
        models.save_folder("layoutnet", tmp_path / f"layoutnet-{seed}")
    ContentNet.from_pretrained("tiny").save_pretrained(str(tmp_path / "contentnet"))
    models.save_folder("contentnet", tmp_path / "contentnet")
    return models


@pytest.fixture
def held_out(tmp_path, local_store_env):
    """HO3Pairs from 3 procedural hand–object scenes (true HOI images, layouts, object masks)."""
    write_hand_object_folder(tmp_path / "hoi", 3, seed=1, with_bad_files=False)
    return run_pipeline(PairsPipeline(), PairsConfig(
        inputs=str(tmp_path / "hoi"), inpainter="biharmonic", sdedit="none", size=64, max_seam_score=1e9,
        execution=LOCAL, output={"dataset": "pairs"})).dataset
