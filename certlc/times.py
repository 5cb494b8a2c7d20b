"""Timestamps as certlc writes and reads them: ISO 8601 in UTC with a ``Z``."""

from __future__ import annotations

import datetime as dt

__all__ = ["iso_utc", "parse_iso"]


def iso_utc(value: dt.datetime | None) -> str | None:
    """``2026-12-03T13:11:17Z`` (seconds, UTC), or None for None."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def parse_iso(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
