"""Every pipeline `hoi-factory run` knows, by name: one line each, the import path of its class.

Import paths, not objects, so listing names or parsing a command imports no pipeline (nor torch): only the
pipeline a command runs is imported. Each pipeline's Prefect flow is made from its class (`pipeline_flow`);
deployments name it `flows/pipelines.py:<name with _ for ->`. Pipelines run in this order in the demo, so one
may feed on a dataset an earlier one made.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect import Flow

    from hoi_factory.pipeline import Pipeline

PIPELINES: dict[str, str] = {  # name -> "module:PipelineClass"
    "ingest": "tasks.images.ingest:IngestPipeline",
    "synthetic": "tasks.synthetic.pipeline:SyntheticPipeline",
    # CHORUS, in the order its datasets feed each other
    "chorus-prompts": "tasks.chorus.prompts:PromptsPipeline",
    "chorus-views": "tasks.chorus.views:ViewsPipeline",
    "chorus-test-views": "tasks.chorus.coco_eft:COCOEFTPipeline",
    "chorus-occupancy": "tasks.chorus.occupancy:OccupancyPipeline",
    # HOGSA, before HO3Pairs, which can read its renders
    "hogsa-models": "tasks.hogsa.hogs_models:HOGSModelsPipeline",
    "hogsa": "tasks.hogsa.augment:AugmentPipeline",
    # HO3Pairs
    "ho3pairs": "tasks.ho3pairs.pipeline:PairsPipeline",
    "affordance-synthesis": "tasks.affordance.synthesis:SynthesisPipeline",  # reads HO3Pairs or a folder
    "affordance-evaluation": "tasks.affordance.evaluation:EvaluationPipeline",  # scores a synthesis vs held-out
    # C-HOI training data
    "hoi-annotations": "tasks.c_hoi.annotations:HOIAnnotationsPipeline",
}


def flow_function_name(name: str) -> str:
    """The Python name of a pipeline's flow: `chorus-views` -> `chorus_views`."""
    return name.replace("-", "_")


def pipeline_class(name: str) -> type[Pipeline]:
    module, _, attribute = PIPELINES[name].partition(":")
    return getattr(import_module(module), attribute)


@cache
def pipeline_flow(name: str) -> Flow[..., dict[str, Any]]:
    """The Prefect flow of pipeline `name`: `run_pipeline_flow` on its class, the config typed as its
    config class (Prefect validates parameters and shows the schema in the UI from that annotation)."""
    from prefect import flow

    from flows.runner import run_pipeline_flow

    cls = pipeline_class(name)

    def run(config):
        return run_pipeline_flow(cls(), config)

    run.__annotations__ = {"config": cls.config_class, "return": dict[str, Any]}
    run.__name__ = run.__qualname__ = flow_function_name(name)
    run.__module__ = "flows.pipelines"
    run.__doc__ = cls.description
    return flow(name=name, description=cls.description)(run)
