"""The one contract every CA connector implements (DESIGN §4 step 4).

A connector only talks to its CA. Expected outcomes are data: a :class:`Disposition` is
``issued`` (certificate and chain attached), ``pending`` (a CA manager must approve; keep the
``request_id`` and call :meth:`CAConnector.retrieve` later) or ``denied`` (stop and alert).
Failures are the typed errors of :mod:`certlc.errors`: ``TransientError`` when trying again may
help, ``TerminalError`` when it will not.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

__all__ = ["CAConnector", "Disposition", "DispositionStatus", "Health", "SigningRequest", "TemplateCheck",
           "TemplateStatus", "tls_verify_failure"]


class DispositionStatus(StrEnum):
    ISSUED = "issued"
    PENDING = "pending"
    DENIED = "denied"


@dataclass(frozen=True)
class SigningRequest:
    """What certlc asks a CA to sign: a PEM CSR made by Key Vault and the template to use.

    ``template`` is already mapped to the name (or OID) this CA expects. ``request_key`` is a
    deterministic id (vault, certificate, version, pending request) a connector may use to make
    a resubmission idempotent.
    """

    csr_pem: str
    template: str
    request_key: str = ""
    vault: str = ""
    certificate: str = ""


@dataclass(frozen=True)
class Disposition:
    """The CA's answer to a request: plain data, safe to persist and log."""

    status: DispositionStatus
    request_id: str
    certificate_pem: str | None = None
    chain_pem: tuple[str, ...] = ()
    reason: str = ""
    message: str = ""

    @property
    def issued(self) -> bool:
        return self.status is DispositionStatus.ISSUED

    def to_dict(self) -> dict[str, object]:
        return {
            "status": self.status.value,
            "request_id": self.request_id,
            "certificate_pem": self.certificate_pem,
            "chain_pem": list(self.chain_pem),
            "reason": self.reason,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Disposition:
        return cls(
            status=DispositionStatus(str(data["status"])),
            request_id=str(data["request_id"]),
            certificate_pem=data.get("certificate_pem") or None,  # type: ignore[arg-type]
            chain_pem=tuple(data.get("chain_pem") or ()),  # type: ignore[arg-type]
            reason=str(data.get("reason") or ""),
            message=str(data.get("message") or ""),
        )


@dataclass(frozen=True)
class Health:
    """Result of a preflight check: ``ok`` plus plain-word problems when not."""

    ok: bool
    problems: list[str] = field(default_factory=list)


class TemplateStatus(StrEnum):
    OK = "ok"  # the CA knows the template and would take this account's requests for it
    UNKNOWN = "unknown"  # the CA has no template of that name
    NOT_ENROLLABLE = "not-enrollable"  # this account may not request it (permission, policy, auth key)
    UNVERIFIABLE = "unverifiable"  # the CA's answer does not tell; neither a pass nor a failure


@dataclass(frozen=True)
class TemplateCheck:
    """One template as a preflight found it: plain data for ``certlc ca check``.

    ``template`` is the name as asked (a certificate's template name or OID); ``ca_name`` the
    name the CA knows it by after the profile's ``template_map``. ``detail`` says in plain words
    what the CA showed; ``action`` what to do about it (empty when nothing is to be done).
    """

    template: str
    ca_name: str
    status: TemplateStatus
    detail: str = ""
    action: str = ""

    @property
    def ok(self) -> bool:
        return self.status is TemplateStatus.OK

    def to_dict(self) -> dict[str, str]:
        return {"template": self.template, "ca_name": self.ca_name, "status": self.status.value,
                "detail": self.detail, "action": self.action}


@runtime_checkable
class CAConnector(Protocol):
    """A CA behind certlc: submit a request, fetch a held one, say whether it is usable.

    Optional: ``check_templates(templates: list[str]) -> list[TemplateCheck]``, one result per
    template in the order given, without issuing anything. It raises the usual errors when the
    CA cannot be asked at all (unreachable, credentials refused). It is not part of the Protocol
    (a runtime check would then refuse connectors without it); ``certlc ca check`` looks for it
    with ``getattr`` and says templates could not be checked for kinds that lack it.
    """

    profile: str

    def submit(self, request: SigningRequest) -> Disposition:
        """Send ``request`` to the CA. Returns issued, pending or denied; raises on failure."""
        ...

    def retrieve(self, request_id: str) -> Disposition:
        """Ask again about a request the CA held (pending)."""
        ...

    def check(self) -> Health:
        """Reachable and authenticated: a preflight with plain-word problems (templates: see
        the optional ``check_templates``)."""
        ...


def tls_verify_failure(exc: BaseException) -> str | None:
    """Why the CA's TLS certificate was not trusted, if that is what ``exc`` (an httpx error) is.

    A trust failure is configuration (the profile's ``ca_bundle``), not an outage: retrying it
    only delays the alert.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or "certificate verify failed"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in text else None
