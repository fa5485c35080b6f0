"""Every CHORUS stage chain declares columns that chain (hoi_factory.pipeline.check_columns), for the default
config, the demo config and each option that changes the stages; a chain that cannot work is refused."""

import pytest

from hoi_factory.config import ExecutionConfig
from hoi_factory.pipeline import ColumnError, check_columns
from tasks.chorus.coco_eft import COCOEFTConfig, COCOEFTPipeline
from tasks.chorus.occupancy import OccupancyConfig, OccupancyPipeline
from tasks.chorus.prompts import PromptsConfig, PromptsPipeline
from tasks.chorus.views import DiffusersImages, GivenCalibration, TorchvisionPerception, ViewsConfig, ViewsPipeline

LOCAL = ExecutionConfig(executor="local")
COCO_INPUTS = {"eft": "eft.json", "annotations": ["instances.json"], "images": "images", "categories": ["cup"]}

CONFIGS = [
    (PromptsPipeline, PromptsConfig(categories=["cup"])),
    (PromptsPipeline, PromptsConfig(categories=["cup"], generator="llm")),
    (ViewsPipeline, ViewsConfig()),
    (ViewsPipeline, ViewsConfig(calibration="given")),
    (ViewsPipeline, ViewsConfig(perception="torchvision")),
    (ViewsPipeline, ViewsConfig(perception="torchvision", calibration="given")),
    (ViewsPipeline, ViewsConfig(source="diffusers", perception="torchvision", calibration="fit")),
    (COCOEFTPipeline, COCOEFTConfig(**COCO_INPUTS)),
    (OccupancyPipeline, OccupancyConfig()),
    (OccupancyPipeline, OccupancyConfig(test_views="test", clusters=["prompt+part"], canonicalize=False)),
]


@pytest.mark.parametrize("pipeline_class, config", CONFIGS,
                         ids=[f"{p.name}-{i}" for i, (p, _) in enumerate(CONFIGS)])
def test_the_stage_chain_makes_what_it_needs_and_writes(pipeline_class, config):
    pipeline = pipeline_class()
    check_columns(pipeline, pipeline.stages(config))


@pytest.mark.parametrize("pipeline_class", [PromptsPipeline, ViewsPipeline, COCOEFTPipeline, OccupancyPipeline])
def test_the_demo_chain_makes_what_it_needs_and_writes(pipeline_class, tmp_path):
    pipeline = pipeline_class()
    config = pipeline.demo_config(tmp_path, LOCAL)
    assert config is not None
    check_columns(pipeline, pipeline.stages(config))


def test_ground_truth_stages_after_generated_images_are_refused_before_any_work():
    # The config refuses this pairing; the declared columns refuse it too, should a config slip through.
    config = ViewsConfig.model_construct(**{**ViewsConfig().__dict__, "source": DiffusersImages()})
    with pytest.raises(ColumnError, match=r"Perceive.*\['instances'\]"):
        check_columns(ViewsPipeline(), ViewsPipeline().stages(config))
    config = ViewsConfig.model_construct(**{**ViewsConfig().__dict__, "source": DiffusersImages(),
                                            "perception": TorchvisionPerception(), "calibration": GivenCalibration()})
    with pytest.raises(ColumnError, match=r"Calibrate.*\['true_R', 'true_pose', 'true_t'\]"):
        check_columns(ViewsPipeline(), ViewsPipeline().stages(config))
