"""Timestamps and durations as certlc writes and reads them: ISO 8601 in UTC with a ``Z``;
durations as ``90``, ``90s``, ``15m``, ``3h``, ``25d`` or ``2w`` (a sign allowed)."""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["iso_utc", "parse_duration", "parse_iso", "parse_utc"]

_DURATION = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def iso_utc(value: dt.datetime | None) -> str | None:
    """``2026-12-03T13:11:17Z`` (seconds, UTC), or None for None."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def parse_iso(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def parse_utc(value: str | None) -> dt.datetime | None:
    """Like :func:`parse_iso`, for values stored by others: a time without a zone is UTC, and
    anything unreadable is None instead of an error."""
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def parse_duration(value: str | float | int) -> dt.timedelta:
    """``"25d"`` → 25 days; a bare number is seconds. ValueError names what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"duration {value!r} is not a number of seconds or a string like '25d'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"duration {value!r} is not like 90, 90s, 15m, 3h, 25d or 2w")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if abs(seconds) > 3650 * 86400:
        raise ValueError(f"duration {value!r} is over ten years")
    return dt.timedelta(seconds=seconds)
