"""The history store: every renewal outcome and every inventory, in SQLite by default.

The renewal flow records each outcome (step 7); the inventory flow records what each vault held
at each run. ``certlc status``, the dashboard and ``/metrics`` read the last outcome per
certificate from here, so they do not need the Prefect API. One file (``inventory.history_path``,
default ``<state_dir>/history.sqlite``) in WAL mode: the worker's concurrent runs write, readers
read at the same time. Rows hold names, versions, thumbprints, dates and reasons — never key
material, never a message a CA or vault could fill with something secret beyond the reason text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certlc.files import open_sqlite

__all__ = ["History", "RenewalRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS renewals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,              -- ISO 8601 UTC
    vault TEXT NOT NULL,
    name TEXT NOT NULL,
    outcome TEXT NOT NULL,         -- Renewed | AlreadyRenewed | Pending | Denied | Failed | NotDue ...
    reason TEXT NOT NULL,
    message TEXT,
    old_version TEXT, new_version TEXT,
    old_thumbprint TEXT, new_thumbprint TEXT,
    old_not_after TEXT, new_not_after TEXT,
    template TEXT,
    run_id TEXT
);
CREATE INDEX IF NOT EXISTS renewals_by_certificate ON renewals (vault, name, id);
CREATE TABLE IF NOT EXISTS inventory (
    run_at TEXT NOT NULL,
    vault TEXT NOT NULL,
    name TEXT NOT NULL,
    row TEXT NOT NULL,             -- the inventory row as JSON
    PRIMARY KEY (run_at, vault, name)
);
"""

_FIELDS = ("vault", "name", "outcome", "reason", "message", "old_version", "new_version", "old_thumbprint",
           "new_thumbprint", "old_not_after", "new_not_after", "template")
_COLUMNS = ("at", *_FIELDS, "run_id")
# Literal SQL (the columns above, in order): values only ever travel as parameters.
_INSERT = ("INSERT INTO renewals (at, vault, name, outcome, reason, message, old_version, new_version, "
           "old_thumbprint, new_thumbprint, old_not_after, new_not_after, template, run_id) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_LAST = ("SELECT at, vault, name, outcome, reason, message, old_version, new_version, old_thumbprint, "
         "new_thumbprint, old_not_after, new_not_after, template, run_id FROM renewals "
         "WHERE id IN (SELECT MAX(id) FROM renewals GROUP BY vault, name)")
_LAST_MEANINGFUL = ("SELECT at, vault, name, outcome, reason, message, old_version, new_version, old_thumbprint, "
                    "new_thumbprint, old_not_after, new_not_after, template, run_id FROM renewals "
                    "WHERE id IN (SELECT MAX(id) FROM renewals WHERE outcome NOT IN ('NotDue', 'Skipped') "
                    "GROUP BY vault, name)")
_OF_CERTIFICATE = ("SELECT at, vault, name, outcome, reason, message, old_version, new_version, old_thumbprint, "
                   "new_thumbprint, old_not_after, new_not_after, template, run_id FROM renewals "
                   "WHERE vault = ? AND name = ? ORDER BY id DESC LIMIT ?")


@dataclass(frozen=True)
class RenewalRecord:
    at: str
    vault: str
    name: str
    outcome: str
    reason: str
    message: str | None = None
    old_version: str | None = None
    new_version: str | None = None
    old_thumbprint: str | None = None
    new_thumbprint: str | None = None
    old_not_after: str | None = None
    new_not_after: str | None = None
    template: str | None = None
    run_id: str | None = None


class History:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return open_sqlite(self.path, _SCHEMA)

    def record_outcome(self, outcome: Mapping[str, Any], *, run_id: str | None = None,
                       at: dt.datetime | None = None) -> None:
        """Append one renewal outcome (a :class:`certlc.renewal.Outcome` as a dict)."""
        when = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
        values = [str(outcome.get(f)) if outcome.get(f) is not None else None for f in _FIELDS]
        with self._db() as db:
            db.execute(_INSERT, (when, *values, run_id))

    def last_outcomes(self, *, meaningful: bool = True) -> dict[tuple[str, str], RenewalRecord]:
        """The latest outcome per (vault, certificate); with ``meaningful``, NotDue runs (a sweep
        or a duplicate event that found nothing to do) do not hide the outcome before them."""
        with self._db() as db:
            rows = db.execute(_LAST_MEANINGFUL if meaningful else _LAST).fetchall()
        found = [RenewalRecord(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]
        return {(r.vault, r.name): r for r in found}

    def outcomes(self, vault: str, name: str, limit: int = 50) -> list[RenewalRecord]:
        """The certificate's outcomes, newest first."""
        with self._db() as db:
            rows = db.execute(_OF_CERTIFICATE, (vault, name, limit)).fetchall()
        return [RenewalRecord(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    def last_renewed(self) -> dict[tuple[str, str], str]:
        """When each certificate was last renewed (ISO 8601), for those ever renewed here."""
        with self._db() as db:
            rows = db.execute("SELECT vault, name, MAX(at) FROM renewals WHERE outcome IN ('Renewed', 'AlreadyRenewed') "
                              "GROUP BY vault, name").fetchall()
        return {(v, n): at for v, n, at in rows}

    def counts(self) -> dict[tuple[str, str, str], int]:
        """How many outcomes of each kind each certificate had: (vault, name, outcome) -> count."""
        with self._db() as db:
            rows = db.execute("SELECT vault, name, outcome, COUNT(*) FROM renewals GROUP BY vault, name, outcome")
            return {(v, n, o): c for v, n, o, c in rows.fetchall()}

    def record_inventory(self, rows: Iterable[Mapping[str, Any]], *, run_at: dt.datetime) -> int:
        import json

        when = run_at.astimezone(dt.UTC).isoformat(timespec="seconds")
        batch = [(when, r["vault"], r["name"], json.dumps(dict(r), default=str)) for r in rows]
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO inventory (run_at, vault, name, row) VALUES (?, ?, ?, ?)", batch)
            db.execute("COMMIT")
        return len(batch)

    def latest_inventory(self) -> tuple[str | None, list[dict[str, Any]]]:
        """(when, rows) of the last inventory run; (None, []) before the first."""
        import json

        with self._db() as db:
            last = db.execute("SELECT MAX(run_at) FROM inventory").fetchone()[0]
            if last is None:
                return None, []
            rows = db.execute("SELECT row FROM inventory WHERE run_at = ? ORDER BY vault, name", (last,)).fetchall()
        return last, [json.loads(r[0]) for r in rows]
