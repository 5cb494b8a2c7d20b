"""The estate at a glance: every certificate in every configured vault, its status, its last
renewal outcome and where it is installed.

Status follows the architecture's dashboard: **Expired** (red), **ExpiringSoon** (yellow: fewer
than ``inventory.threshold_days`` left, default 30) and **NotExpired** (green). A vault is
listed once and each certificate's latest version read once (its subject, issuer and template
are in the certificate itself, not in the listing). The rows are plain dicts, the same for
``certlc status``, the inventory flow, the history store, the dashboard and Logs Ingestion.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from cryptography import x509

from certlc.history import RenewalRecord
from certlc.notify import parse_recipients
from certlc.policy import is_due
from certlc.times import iso_utc
from certlc.vault import CertificateSummary
from certlc.x509 import template_of

__all__ = ["Inventory", "InventoryRow", "Status", "annotate", "collect_vault", "status_of", "summarise", "take_inventory"]


class Status(StrEnum):
    EXPIRED = "Expired"
    EXPIRING_SOON = "ExpiringSoon"
    NOT_EXPIRED = "NotExpired"


def status_of(not_after: dt.datetime | None, now: dt.datetime, threshold_days: float) -> Status:
    if not_after is None or not_after <= now:
        return Status.EXPIRED
    if not_after - now < dt.timedelta(days=threshold_days):
        return Status.EXPIRING_SOON
    return Status.NOT_EXPIRED


@dataclass
class InventoryRow:
    vault: str
    name: str
    version: str | None
    enabled: bool
    subject: str | None
    issuer: str | None
    template: str | None
    thumbprint: str | None
    not_after: str | None
    days_left: float | None
    status: str
    renew_at: str | None = None  # when certlc's policy makes it due (renewal.renew_before_*)
    recipients: list[str] = field(default_factory=list)
    last_outcome: str | None = None
    last_reason: str | None = None
    last_outcome_at: str | None = None
    rollout: list[dict[str, Any]] = field(default_factory=list)  # per host: host, version, current, stale
    error: str | None = None  # the certificate could not be read (the row still counts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(der: bytes | None) -> tuple[str | None, str | None, str | None]:
    if not der:
        return None, None, None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None, None, None
    template = template_of(cert)
    name = (template.name or template.oid) if template else None
    return cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), name


def collect_vault(vault: str, summaries: Iterable[CertificateSummary],
                  read_latest: Callable[[str], tuple[bytes | None, str | None]], *, now: dt.datetime,
                  threshold_days: float, recipient_tag: str = "Recipient",
                  template_tag: str = "Template", renewal: Any = None) -> list[InventoryRow]:
    """One row per certificate of ``vault``. ``read_latest(name)`` gives the latest version's DER
    and version id (Key Vault's listing carries neither)."""
    rows = []
    for item in summaries:
        error = None
        version = item.version
        try:
            der, version = read_latest(item.name)
            subject, issuer, template = _describe(der)
        except Exception as exc:  # one unreadable certificate must not hide the others
            subject = issuer = template = None
            error = f"{type(exc).__name__}: {getattr(exc, 'message', None) or str(exc)[:200]}"
        not_after = item.not_after
        days_left = round((not_after - now).total_seconds() / 86400, 1) if not_after else None
        renew_at = None
        if renewal is not None:
            with contextlib.suppress(ValueError, OverflowError):
                renew_at = iso_utc(is_due(item.not_before, not_after, renewal, now=now, tags=item.tags).renew_at)
        rows.append(InventoryRow(
            vault=vault, name=item.name, version=version or item.version, enabled=item.enabled, subject=subject,
            issuer=issuer, template=template or item.tags.get(template_tag), thumbprint=item.thumbprint,
            not_after=iso_utc(not_after), days_left=days_left, status=status_of(not_after, now, threshold_days).value,
            recipients=parse_recipients(item.tags.get(recipient_tag))[0], error=error, renew_at=renew_at))
    return rows


def annotate(rows: list[InventoryRow], last: Mapping[tuple[str, str], RenewalRecord],
             rollout: Iterable[Mapping[str, Any]], vault_urls: Mapping[str, str]) -> list[InventoryRow]:
    """Add each row's last renewal outcome (history) and rollout (the agents' reports, per host:
    the installed version and whether it is the vault's current one)."""
    from certlc.rollout import vault_key

    by_cert = {(c["vault"], c["name"].lower()): c for c in rollout}
    for row in rows:
        record = last.get((row.vault, row.name))
        if record is not None:
            row.last_outcome, row.last_reason, row.last_outcome_at = record.outcome, record.reason, record.at
        url = vault_urls.get(row.vault)
        reported = by_cert.get((vault_key(url), row.name.lower())) if url else None
        if reported:
            row.rollout = [{"host": h["host"], "version": h["installed_version"],
                            "current": h["installed_version"] == row.version, "stale": h["stale"],
                            "last_result": h["last_result"]} for h in reported["hosts"]]
    return rows


def summarise(statuses: Iterable[str]) -> dict[str, int]:
    """Counts per status (the dashboard's donut, ``/metrics``), every status present even when zero."""
    counts = {s.value: 0 for s in Status}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


@dataclass
class Inventory:
    """Every configured vault's certificates now; vaults that could not be read are named."""

    generated_at: str
    rows: list[InventoryRow]
    vault_errors: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"generated_at": self.generated_at, "counts": summarise(r.status for r in self.rows),
                "certificates": [r.to_dict() for r in self.rows], "vault_errors": self.vault_errors}


def take_inventory(settings: Any, *, vaults: list[str] | None = None, now: dt.datetime | None = None) -> Inventory:
    """List each configured vault (or those named), read each certificate once, and join the
    history's last outcomes and the agents' rollout reports."""
    from certlc.clients import certificate_client
    from certlc.errors import CertlcError
    from certlc.history import History
    from certlc.rollout import RolloutStore, by_certificate
    from certlc.vault import azure_errors, list_certificates

    now = now or dt.datetime.now(dt.UTC)
    rows: list[InventoryRow] = []
    errors: dict[str, str] = {}
    for vault in settings.vaults:
        if vaults and vault.name not in vaults:
            continue
        client = certificate_client(vault, settings)

        def read_latest(name: str, client: Any = client, vault: Any = vault) -> tuple[bytes | None, str | None]:
            with azure_errors("read certificate", vault.name, name):
                latest = client.get_certificate(name)
            return bytes(latest.cer or b"") or None, latest.properties.version

        try:
            summaries = list_certificates(client, vault.name)
        except CertlcError as exc:
            errors[vault.name] = exc.message
            continue
        rows += collect_vault(vault.name, summaries, read_latest, now=now,
                              threshold_days=settings.inventory.threshold_days,
                              recipient_tag=settings.renewal.recipient_tag,
                              template_tag=settings.renewal.template_tag, renewal=settings.renewal)
    last = History(settings.history_path).last_outcomes() if settings.history_path.exists() else {}
    rollout = by_certificate(RolloutStore(settings.rollout_path).all(), now=now)
    annotate(rows, last, rollout, {v.name: v.url for v in settings.vaults})
    rows.sort(key=lambda r: (r.days_left if r.days_left is not None else float("-inf"), r.vault, r.name))
    return Inventory(generated_at=iso_utc(now) or "", rows=rows, vault_errors=errors)
