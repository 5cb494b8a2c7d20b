"""Key Vault's error envelope, raised anywhere in the emulator and rendered once by the routes.

Codes and texts follow azure-reference.md §2.4, §2.6 and §2.11 where the real service's are
known; clients should branch on the HTTP status, as the SDK does (401/404/409 map to
``ClientAuthenticationError``/``ResourceNotFoundError``/``ResourceExistsError``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["KvError", "bad_parameter", "certificate_not_found", "pending_not_found", "secret_not_found"]

_NOT_FOUND_HINT = (
    "If you recently deleted this {kind} you may be able to recover it using the correct recovery command."
)


class KvError(Exception):
    """An error response: HTTP status plus Key Vault's ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, *, inner_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner_code = inner_code

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner_code:
            error["innererror"] = {"code": self.inner_code}
        return {"error": error}


def bad_parameter(message: str) -> KvError:
    return KvError(400, "BadParameter", message)


def certificate_not_found(name: str, version: str | None = None) -> KvError:
    ident = f"{name}/{version}" if version else name
    return KvError(
        404,
        "CertificateNotFound",
        f"A certificate with (name/id) {ident} was not found in this key vault. "
        + _NOT_FOUND_HINT.format(kind="certificate"),
    )


def secret_not_found(name: str, version: str | None = None) -> KvError:
    ident = f"{name}/{version}" if version else name
    return KvError(
        404,
        "SecretNotFound",
        f"A secret with (name/id) {ident} was not found in this key vault. " + _NOT_FOUND_HINT.format(kind="secret"),
    )


def pending_not_found(name: str) -> KvError:
    return KvError(404, "PendingCertificateNotFound", f"Pending certificate not found: {name}")
