"""What the queue drain does with a message once its renewal ran (plain decisions, no I/O).

A message is deleted only when the vault no longer needs anything from it: the renewal merged
(or had already happened, or the certificate is not due), or the CA denied it (the owners were
told, and retrying a denial would only storm the CA). A request held for CA manager approval is
postponed: a fresh copy reappears later (so waiting for a person never counts as a failed
attempt). A failure that may pass is released with a growing delay; once a message has been
received ``max_dequeues`` times it is dead-lettered with an alert. A refusal that no retry can
fix (unknown vault, no template, bad configuration) is dead-lettered at once, with an alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from certlc.errors import CertlcError, InvalidInput, TerminalError

__all__ = ["MAX_RETRY_DELAY_SECONDS", "Alert", "Verdict", "retry_delay", "verdict_for_error", "verdict_for_outcome"]

DONE = {"Renewed", "AlreadyRenewed", "NotDue", "Denied"}
PENDING_RECHECK_SECONDS = 3600


@dataclass(frozen=True)
class Verdict:
    action: Literal["complete", "postpone", "release", "dead_letter"]
    reason: str
    delay_seconds: int = 0


@dataclass(frozen=True)
class Alert:
    """Something an operator must look at. JSON-able; never holds secrets."""

    kind: str  # QueueMessageDeadLettered | ...
    summary: str
    details: dict[str, Any]


MAX_RETRY_DELAY_SECONDS = 3600


def retry_delay(dequeue_count: int, cap_seconds: int = MAX_RETRY_DELAY_SECONDS) -> int:
    """120 s, 240 s, 480 s, ... after the 1st, 2nd, 3rd receive; never more than ``cap_seconds``.
    With the default five receives a failing renewal is retried for about half an hour before
    it is dead-lettered with an alert (and the sweep still tries it)."""
    return int(min(120 * 2 ** max(dequeue_count - 1, 0), cap_seconds))


def verdict_for_outcome(outcome: dict[str, Any], dequeue_count: int, cap_seconds: int) -> Verdict:
    kind = outcome.get("outcome")
    if kind in DONE:
        return Verdict("complete", f"{kind} ({outcome.get('reason')})")
    if kind == "Pending":
        return Verdict("postpone", "held by the CA for approval", PENDING_RECHECK_SECONDS)
    return Verdict("release", f"{kind} ({outcome.get('reason')})", retry_delay(dequeue_count, cap_seconds))


def verdict_for_error(exc: BaseException, dequeue_count: int, cap_seconds: int) -> Verdict:
    if isinstance(exc, InvalidInput | TerminalError):
        return Verdict("dead_letter", f"{exc.reason}: {exc.message}")
    reason = f"{exc.reason}: {exc.message}" if isinstance(exc, CertlcError) else type(exc).__name__
    return Verdict("release", reason, retry_delay(dequeue_count, cap_seconds))
