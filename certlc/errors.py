"""The error tree of certlc.

Expected CA outcomes (issued, pending, denied) are data (:class:`certlc.ca.Disposition`);
everything below is a failure, classified where it happens so that callers branch on the
type, never on the message text::

    CertlcError                 root; carries a stable CamelCase ``reason``
    ├── InvalidInput            bad event, certificate or request; nothing was written
    │   └── ConfigError         the configuration is unreadable or inconsistent
    ├── TransientError          retry later (optionally after ``retry_after`` seconds)
    ├── TerminalError           stop and alert; needs a change to input, config or the CA
    └── NeedsApproval           a layer below a connector says a CA manager must approve

Messages name the problem in plain words and never carry key material, tokens or passwords.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CertlcError",
    "ConfigError",
    "InvalidInput",
    "NeedsApproval",
    "TerminalError",
    "TransientError",
    "first_line",
]


class CertlcError(Exception):
    """Root of certlc's errors: a human ``message`` plus a machine-readable ``reason``."""

    reason: str = "Error"

    def __init__(self, message: str, *, reason: str | None = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        # Context such as vault, certificate, profile, request_id, ca_code: plain, non-secret values.
        self.context = context

    def __str__(self) -> str:
        return self.message


class InvalidInput(CertlcError):
    """The input (event, certificate, file, request) is wrong; nothing was written."""

    reason = "InvalidInput"


class ConfigError(InvalidInput):
    """The configuration cannot be read or does not describe what was asked for."""

    reason = "ConfigError"


class TransientError(CertlcError):
    """A temporary failure: the same call may succeed later."""

    reason = "Transient"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TerminalError(CertlcError):
    """A failure that retrying will not fix: stop and alert."""

    reason = "Terminal"


class NeedsApproval(CertlcError):
    """The CA holds the request for a CA manager's approval."""

    reason = "Pending"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text (or its class name), bounded: for one-line
    messages built from library errors, which can run to many lines."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]
