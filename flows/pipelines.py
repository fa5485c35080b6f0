"""Every registered pipeline's Prefect flow as an attribute of this module, made on first access from its
class (flows/registry.py): `flows/pipelines.py:chorus_views` is the entrypoint of a chorus-views deployment."""

from __future__ import annotations

from flows.registry import PIPELINES, flow_function_name, pipeline_flow

_BY_FUNCTION_NAME = {flow_function_name(name): name for name in PIPELINES}


def __getattr__(attribute: str):
    if attribute in _BY_FUNCTION_NAME:
        return pipeline_flow(_BY_FUNCTION_NAME[attribute])
    raise AttributeError(f"flows.pipelines has no flow {attribute!r}; registered: {', '.join(_BY_FUNCTION_NAME)}")


def __dir__() -> list[str]:
    return sorted(_BY_FUNCTION_NAME)
