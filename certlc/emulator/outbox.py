"""Each subscription's pending deliveries and counters, kept in ``<state>/events/outbox/<name>.json``.

The outbox holds schema-neutral events (rendered at delivery time) with their delivery state:
attempts, when the next is due, the last outcome, and for a given-up event the dead-letter
record waiting for its delay. It is rewritten atomically after every change, so pending
deliveries and retries survive an emulator restart; the counters shown by ``GET /admin/events``
are kept in the same file. Due times are real Unix seconds (retries run on the wall clock);
times shown in events and dead letters come from the emulator clock.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from certlc.emulator.deadletter import DeadLetter
from certlc.emulator.events import EmulatorEvent
from certlc.files import atomic_write, ensure_private_dir

__all__ = ["Outbox", "OutboxEntry", "OutboxStats"]

SCHEMA_VERSION = 1


@dataclass
class OutboxEntry:
    """One event on its way to one subscription."""

    event: EmulatorEvent
    published_at: float  # real Unix seconds: the time to live counts from here
    publish_time: str  # emulator time, as shown in a dead letter's publishTime
    attempts: int = 0
    next_attempt: float = 0.0  # real Unix seconds
    last_outcome: str | None = None
    last_attempt_time: str | None = None
    dead_letter: DeadLetter | None = None  # set once given up ...
    dead_letter_due: float | None = None  # ... and written to disk at this real time

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["event"] = self.event.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutboxEntry:
        letter = data.get("dead_letter")
        return cls(**{**data, "event": EmulatorEvent.from_json(data["event"]),
                      "dead_letter": DeadLetter(**letter) if letter else None})


@dataclass
class OutboxStats:
    delivered: int = 0
    retries: int = 0  # failed attempts that were scheduled again
    dead_lettered: int = 0
    last_outcome: str | None = None
    last_attempt_time: str | None = None


@dataclass
class _Content:
    entries: list[OutboxEntry] = field(default_factory=list)
    stats: OutboxStats = field(default_factory=OutboxStats)


class Outbox:
    """A subscription's outbox. Read and change it only inside :meth:`change` (or the readers)."""

    def __init__(self, directory: Path, subscription: str) -> None:
        ensure_private_dir(directory)
        # Subscription names are free text in the settings; keep the file name tame.
        self.path = directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", subscription) + ".json")
        self._lock = threading.RLock()
        self._content = self._load()

    @contextmanager
    def change(self) -> Iterator[tuple[list[OutboxEntry], OutboxStats]]:
        """Mutate entries and stats in the block; saved when it ends."""
        with self._lock:
            yield self._content.entries, self._content.stats
            self._save()

    def add(self, entries: list[OutboxEntry]) -> None:
        with self.change() as (pending, _):
            pending.extend(entries)

    def snapshot(self) -> tuple[list[OutboxEntry], OutboxStats]:
        with self._lock:
            return list(self._content.entries), OutboxStats(**asdict(self._content.stats))

    def _load(self) -> _Content:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return _Content()
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"{self.path} has schema {data.get('schema')!r}; expected {SCHEMA_VERSION}")
        return _Content([OutboxEntry.from_json(e) for e in data["entries"]], OutboxStats(**data["stats"]))

    def _save(self) -> None:
        data = {"schema": SCHEMA_VERSION, "entries": [e.to_json() for e in self._content.entries],
                "stats": asdict(self._content.stats)}
        atomic_write(self.path, json.dumps(data, indent=1))
