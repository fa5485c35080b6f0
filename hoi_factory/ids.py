"""Deterministic sample ids and seeds: functions of (config hash, input id, index) and nothing else.

A re-run of the same config over the same inputs makes the same ids and draws the same random numbers,
whichever executor, worker count or resume point produced them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_SEPARATOR = "\x1f"


def sample_identity(config_hash: str, input_id: str, index: int) -> tuple[str, int]:
    """(sample id, seed) from one SHA-256 (the driver makes one per planned item): the id is the first 10 bytes
    in hex, the seed the next 4 as a 31-bit integer, valid for numpy, torch and Python's random alike."""
    digest = hashlib.sha256(f"{config_hash}{_SEPARATOR}{input_id}{_SEPARATOR}{index}".encode()).digest()
    return digest[:10].hex(), int.from_bytes(digest[10:14], "big") & 0x7FFFFFFF


def sample_id(config_hash: str, input_id: str, index: int) -> str:
    return sample_identity(config_hash, input_id, index)[0]


def sample_seed(config_hash: str, input_id: str, index: int) -> int:
    return sample_identity(config_hash, input_id, index)[1]


def fingerprint(obj: Any) -> str:
    """A short hash of JSON-able data (plans, configs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[:16]
