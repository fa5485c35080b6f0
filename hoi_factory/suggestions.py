"""'Did you mean' for names a person typed: pipelines, trainers, config keys, variant kinds, datasets, models."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(typed: str, choices: Iterable[str], prefix: str = "") -> str:
    """'; did you mean {prefix}X?' for the closest of `choices` (difflib's ratio >= 0.6), or '' when none is close.
    Keys are matched without their common `prefix` (`execution.`), which would make any two of them look alike."""
    close = difflib.get_close_matches(typed, list(choices), n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else ""
