"""What `hoi-factory status` reports besides the store: recent flow runs (Prefect) and the Ray cluster.

One Prefect server may serve factories on several stores; a flow run says which by its tag `hoi-store:<url>`
(CLI runs get it from `hoi-factory`, deployment runs from their deployment's tags in infra/prefect.yaml), and
`status` lists only the runs of the configured store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

RAY_PROBE = """
import json, logging, ray
context = ray.init(address={address!r}, logging_level=logging.ERROR, log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
total = ray.cluster_resources()
print(json.dumps({{"nodes": len(nodes), "cpus": total.get("CPU", 0), "gpus": total.get("GPU", 0),
                  "dashboard": context.dashboard_url or None}}))
"""


STORE_TAG_PREFIX = "hoi-store:"


def store_tag(store_url: str) -> str:
    """The tag of flow runs that work on the store at `store_url` (as HOI_STORE_URL spells it)."""
    return f"{STORE_TAG_PREFIX}{store_url}"


@dataclass
class FlowRunRow:
    flow: str
    name: str
    state: str
    started: str
    seconds: float | None


def recent_flow_runs(store_url: str, limit: int = 10) -> list[FlowRunRow]:
    """The latest flow runs on the store at `store_url`, from the configured Prefect API (the ephemeral one when
    none is set)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    on_store = FlowRunFilter(tags=FlowRunFilterTags(all_=[store_tag(store_url)]))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=on_store, sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                                     limit=limit)
        flow_names = {flow_id: client.read_flow(flow_id).name for flow_id in {run.flow_id for run in runs}}
    return [
        FlowRunRow(flow_names[run.flow_id], run.name, run.state_type.value if run.state_type else "?",
                   run.start_time.strftime("%Y-%m-%d %H:%M:%S") if run.start_time else "-",
                   run.total_run_time.total_seconds() if run.total_run_time else None)
        for run in runs
    ]


def ray_cluster(address: str, timeout: float = 60.0) -> dict:
    """Nodes, CPUs, GPUs and dashboard of a running cluster, asked from a short-lived driver process."""
    probe = subprocess.run([sys.executable, "-c", RAY_PROBE.format(address=address)],
                           capture_output=True, text=True, timeout=timeout)
    if probe.returncode != 0:
        raise RuntimeError(probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "no answer")
    return json.loads(probe.stdout.strip().splitlines()[-1])
