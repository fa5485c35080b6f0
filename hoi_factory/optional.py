"""Optional dependencies fail with a message that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(ImportError):
    pass


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module` or explain which extra of hoi-factory brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{purpose} needs the Python package '{module.split('.')[0]}', which is not installed: "
            f"pip install 'hoi-factory[{extra}]'  ({exc})"
        ) from None
