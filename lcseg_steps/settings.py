"""Canonical digests of stage settings, recorded in every store's attrs."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def settings_digest(settings: Any) -> str:
    """Short stable hash of JSON-able settings (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
