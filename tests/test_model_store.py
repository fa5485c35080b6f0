"""The model store: safetensors round trips (local and S3), immutability, checksums, safe names."""

import pytest
import torch

from hoi_factory.config import Settings
from hoi_factory.model_store import ModelStore
from hoi_factory.storage import Store, StoreError
from hoi_factory.versions import VersionPublished


def model_store():
    return ModelStore(Store.from_settings(Settings()))


def test_state_dict_round_trip_is_bit_identical(store_env):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    saved = model_store().save_state_dict("tiny-net", net.state_dict(), config={"hidden": 5},
                                          metrics={"loss": 0.25}, datasets=["ingest/v1"], card="# tiny-net\nA test.")
    loaded = model_store().open("tiny-net")
    assert loaded.version == saved.version == "v1"
    state = loaded.load_state_dict()
    assert state.keys() == net.state_dict().keys()
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value) and state[key].dtype == value.dtype
    assert loaded.manifest.datasets == ["ingest/v1"] and loaded.manifest.metrics == {"loss": 0.25}
    assert set(loaded.manifest.files) == {"model.safetensors", "config.json", "metrics.json", "README.md"}
    assert loaded.validate() == []


def test_versions_are_immutable_and_identical_content_is_not_duplicated(local_store_env):
    store = model_store()
    first = store.save("m", {"weights.bin": b"abc"})
    assert store.save("m", {"weights.bin": b"abc"}).version == first.version
    second = store.save("m", {"weights.bin": b"abd"})
    assert (first.version, second.version) == ("v1", "v2") and store.area.latest("m") == "v2"
    with pytest.raises(VersionPublished):
        store.save("m", {"weights.bin": b"xyz"}, version="v1")


def test_corruption_is_detected_on_read(local_store_env):
    store = model_store()
    saved = store.save("m", {"weights.bin": b"abc" * 100})
    store.store.write_bytes(b"tampered", "models", "m", saved.version, "weights.bin")
    with pytest.raises(StoreError, match="does not match its checksum"):
        store.open("m").read_bytes("weights.bin")
    assert len(store.open("m").validate()) == 1


def test_a_diffusers_style_folder_round_trips(local_store_env, tmp_path):
    folder = tmp_path / "pipeline"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "Tiny"}')
    (folder / "unet" / "config.json").write_text('{"layers": 1}')
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    saved = model_store().save_folder("tiny-pipeline", folder, metrics={"fid": 1.0})
    copy = saved.download(tmp_path / "copy")
    for file in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"):
        assert (copy / file).read_bytes() == (folder / file).read_bytes()


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", "", "x" * 101, "naïve", ".hidden", "a..b"])
def test_hostile_names_are_refused(local_store_env, name):
    with pytest.raises(StoreError, match="not allowed"):
        model_store().save(name, {"w": b"1"})


@pytest.mark.parametrize("file", ["../outside.bin", "/etc/passwd", "a/../../b"])
def test_file_names_cannot_leave_the_model_folder(local_store_env, file):
    with pytest.raises(StoreError, match="relative path inside"):
        model_store().save("m", {file: b"1"})
