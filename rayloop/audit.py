"""The audit trail: one JSON line per decision, appended under RAYLOOP_HOME (`rayloop status` reads it).

Appends are single `write` calls on an O_APPEND file, so lines from concurrent processes on one
machine do not interleave.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any

from rayloop import paths

__all__ = ["record", "read"]


def record(event: str, **fields: Any) -> dict[str, Any]:
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields}
    line = (json.dumps(entry, default=str, sort_keys=False) + "\n").encode()
    target = paths.audit_log()
    paths.ensure(target.parent)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return entry


def read(limit: int | None = None, event: str | None = None) -> list[dict[str, Any]]:
    """The newest `limit` entries (optionally of one event type), oldest first."""
    target = paths.audit_log()
    if not target.exists():
        return []
    entries = [json.loads(line) for line in target.read_text().splitlines() if line.strip()]
    if event is not None:
        entries = [e for e in entries if e["event"] == event]
    return entries[-limit:] if limit else entries
