"""Rollout state: which version of each certificate the agents installed on which host.

Each ``certlc agent`` POSTs its rollout report (schema ``certlc.rollout/1``, docs/agent.md) to the
webhook app's ``/api/rollout`` after every pass. The report is validated here into plain data —
only the documented fields are kept, so nothing else an agent sends (or a forged report carries)
is ever stored — and saved as one JSON file per host under ``<state_dir>/rollout`` (atomic, the
newest report per host wins). Readers (``GET /api/rollout``, the dashboard, ``certlc status``)
get the reports grouped per certificate, each host marked stale when it stopped reporting.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from certlc.drain import Alert
from certlc.errors import InvalidInput
from certlc.files import atomic_write, ensure_private_dir

__all__ = ["MAX_ALERT", "MAX_CERTIFICATES", "SCHEMA", "STALE_INTERVALS", "HostCertificate", "RolloutReport", "RolloutStore", "Stored",
           "by_certificate", "is_stale", "new_alerts", "parse_report",
           "vault_key"]

log = logging.getLogger("certlc.rollout")

SCHEMA = "certlc.rollout/1"
MAX_CERTIFICATES = 5000
MAX_ALERT = 2000  # characters of an alert kept (the agent shortens longer ones before sending)
# A host that missed this many polling intervals (plus a minute's grace) is shown as stale.
STALE_INTERVALS = 3
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9-]{1,64}")
_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}")


class _Model(BaseModel):
    # Unknown fields are dropped, not refused: a newer agent may add some, and only what is
    # documented is ever stored. Strict: no numbers as times, no booleans as counts.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


def _printable(value: str | None) -> str | None:
    # Shown on the dashboard and in logs: no control characters to forge lines with.
    return None if value is None else "".join(c if c.isprintable() else " " for c in value)


def _when(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not an ISO 8601 time") from None
    if value is None or isinstance(value, dt.datetime):
        return value
    raise ValueError("a time is an ISO 8601 string, e.g. 2026-12-03T12:00:00Z")


class HostCertificate(_Model):
    """One observed certificate as one host reports it."""

    vault: str = Field(max_length=300)
    name: str = Field(min_length=1, max_length=127, pattern=r"^[0-9A-Za-z-]+$")
    store: str | None = Field(default=None, max_length=1024)
    files: list[str] = Field(default_factory=list, max_length=16)
    installed_version: str | None = None
    thumbprint: str | None = None
    not_after: dt.datetime | None = None
    installed_at: dt.datetime | None = None
    last_result: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z]+$")
    alert: str | None = Field(default=None, max_length=MAX_ALERT)

    @field_validator("vault")
    @classmethod
    def _vault_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{value!r} is not a vault URL (https://<vault>.vault.azure.net)")
        return value

    @field_validator("installed_version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not _VERSION.fullmatch(value):
            raise ValueError("not a Key Vault version id")
        return value

    @field_validator("thumbprint")
    @classmethod
    def _thumbprint(cls, value: str | None) -> str | None:
        if value is not None and not _THUMBPRINT.fullmatch(value):
            raise ValueError("not a SHA-1 thumbprint (40 hex digits)")
        return value.upper() if value is not None else None

    @field_validator("files")
    @classmethod
    def _file_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or not name.strip("."):
                raise ValueError(f"{name[:70]!r} is not a file name")
        return value

    @field_validator("not_after", "installed_at", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        return _when(value)

    @field_validator("alert", "store")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return _printable(value)


class RolloutReport(_Model):
    """What one agent reports after a pass."""

    schema_: Literal["certlc.rollout/1"] = Field(alias="schema")
    host: str = Field(max_length=253)
    agent_version: str | None = Field(default=None, max_length=64)
    generated_at: dt.datetime
    polling_interval: int = Field(ge=1, le=7 * 24 * 3600)
    requests: int = Field(default=0, ge=0, le=10**6)
    certificates: list[HostCertificate] = Field(max_length=MAX_CERTIFICATES)

    @field_validator("host")
    @classmethod
    def _host_name(cls, value: str) -> str:
        if not _HOST.fullmatch(value) or ".." in value:
            raise ValueError(f"{value[:80]!r} is not a host name")
        return value.lower()

    @field_validator("agent_version")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return _printable(value)

    @field_validator("generated_at", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        return _when(value)

    @field_validator("generated_at")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("needs a time zone (e.g. 2026-12-03T12:00:00Z)")
        return value


def parse_report(body: bytes | Mapping[str, Any]) -> RolloutReport:
    """Validate an agent's report; InvalidInput (reason RolloutInvalid) names the first problems."""
    try:
        data = json.loads(body) if isinstance(body, bytes | bytearray) else body
    except RecursionError:
        raise InvalidInput("the rollout report is nested too deeply", reason="RolloutInvalid") from None
    except ValueError as exc:  # JSONDecodeError, and ValueError for numbers of thousands of digits
        detail = f"{exc.msg} at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else str(exc)[:120]
        raise InvalidInput(f"the rollout report is not JSON: {detail}", reason="RolloutInvalid") from None
    if not isinstance(data, Mapping):
        raise InvalidInput("the rollout report must be a JSON object", reason="RolloutInvalid")
    try:
        return RolloutReport.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'report'}: {e['msg']}" for e in exc.errors()[:5]]
        raise InvalidInput("the rollout report is invalid: " + "; ".join(problems), reason="RolloutInvalid") from None


