"""Which failures a retry cannot help: shown to the user as their message, never retried."""

from __future__ import annotations

from hoi_factory.config import ConfigError
from hoi_factory.pipeline import PlanError
from hoi_factory.run import ErrorBudgetExceeded
from hoi_factory.storage import StoreError

USER_ERRORS = (ConfigError, PlanError, StoreError)  # in what the user asked for (exit code 2)
NOT_RETRIED = (*USER_ERRORS, ErrorBudgetExceeded)  # stage errors: a deterministic bug would fail again
