"""affordance-synthesis: object images (a folder, or HO3Pairs' object-only column) through LayoutNet and ContentNet
versions from the model store. Each row's layout and image are what that exact model version makes from the row's
seed (recomputed here by calling the models directly), a pinned version is used rather than the latest, reruns
make the same bytes, guided layouts keep the parent's coordinates, and a dataset source is the run's lineage."""

import numpy as np
import pytest
import torch

from hoi_factory.codec import decode_image
from hoi_factory.config import ConfigError, ExecutionConfig, Settings, validate_run_config
from hoi_factory.model_store import ModelStore
from hoi_factory.run import run_pipeline
from models.affordance.contentnet import ContentNet
from models.affordance.layoutnet import LayoutNet
from tasks.affordance.synthesis import CONTENT_SEED_OFFSET, SynthesisConfig, SynthesisPipeline, square
from tasks.procedural.image_folder import write_image_folder

LOCAL = ExecutionConfig(executor="local", shard_size=4)
SIZE, STEPS = 32, 3


def loaded(models: ModelStore, ref: str, cls):
    url = models.open_ref(ref).url
    return cls.from_pretrained(url, "cpu", **Settings().storage_options(url)).eval()


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 127.5 - 1


def direct_layout(layoutnet: LayoutNet, object_image: np.ndarray, seed: int, fixed=None) -> np.ndarray:
    small = torch.nn.functional.interpolate(as_batch(object_image), size=layoutnet.config.image_size, mode="bilinear",
                                            antialias=True, align_corners=False)
    return layoutnet.generate(small, STEPS, fixed, torch.Generator().manual_seed(seed))[0].numpy()


def test_folder_objects_become_hoi_images_from_the_pinned_model_versions_and_the_row_seeds(tmp_path,
                                                                                           model_versions):
    folder = tmp_path / "objects"
    write_image_folder(folder, count=2, seed=5, with_bad_files=False)  # 160 x 120 scenes: cropped to squares
    config = SynthesisConfig(objects=str(folder), layoutnet="layoutnet/v1", contentnet="contentnet",
                             samples_per_object=2, size=SIZE, steps=STEPS, execution=LOCAL,
                             output={"dataset": "synthesized"})
    result = run_pipeline(SynthesisPipeline(), config)
    rows = result.dataset.to_arrow().to_pylist()
    assert len(rows) == 4 and result.dataset.manifest.parents == []
    assert sorted((r["input_id"], r["sample_index"]) for r in rows) == sorted(
        (f"scenes/scene-{i:05d}.png", k) for i in range(2) for k in range(2))
    assert len({r["seed"] for r in rows}) == 4
    assert {(r["layoutnet_version"], r["contentnet_version"]) for r in rows} == {("layoutnet/v1", "contentnet/v1")}

    v1, v2 = loaded(model_versions, "layoutnet/v1", LayoutNet), loaded(model_versions, "layoutnet/v2", LayoutNet)
    contentnet = loaded(model_versions, "contentnet/v1", ContentNet)
    for row in rows:
        source = np.asarray(decode_image((folder / row["input_id"]).read_bytes(), "RGB"))
        object_image = decode_image(row["object_image"], "RGB")
        assert np.array_equal(object_image, square(source, SIZE))
        layout = np.asarray(row["layout"], dtype=np.float32)
        assert np.allclose(layout, direct_layout(v1, object_image, row["seed"]), atol=1e-5)
        assert not np.allclose(layout, direct_layout(v2, object_image, row["seed"]), atol=1e-3)  # v1, not latest
        hoi = decode_image(row["hoi_image"], "RGB")
        assert hoi.shape == (SIZE, SIZE, 3) and row["size"] == SIZE
        [expected] = contentnet.generate(as_batch(object_image),
                                         torch.as_tensor(layout)[None], ["object"], STEPS,
                                         generator=torch.Generator().manual_seed(row["seed"] + CONTENT_SEED_OFFSET))
        assert np.abs(hoi.astype(int) - expected.astype(int)).max() <= 1

    again = run_pipeline(SynthesisPipeline(), config.model_copy(
        update={"output": config.output.model_copy(update={"dataset": "synthesized-again"})}))
    key = ("sample_id", "layout", "hoi_image")
    assert sorted(tuple(r[k] for k in key) for r in again.dataset.to_arrow().to_pylist()) == \
        sorted(tuple(r[k] for k in key) for r in rows)


def test_guided_synthesis_from_ho3pairs_keeps_each_parents_layout_and_records_the_lineage(model_versions, held_out):
    pairs = held_out
    parents = {r["sample_id"]: r for r in pairs.to_arrow(["sample_id", "object_image", "object_class", "layout"])
               .to_pylist()}
    assert parents
    config = SynthesisConfig(objects="pairs", source="dataset", layoutnet="layoutnet", contentnet="contentnet/v1",
                             layout="guided", size=SIZE, steps=STEPS, samples_per_object=1, execution=LOCAL,
                             output={"dataset": "guided"})
    result = run_pipeline(SynthesisPipeline(), config)
    rows = result.dataset.to_arrow().to_pylist()
    assert result.dataset.manifest.parents == [pairs.ref]
    assert sorted(r["input_id"] for r in rows) == sorted(parents)
    for row in rows:
        parent = parents[row["input_id"]]
        assert row["layoutnet_version"] == "layoutnet/v2"  # the latest, resolved
        assert np.array_equal(np.asarray(row["layout"][:3], np.float32), np.asarray(parent["layout"][:3], np.float32))
        assert row["object_class"] == parent["object_class"]
        assert np.array_equal(decode_image(row["object_image"], "RGB"),
                              square(decode_image(parent["object_image"], "RGB"), SIZE))
        assert decode_image(row["hoi_image"], "RGB").shape == (SIZE, SIZE, 3)


def test_guided_layouts_need_values_or_a_dataset_layout_column():
    with pytest.raises(ConfigError, match="source=dataset"):
        validate_run_config(SynthesisConfig, {"objects": "x", "layoutnet": "l", "contentnet": "c",
                                              "layout": "guided"})
    with pytest.raises(ConfigError, match="lacks"):
        validate_run_config(SynthesisConfig, {"objects": "x", "layoutnet": "l", "contentnet": "c",
                                              "layout": {"kind": "guided", "fix": ["x", "y"], "values": {"x": 0.1}}})
