"""Deterministic sample ids and seeds: functions of (config hash, input id, index) and nothing else.

A re-run of the same config over the same inputs makes the same ids and draws the same random numbers,
whichever executor, worker count or resume point produced them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_SEPARATOR = "\x1f"


def _digest(*parts: object) -> str:
    return hashlib.sha256(_SEPARATOR.join(str(p) for p in parts).encode()).hexdigest()


def sample_id(config_hash: str, input_id: str, index: int) -> str:
    return _digest("sample", config_hash, input_id, index)[:20]


def sample_seed(config_hash: str, input_id: str, index: int) -> int:
    """A 31-bit seed, valid for numpy, torch and Python's random alike."""
    return int(_digest("seed", config_hash, input_id, index)[:8], 16) & 0x7FFFFFFF


def fingerprint(obj: Any) -> str:
    """A short hash of JSON-able data (plans, configs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[:16]
