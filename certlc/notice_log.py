"""How often owners hear about the same thing: a per-certificate log of the notices sent.

A failing renewal is retried by the queue, the sweep and Event Grid's redeliveries; each attempt
must not become another e-mail. Notices are "the same" when they share a certificate and a
:attr:`~certlc.notify.Notice.topic` (a renewal per new version; anything else per event, reason
and version). The same notice goes out again only after ``repeat_after`` has passed; each time it
is seen counts as an attempt, which the next message shows. SQLite (in ``state_dir``) holds the
log: one file, safe for the worker's concurrent runs on this machine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from certlc.files import open_sqlite
from certlc.notify import Notice

__all__ = ["Decision", "NoticeLog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notices (
    vault TEXT NOT NULL,
    certificate TEXT NOT NULL,
    topic TEXT NOT NULL,
    seen INTEGER NOT NULL DEFAULT 0,      -- times this notice came up (sent or held back)
    last_sent REAL,                        -- unix time of the last delivery, NULL before the first
    PRIMARY KEY (vault, certificate, topic)
)
"""


@dataclass(frozen=True)
class Decision:
    send: bool
    attempt: int  # how many times this notice has come up, this one included
    last_sent: dt.datetime | None


class NoticeLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return open_sqlite(self.path, _SCHEMA)

    def decide(self, notice: Notice, repeat_after: dt.timedelta, *, now: dt.datetime | None = None) -> Decision:
        """Whether ``notice`` is to be sent now, and which attempt it is. Reads only: a delivery
        that fails (and its task's retries) does not count; :meth:`record` does."""
        now = now or dt.datetime.now(dt.UTC)
        with self._db() as db:
            row = db.execute("SELECT seen, last_sent FROM notices WHERE vault = ? AND certificate = ? AND topic = ?",
                             (notice.vault, notice.certificate, notice.topic)).fetchone()
        seen, last = row if row is not None else (0, None)
        last_sent = dt.datetime.fromtimestamp(last, dt.UTC) if last is not None else None
        send = last_sent is None or now - last_sent >= repeat_after
        return Decision(send=send, attempt=seen + 1, last_sent=last_sent)

    def record(self, notice: Notice, *, sent: bool, now: dt.datetime | None = None) -> None:
        """Count this occurrence, and when ``sent``, when it was delivered."""
        now = now or dt.datetime.now(dt.UTC)
        key = (notice.vault, notice.certificate, notice.topic)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR IGNORE INTO notices (vault, certificate, topic) VALUES (?, ?, ?)", key)
            db.execute("UPDATE notices SET seen = seen + 1, last_sent = CASE WHEN ? THEN ? ELSE last_sent END "
                       "WHERE vault = ? AND certificate = ? AND topic = ?", (sent, now.timestamp(), *key))
            db.execute("COMMIT")
