"""Secrets out of error text: what an external service answers (an endpoint that echoes the request's
Authorization header into its 401 body, say) is scrubbed before it is logged, stored in a manifest or shown."""

from __future__ import annotations

import re
from typing import Iterable

REDACTED = "[redacted]"
# Header-like credentials whatever their value: "Authorization: Bearer x", "api_key='x'", "x-api-key": "x".
_CREDENTIALS = re.compile(r"(?i)((?:authorization|x-api-key|api[-_]?key|secret[-_]?access[-_]?key)[\"']?\s*[:=]\s*"
                          r"[\"']?)(?:bearer\s+|basic\s+)?[^\s\"',}\]]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every given secret value and every credential-looking header value replaced."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _CREDENTIALS.sub(lambda m: m.group(1) + REDACTED, text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
