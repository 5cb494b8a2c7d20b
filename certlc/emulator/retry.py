"""Event Grid's retry policy, as pure functions: the delay schedule, outcomes, what is retried.

Source: azure-reference.md §7.4. The emulator keeps the documented schedule (no jitter, no
"probation") and multiplies every delay by the subscription's ``retry_time_scale``. The event
time to live is scaled by the same factor, so a shortened schedule still ends by TTL in
proportion; it is checked only when the next attempt is due, as Event Grid does.
"""

from __future__ import annotations

__all__ = [
    "MAX_DELIVERY_ATTEMPTS_EXCEEDED",
    "NOT_RETRIED_QUEUE",
    "NOT_RETRIED_WEBHOOK",
    "RETRY_SCHEDULE",
    "SUCCESS_STATUSES",
    "TIME_TO_LIVE_EXCEEDED",
    "outcome_for_status",
    "retry_delay",
    "ttl_seconds",
]

# Seconds after the 1st, 2nd, ... failed attempt; then every 12 hours.
RETRY_SCHEDULE = (10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600)
LATER_RETRY = 12 * 3600

SUCCESS_STATUSES = frozenset({200, 201, 202, 203, 204})
# Answers Event Grid dead-letters at once instead of retrying: webhooks (the status table also
# lists 403), and Azure resource destinations such as storage queues.
NOT_RETRIED_WEBHOOK = frozenset({400, 401, 403, 413})
NOT_RETRIED_QUEUE = frozenset({400, 413})

MAX_DELIVERY_ATTEMPTS_EXCEEDED = "MaxDeliveryAttemptsExceeded"
TIME_TO_LIVE_EXCEEDED = "TimeToLiveExceeded"

_OUTCOMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    408: "TimedOut",
    413: "PayloadTooLarge",
    429: "Busy",
    503: "Busy",
}


def retry_delay(failed_attempts: int, scale: float = 1.0) -> float:
    """Seconds to wait after the ``failed_attempts``-th failed attempt (1 = the first)."""
    if failed_attempts < 1:
        raise ValueError("failed_attempts starts at 1")
    base = RETRY_SCHEDULE[failed_attempts - 1] if failed_attempts <= len(RETRY_SCHEDULE) else LATER_RETRY
    return base * scale


def ttl_seconds(event_ttl_minutes: int, scale: float = 1.0) -> float:
    return event_ttl_minutes * 60 * scale


def outcome_for_status(status: int) -> str:
    """Event Grid's ``lastDeliveryOutcome`` name for an HTTP answer (success: ``Success``)."""
    if status in SUCCESS_STATUSES:
        return "Success"
    return _OUTCOMES.get(status, "GenericError")
