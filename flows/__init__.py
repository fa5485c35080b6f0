"""Prefect flows and the CLI. `flows.registry` lists what `hoi-factory run` can run, one line per pipeline, and
makes each pipeline's flow from its class. Importing this package imports no flow (the CLI starts fast)."""

from __future__ import annotations

import os

# Closed networks are the norm for us: no telemetry calls from Prefect's local server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The runtime core's log lines (resumes, leases) belong in the flow run's logs too.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "hoi_factory")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # the same code runs outside flows
# The ephemeral API server starts in 5-10 s on a quiet laptop; on a busy 2-core machine 20 s (the default) is short.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
