"""The emulator's clock: real time plus an adjustable offset.

Certificates only reach Key Vault's event windows (30 days before expiry, expiry) after weeks;
shifting the clock lets a developer see ``CertificateNearExpiry`` now. Every vault and the event
scanner read this one clock, so "now" is the same everywhere in one emulator. Tokens and
delivery retries keep real time: they are about this machine's wall clock, not the vault's.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from certlc.times import parse_duration

__all__ = ["EmulatorClock", "describe_offset", "parse_offset"]

logger = logging.getLogger(__name__)


def parse_offset(value: str | float | int) -> float:
    """Seconds from ``"25d"``, ``"-3h"``, ``"90"`` or a number; ValueError says what is wrong."""
    return parse_duration(value).total_seconds()


def describe_offset(seconds: float) -> str:
    """``+2160000s (+25 days)``: readable in a log line or the CLI."""
    return f"{seconds:+.0f}s ({seconds / 86400:+.4g} days)"


class EmulatorClock:
    """``clock()`` is real time + offset in Unix seconds; the offset can change at run time."""

    def __init__(self, offset_seconds: float = 0.0, real: Callable[[], float] = time.time) -> None:
        self._real = real
        self._offset = float(offset_seconds)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[float], None]] = []

    def __call__(self) -> float:
        return self.now()

    def now(self) -> float:
        return self._real() + self._offset

    def now_datetime(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now(), dt.UTC)

    @property
    def offset_seconds(self) -> float:
        return self._offset

    def set_offset(self, offset_seconds: float) -> None:
        """Shift the clock; listeners (the event scanner) run in the caller's thread."""
        with self._lock:
            self._offset = float(offset_seconds)
            listeners = list(self._listeners)
        logger.info("emulator clock offset set to %s", describe_offset(self._offset))
        for listener in listeners:
            listener(self._offset)

    def on_change(self, listener: Callable[[float], None]) -> None:
        with self._lock:
            self._listeners.append(listener)
