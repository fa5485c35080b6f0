"""Every pipeline `hoi-factory run` knows, by name: where its class and its Prefect flow live.

Import paths, not objects, so listing names or parsing a command imports no pipeline (nor torch): only the
pipeline a command runs is imported. Pipelines run in this order in the demo, so one may feed on a dataset an
earlier one made.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hoi_factory.pipeline import Pipeline

PIPELINES: dict[str, tuple[str, str]] = {  # name -> (pipeline class, its flow), as "module:attribute"
    "ingest": ("tasks.images.ingest:IngestPipeline", "flows.ingest:ingest"),
    "synthetic": ("tasks.synthetic.pipeline:SyntheticPipeline", "flows.synthetic:synthetic"),
    # CHORUS, in the order its datasets feed each other
    "chorus-prompts": ("tasks.chorus.prompts:PromptsPipeline", "flows.chorus:chorus_prompts"),
    "chorus-views": ("tasks.chorus.views:ViewsPipeline", "flows.chorus:chorus_views"),
    "chorus-test-views": ("tasks.chorus.coco_eft:COCOEFTPipeline", "flows.chorus:chorus_test_views"),
    "chorus-occupancy": ("tasks.chorus.occupancy:OccupancyPipeline", "flows.chorus:chorus_occupancy"),
    # HOGSA, before HO3Pairs, which can read its renders
    "hogsa-models": ("tasks.hogsa.hogs_models:HOGSModelsPipeline", "flows.hogsa:hogsa_models"),
    "hogsa": ("tasks.hogsa.augment:AugmentPipeline", "flows.hogsa:hogsa"),
    # HO3Pairs
    "ho3pairs": ("tasks.ho3pairs.pipeline:PairsPipeline", "flows.ho3pairs:ho3pairs"),
    # C-HOI training data
    "hoi-annotations": ("tasks.c_hoi.annotations:HOIAnnotationsPipeline", "flows.c_hoi:hoi_annotations"),
}


def _load(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(import_module(module), attribute)


def pipeline_class(name: str) -> type[Pipeline]:
    return _load(PIPELINES[name][0])


def pipeline_flow(name: str):
    return _load(PIPELINES[name][1])
