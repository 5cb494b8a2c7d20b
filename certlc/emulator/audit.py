"""Who called which vault: one JSON line per request in ``<state>/audit.jsonl``.

A record holds the time, vault, calling principal (name and client id; null when the request
carried no valid token), method, path and status. Never the token, a query string or a body:
the log is meant to be read by tests and people, so it must hold nothing secret.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from certlc.files import PRIVATE_FILE_MODE

__all__ = ["AUDIT_FILE", "AuditLog", "AuditRecord", "read_audit_log"]

AUDIT_FILE = "audit.jsonl"


@dataclass(frozen=True)
class AuditRecord:
    time: str
    vault: str
    principal: str | None
    client_id: str | None
    method: str
    path: str
    status: int


class AuditLog:
    """Append-only writer; safe to share between the servers' threads."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / AUDIT_FILE
        self._lock = threading.Lock()

    def record(
        self, *, vault: str, principal: str | None, client_id: str | None, method: str, path: str, status: int
    ) -> None:
        entry = AuditRecord(
            time=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            vault=vault,
            principal=principal,
            client_id=client_id,
            method=method,
            path=path,
            status=status,
        )
        line = json.dumps(asdict(entry), separators=(",", ":")) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)


def read_audit_log(state_dir: Path) -> list[AuditRecord]:
    """Every record so far, oldest first (empty when nothing was logged yet)."""
    try:
        text = (Path(state_dir) / AUDIT_FILE).read_text("utf-8")
    except FileNotFoundError:
        return []
    return [AuditRecord(**json.loads(line)) for line in text.splitlines() if line.strip()]
