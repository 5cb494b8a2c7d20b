"""When a certificate is due for renewal (DESIGN §5).

Due when the remaining lifetime is under ``renew_before``: by default the smaller of 30 days
and one third of the lifetime; a ``RenewBeforeDays`` tag overrides the days for one
certificate. The window is clamped to half the lifetime, so a freshly renewed certificate is
never due again however the tag is set. Expired certificates are due too.
"""

from __future__ import annotations

import datetime as dt
import math
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
    # Compare in seconds: a tag such as 1e10 days does not fit in a timedelta.
    life = max(lifetime.total_seconds(), 0.0)
    if override_days is not None and math.isfinite(override_days) and override_days > 0:
        seconds = min(override_days * 86400, life * MAX_WINDOW_FRACTION)
    else:
        seconds = min(settings.renew_before_days * 86400, life * settings.renew_before_fraction)
    return dt.timedelta(seconds=seconds)


def _override(tags: dict[str, str] | None, settings: RenewalSettings) -> float | None:
    if not tags:
        return None
    for key, value in tags.items():
        if key.lower() == settings.renew_before_tag.lower():
            try:
                days = float(value)
            except ValueError:
                return None  # an unreadable tag falls back to the default window
            return days if math.isfinite(days) and days > 0 else None
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