def vault_key(url: str) -> str:
    """A vault URL as compared across agents and configuration: scheme, host, port (443 dropped)."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    port = parts.port
    return f"https://{host}" + (f":{port}" if port not in (None, 443) else "")


@dataclass(frozen=True)
class Stored:
    report: RolloutReport
    received_at: dt.datetime


class RolloutStore:
    """The newest report of each host, one JSON file per host under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, host: str) -> Path:
        # A host name can be 253 characters; a file name only 255 bytes, and atomic_write adds a
        # prefix and suffix to its temporary name. Long names keep a readable head and a hash.
        if len(host) > 180:
            host = f"{host[:150]}-{hashlib.sha256(host.encode()).hexdigest()[:16]}"
        return self.root / f"{host}.json"

    def save(self, report: RolloutReport, *, now: dt.datetime | None = None) -> bool:
        """Keep ``report`` unless the host already sent a newer one; True when kept."""
        now = now or dt.datetime.now(dt.UTC)
        previous = self.get(report.host)
        if previous is not None and previous.report.generated_at > report.generated_at:
            return False  # reports can arrive out of order (retries): the newest wins
        ensure_private_dir(self.root)
        document = {"received_at": now.isoformat(), "report": report.model_dump(mode="json", by_alias=True)}
        atomic_write(self._path(report.host), json.dumps(document, indent=1) + "\n", mode=0o640)
        return True

    def get(self, host: str) -> Stored | None:
        return self._read(self._path(host.lower()))

    def all(self) -> list[Stored]:
        if not self.root.is_dir():
            return []
        found = (self._read(p) for p in sorted(self.root.glob("*.json")))
        return [s for s in found if s is not None]

    @staticmethod
    def _read(path: Path) -> Stored | None:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            return Stored(parse_report(document["report"]), dt.datetime.fromisoformat(document["received_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, InvalidInput) as exc:
            log.warning("rollout: ignoring %s: %s", path, getattr(exc, "message", None) or type(exc).__name__)
            return None


def is_stale(stored: Stored, now: dt.datetime) -> bool:
    """Whether the host stopped reporting: its last report is older than STALE_INTERVALS intervals + a minute."""
    allowed = dt.timedelta(seconds=STALE_INTERVALS * stored.report.polling_interval + 60)
    return now - stored.received_at > allowed


def by_certificate(reports: Iterable[Stored], *, now: dt.datetime | None = None,
                   vault_names: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Per certificate (vault, name): each host's installed version, thumbprint and last result.

    ``vault_names`` maps :func:`vault_key` of configured vaults to their names; certificates of
    vaults not in it carry ``vault_name: None``.
    """
    now = now or dt.datetime.now(dt.UTC)
    vault_names = vault_names or {}
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for stored in reports:
        stale = is_stale(stored, now)
        for cert in stored.report.certificates:
            key = (vault_key(cert.vault), cert.name)
            entry = grouped.setdefault(key, {"vault": key[0], "vault_name": vault_names.get(key[0]),
                                             "name": cert.name, "hosts": []})
            entry["hosts"].append({
                "host": stored.report.host,
                "installed_version": cert.installed_version,
                "thumbprint": cert.thumbprint,
                "not_after": cert.not_after.isoformat() if cert.not_after else None,
                "installed_at": cert.installed_at.isoformat() if cert.installed_at else None,
                "last_result": cert.last_result,
                "alert": cert.alert,
                "reported_at": stored.received_at.isoformat(),
                "stale": stale,
            })
    for entry in grouped.values():
        entry["hosts"].sort(key=lambda h: h["host"])
    return [grouped[k] for k in sorted(grouped)]


# An agent's last_result -> the alert kind operators match (certlc.alert.<kind>).
_ALERT_KINDS = {"RolledBack": "AgentRolledBack", "DeployFailed": "AgentDeployFailed",
                "Refused": "AgentRefusedVersion", "Failed": "AgentInstallFailed", "BackingOff": "AgentRolledBack"}


def new_alerts(previous: RolloutReport | None, report: RolloutReport) -> list[Alert]:
    """The alerts ``report`` raises that the host's ``previous`` report did not: an agent repeats
    its alert every pass until something new happens, and operators want it once."""
    before = {(vault_key(c.vault), c.name): c.alert for c in previous.certificates} if previous else {}
    alerts = []
    for cert in report.certificates:
        if not cert.alert or before.get((vault_key(cert.vault), cert.name)) == cert.alert:
            continue
        kind = _ALERT_KINDS.get(cert.last_result or "", "AgentInstallFailed")
        alerts.append(Alert(kind, f"{report.host}: {cert.name} in {vault_key(cert.vault)}: {cert.alert}", {
            "host": report.host, "vault": vault_key(cert.vault), "certificate": cert.name,
            "installed_version": cert.installed_version, "last_result": cert.last_result}))
    return alerts
