"""Dead-letter files in Event Grid's blob layout, on the local disk.

``<dir>/<SUBSCRIPTION-NAME-UPPER>/YYYY/M/D/H/<uuid>.json`` (UTC, date parts not zero-padded),
each a JSON array of events with the dead-letter properties added: camelCase for the Event Grid
schema, lower-case for CloudEvents (azure-reference.md §7.5). Files are mode 0600 and written
atomically, so a reader never sees half an array.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certlc.files import atomic_write, ensure_private_dir

__all__ = ["DeadLetter", "dead_letter_path", "dead_lettered_event", "write_dead_letters"]


@dataclass(frozen=True)
class DeadLetter:
    """Why and when an event was given up."""

    reason: str  # MaxDeliveryAttemptsExceeded, TimeToLiveExceeded, or the outcome not retried
    attempts: int
    last_outcome: str
    publish_time: str
    last_attempt_time: str


def dead_letter_path(directory: Path, subscription: str, moment: dt.datetime, name: str | None = None) -> Path:
    moment = moment.astimezone(dt.UTC)
    folder = re.sub(r"[^A-Z0-9_-]", "_", subscription.upper())  # a name must not climb out of directory
    return (directory / folder / str(moment.year) / str(moment.month) / str(moment.day)
            / str(moment.hour) / f"{name or uuid.uuid4()}.json")


def dead_lettered_event(event: Mapping[str, Any], schema: str, letter: DeadLetter) -> dict[str, Any]:
    """The rendered event plus Event Grid's dead-letter properties for its schema."""
    if schema == "cloudevents":
        extra = {
            "deadletterreason": letter.reason,
            "deliveryattempts": letter.attempts,
            "lastdeliveryoutcome": letter.last_outcome,
            "publishtime": letter.publish_time,
            "lastdeliveryattempttime": letter.last_attempt_time,
        }
    else:
        extra = {
            "deadLetterReason": letter.reason,
            "deliveryAttempts": letter.attempts,
            "lastDeliveryOutcome": letter.last_outcome,
            "publishTime": letter.publish_time,
            "lastDeliveryAttemptTime": letter.last_attempt_time,
        }
    return {**event, **extra}


def write_dead_letters(directory: Path, subscription: str, events: Sequence[Mapping[str, Any]],
                       moment: dt.datetime) -> Path:
    """Write one dead-letter file holding ``events``; return its path."""
    path = dead_letter_path(directory, subscription, moment)
    # Private folders below the dead-letter root (they hold event data); the root itself may be
    # a folder the user chose, so it is only created, never re-moded.
    if not directory.exists():
        ensure_private_dir(directory)
    current = directory
    for part in path.relative_to(directory).parts[:-1]:
        current = ensure_private_dir(current / part)
    atomic_write(path, json.dumps(list(events), indent=1))
    return path
