"""Talk to a running emulator's admin endpoints from Python (another process, a test, the CLI).

Each helper reads ``<state_dir>/endpoints.json`` (:func:`~certlc.emulator.read_endpoints`) for
the identity endpoint's address and secret header; the admin routes live on the same port::

    set_clock_offset(state_dir, "25d")       # certificates 25 days closer to expiry; scans at once
    get_event_stats(state_dir)["subscriptions"][0]["delivered"]
    set_events_enabled(state_dir, False)     # Event Grid delivery off
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from certlc.emulator.server import EmulatorEndpoints, read_endpoints
from certlc.errors import ConfigError

__all__ = ["admin_url", "get_clock", "get_event_stats", "scan_events", "set_clock_offset", "set_events_enabled"]

TIMEOUT = 30.0  # a clock change waits for the expiry scan


def admin_url(endpoints: EmulatorEndpoints, path: str) -> str:
    """``http://127.0.0.1:<identity port>/admin/<path>``."""
    parts = urlsplit(endpoints.identity_endpoint)
    return urlunsplit((parts.scheme, parts.netloc, f"/admin/{path.lstrip('/')}", "", ""))


def _call(state_dir: Path, method: str, path: str, body: Any = None) -> dict[str, Any]:
    endpoints = read_endpoints(Path(state_dir))
    try:
        response = httpx.request(method, admin_url(endpoints, path), json=body, timeout=TIMEOUT,
                                 headers={"X-IDENTITY-HEADER": endpoints.identity_header})
    except httpx.HTTPError as exc:
        raise ConfigError(f"the emulator on {state_dir} does not answer: {type(exc).__name__}",
                          reason="EmulatorNotRunning") from None
    if response.status_code != 200:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        raise ConfigError(f"the emulator refused {method} /admin/{path}: HTTP {response.status_code}: {message}",
                          reason="EmulatorAdminRefused")
    result: dict[str, Any] = response.json()
    return result


def get_clock(state_dir: Path) -> dict[str, Any]:
    """``{"offset_seconds": float, "now": ISO time}`` of the emulator's clock."""
    return _call(state_dir, "GET", "clock")


def set_clock_offset(state_dir: Path, offset: str | float) -> dict[str, Any]:
    """Shift the emulator's clock to real time + ``offset`` (``"25d"``, ``"-1h"``, seconds); the
    expiry scan has run when this returns. Returns the new :func:`get_clock` state."""
    return _call(state_dir, "PUT", "clock", {"offset": offset})


def get_event_stats(state_dir: Path) -> dict[str, Any]:
    """``{"enabled", "clock_offset_seconds", "fired", "subscriptions": [{"name", "destination",
    "validated", "delivered", "pending", "retries", "dead_lettered", "dead_letter_waiting",
    "last_outcome", "last_attempt_time"}, ...]}``."""
    return _call(state_dir, "GET", "events")


def set_events_enabled(state_dir: Path, enabled: bool) -> dict[str, Any]:
    """Pause (False) or resume (True) all publishing and delivery; events while paused are lost."""
    return _call(state_dir, "PUT", "events", {"enabled": enabled})


def scan_events(state_dir: Path) -> int:
    """Run the expiry scan now; the number of events published."""
    return int(_call(state_dir, "POST", "events/scan")["published"])
