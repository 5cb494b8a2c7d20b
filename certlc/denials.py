"""What a CA denied, or answered wrongly, remembered so it is told once per attempt, not on every trigger.

A denial (template not allowed, policy refusal) does not heal by asking again a minute later, and
a certificate is asked about by every sweep, every Key Vault event and every queue copy. Without
a memory each of them would submit a new CSR, fill the CA's failed-requests log and mail the
owners again. With it, the same version, template and CA profile are submitted again only after
``renewal.denied_retry_hours``; a changed template or CA profile tag, a new version, or
``certlc renew --force`` asks at once.

A *refused* response is the other case: the CA issued something merge would not accept (another
key, lost SANs, a changed subject, expired). The pending operation stays in Key Vault, so a
correct certificate for that CSR can still be merged (by hand, from the CA), and the triggers in
between neither submit again nor alert again; after the window the check runs, and alerts, once
more. ``certlc renew --force`` discards that pending operation and starts from a new CSR.

The records live beside the cached CA submissions in ``results_dir``, which every worker of a
pool shares.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from certlc.files import atomic_write
from certlc.times import iso_utc
from certlc.vault import parse_iso

__all__ = ["Denial", "DenialLog", "denial_log", "denial_message"]

Kind = Literal["denied", "refused"]


@dataclass(frozen=True)
class Denial:
    vault: str
    name: str
    version: str
    template: str
    ca_profile: str
    ca_request_id: str
    message: str
    at: str  # ISO time of the denial (or refusal)
    kind: str = "denied"  # "denied" by the CA, or its response "refused" by merge
    kv_request_id: str = ""  # for "refused": the pending Key Vault operation the response answered

    def retry_at(self, window: dt.timedelta) -> dt.datetime:
        at = parse_iso(self.at) or dt.datetime.min.replace(tzinfo=dt.UTC)
        return at + window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Denial:
        return cls(**{k: str(data[k]) for k in cls.__dataclass_fields__ if k in data})


class DenialLog:
    """One JSON file per (kind, vault, certificate, version, template, CA profile, KV request) under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def _path_in(root: Path, kind: str, vault: str, name: str, version: str, template: str, ca_profile: str,
                 kv_request_id: str) -> Path:
        joined = "\x1f".join((kind, vault, name.lower(), version.lower(), template, ca_profile, kv_request_id))
        return root / f"{kind}-{hashlib.sha256(joined.encode()).hexdigest()[:32]}.json"

    def record(self, denial: Denial) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path_in(self.root, denial.kind, denial.vault, denial.name, denial.version, denial.template,
                             denial.ca_profile, denial.kv_request_id)
        atomic_write(path, json.dumps(denial.to_dict(), indent=1))

    def find(self, vault: str, name: str, version: str, template: str, ca_profile: str, *,
             kind: Kind = "denied", kv_request_id: str = "") -> Denial | None:
        path = self._path_in(self.root, kind, vault, name, version, template, ca_profile, kv_request_id)
        try:
            return Denial.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged record must not block renewals: ask the CA again

    def blocking(self, vault: str, name: str, version: str, template: str, ca_profile: str,
                 window: dt.timedelta, now: dt.datetime | None = None, *, kind: Kind = "denied",
                 kv_request_id: str = "") -> Denial | None:
        """The record that still holds back a new submission (or merge attempt), if any."""
        denial = self.find(vault, name, version, template, ca_profile, kind=kind, kv_request_id=kv_request_id)
        now = now or dt.datetime.now(dt.UTC)
        if denial is None or denial.retry_at(window) <= now:
            return None
        return denial

    def forget(self, denial: Denial) -> None:
        self._path_in(self.root, denial.kind, denial.vault, denial.name, denial.version, denial.template,
                      denial.ca_profile, denial.kv_request_id).unlink(missing_ok=True)


def denial_log(results_path: Path) -> DenialLog:
    return DenialLog(results_path / "denials")


def denial_message(denial: Denial, window: dt.timedelta) -> str:
    """Why nothing was submitted, and what the operator can do."""
    again = iso_utc(denial.retry_at(window))
    if denial.kind == "refused":
        return (f"at {denial.at} the CA's answer to request {denial.ca_request_id or '-'} was refused: "
                f"{denial.message or 'no reason recorded'}; the pending operation (Key Vault request "
                f"{denial.kv_request_id}) is kept so a correct certificate for it can be merged; certlc checks "
                f"again after {again}, or discards it and starts from a new CSR with: certlc renew --force")
    return (f"the CA denied this renewal at {denial.at} (CA request {denial.ca_request_id or '-'}: "
            f"{denial.message or 'no reason given'}); certlc asks again after {again}, or at once after the "
            "template or CA is fixed with: certlc renew --force")
