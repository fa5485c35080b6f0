"""Prefect flows, one module per pipeline, plus the CLI. `PIPELINES` is what `hoi-factory run` can run."""

from __future__ import annotations

import os

# Closed networks are the norm for us: no telemetry calls from Prefect's local server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The runtime core's log lines (resumes, leases) belong in the flow run's logs too.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "hoi_factory")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # the same code runs outside flows
# The ephemeral API server starts in 5-10 s on a quiet laptop; on a busy 2-core machine 20 s (the default) is short.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from flows.c_hoi import hoi_annotations  # noqa: E402
from flows.chorus import chorus_occupancy, chorus_prompts, chorus_test_views, chorus_views  # noqa: E402
from flows.ho3pairs import ho3pairs  # noqa: E402
from flows.hogsa import hogsa, hogsa_models  # noqa: E402
from flows.ingest import ingest  # noqa: E402
from flows.synthetic import synthetic  # noqa: E402
from tasks.c_hoi.annotations import HOIAnnotationsPipeline  # noqa: E402
from tasks.chorus.coco_eft import COCOEFTPipeline  # noqa: E402
from tasks.chorus.occupancy import OccupancyPipeline  # noqa: E402
from tasks.chorus.prompts import PromptsPipeline  # noqa: E402
from tasks.chorus.views import ViewsPipeline  # noqa: E402
from tasks.ho3pairs.pipeline import PairsPipeline  # noqa: E402
from tasks.hogsa.augment import AugmentPipeline  # noqa: E402
from tasks.hogsa.hogs_models import HOGSModelsPipeline  # noqa: E402
from tasks.images.ingest import IngestPipeline  # noqa: E402
from tasks.synthetic.pipeline import SyntheticPipeline  # noqa: E402

# name -> (pipeline, its flow)
PIPELINES = {
    IngestPipeline.name: (IngestPipeline, ingest),
    SyntheticPipeline.name: (SyntheticPipeline, synthetic),
    # CHORUS, in the order its datasets feed each other
    PromptsPipeline.name: (PromptsPipeline, chorus_prompts),
    ViewsPipeline.name: (ViewsPipeline, chorus_views),
    COCOEFTPipeline.name: (COCOEFTPipeline, chorus_test_views),
    OccupancyPipeline.name: (OccupancyPipeline, chorus_occupancy),
    # HOGSA, before HO3Pairs, which can read its renders
    HOGSModelsPipeline.name: (HOGSModelsPipeline, hogsa_models),
    AugmentPipeline.name: (AugmentPipeline, hogsa),
    # HO3Pairs
    PairsPipeline.name: (PairsPipeline, ho3pairs),
    # C-HOI training data
    HOIAnnotationsPipeline.name: (HOIAnnotationsPipeline, hoi_annotations),
}
