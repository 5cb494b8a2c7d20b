"""When a certificate is due for renewal (DESIGN §5).

Due when the remaining lifetime is under ``renew_before``: by default the smaller of 30 days
and one third of the lifetime; a ``RenewBeforeDays`` tag overrides the days for one
certificate. The window is clamped to half the lifetime, so a freshly renewed certificate is
never due again however the tag is set. Expired certificates are due too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from certlc.config import RenewalSettings

__all__ = [
    "MAX_WINDOW_FRACTION",
    "Due",
    "is_due",
    "renew_before",
]

MAX_WINDOW_FRACTION = 0.5


@dataclass(frozen=True)
class Due:
    due: bool
    reason: str  # Expired | InRenewalWindow | NotDue | Disabled | NoExpiry
    renew_at: dt.datetime | None
    window: dt.timedelta | None


def renew_before(lifetime: dt.timedelta, settings: RenewalSettings, override_days: float | None = None) -> dt.timedelta:
    """The renewal window for a certificate of this ``lifetime``."""
    if override_days is not None and override_days > 0:
        window = min(dt.timedelta(days=override_days), lifetime * MAX_WINDOW_FRACTION)
    else:
        window = min(dt.timedelta(days=settings.renew_before_days), lifetime * settings.renew_before_fraction)
    return max(window, dt.timedelta(0))


def _override(tags: dict[str, str] | None, settings: RenewalSettings) -> float | None:
    if not tags:
        return None
    for key, value in tags.items():
        if key.lower() == settings.renew_before_tag.lower():
            try:
                return float(value)
            except ValueError:
                return None  # an unreadable tag falls back to the default window
    return None


def is_due(
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
    settings: RenewalSettings,
    *,
    now: dt.datetime | None = None,
    tags: dict[str, str] | None = None,
    enabled: bool = True,
) -> Due:
    now = now or dt.datetime.now(dt.UTC)
    if not enabled:
        return Due(False, "Disabled", None, None)
    if not_after is None:
        return Due(False, "NoExpiry", None, None)
    if not_after <= now:
        return Due(True, "Expired", not_after, None)
    start = not_before or not_after - dt.timedelta(days=365)
    window = renew_before(not_after - start, settings, _override(tags, settings))
    renew_at = not_after - window
    if now >= renew_at:
        return Due(True, "InRenewalWindow", renew_at, window)
    return Due(False, "NotDue", renew_at, window)
