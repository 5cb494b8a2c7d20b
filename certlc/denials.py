"""What a CA denied, remembered so a denial is told once per attempt, not on every trigger.

A denial (template not allowed, policy refusal) does not heal by asking again a minute later, and
a certificate is asked about by every sweep, every Key Vault event and every queue copy. Without
a memory each of them would submit a new CSR, fill the CA's failed-requests log and mail the
owners again. With it, the same version, template and CA profile are submitted again only after
``renewal.denied_retry_hours``; a changed template or CA profile tag, a new version, or
``certlc renew --force`` asks at once. The records live beside the cached CA submissions in
``results_dir``, which every worker of a pool shares.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from certlc.files import atomic_write
from certlc.times import iso_utc
from certlc.vault import parse_iso

__all__ = ["Denial", "DenialLog", "denial_log", "denial_message"]


@dataclass(frozen=True)
class Denial:
    vault: str
    name: str
    version: str
    template: str
    ca_profile: str
    ca_request_id: str
    message: str
    at: str  # ISO time of the denial

    def retry_at(self, window: dt.timedelta) -> dt.datetime:
        at = parse_iso(self.at) or dt.datetime.min.replace(tzinfo=dt.UTC)
        return at + window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DenialLog:
    """One JSON file per (vault, certificate, version, template, CA profile) under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def _key(vault: str, name: str, version: str, template: str, ca_profile: str) -> str:
        joined = "\x1f".join((vault, name.lower(), version.lower(), template, ca_profile))
        return hashlib.sha256(joined.encode()).hexdigest()[:32]

    def _path(self, vault: str, name: str, version: str, template: str, ca_profile: str) -> Path:
        return self.root / f"{self._key(vault, name, version, template, ca_profile)}.json"

    def record(self, denial: Denial) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(denial.vault, denial.name, denial.version, denial.template, denial.ca_profile)
        atomic_write(path, json.dumps(denial.to_dict(), indent=1))

    def find(self, vault: str, name: str, version: str, template: str, ca_profile: str) -> Denial | None:
        path = self._path(vault, name, version, template, ca_profile)
        try:
            data = json.loads(path.read_text())
            return Denial(**{k: str(data[k]) for k in Denial.__dataclass_fields__})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged record must not block renewals: ask the CA again

    def blocking(self, vault: str, name: str, version: str, template: str, ca_profile: str,
                 window: dt.timedelta, now: dt.datetime | None = None) -> Denial | None:
        """The denial that still holds back a new submission, if any."""
        denial = self.find(vault, name, version, template, ca_profile)
        now = now or dt.datetime.now(dt.UTC)
        if denial is None or denial.retry_at(window) <= now:
            return None
        return denial


def denial_log(results_path: Path) -> DenialLog:
    return DenialLog(results_path / "denials")


def denial_message(denial: Denial, window: dt.timedelta) -> str:
    """Why nothing was submitted, and what the operator can do."""
    return (f"the CA denied this renewal at {denial.at} (CA request {denial.ca_request_id or '-'}: "
            f"{denial.message or 'no reason given'}); certlc asks again after "
            f"{iso_utc(denial.retry_at(window))}, or at once after the template or CA is fixed "
            "with: certlc renew --force")
