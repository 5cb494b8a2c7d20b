"""Which expiry events are due: ``CertificateNearExpiry`` and ``CertificateExpired``, once each.

Key Vault fires these for the *current* version of a certificate (event-schema-key-vault.md:
"Triggered when the current version of a certificate is about to expire / is expired"),
NearExpiry 30 days before ``exp``. Whether it fires repeatedly is undocumented; the emulator
fires each once per version (azure-reference.md §6) and remembers what it fired in
``<state>/events/fired.json`` (written atomically), so a restart does not fire again. A version
first seen already expired gets NearExpiry and then Expired, as a late scan would.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from certlc.emulator.events import EXPIRED, NEAR_EXPIRY, NEAR_EXPIRY_WINDOW
from certlc.emulator.store import VaultState
from certlc.files import atomic_write, ensure_private_dir

__all__ = ["FIRED_FILE", "CurrentVersion", "FiredSet", "current_versions", "due_events"]

FIRED_FILE = "fired.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CurrentVersion:
    """The current version of one certificate, as far as expiry events care."""

    vault_name: str
    name: str
    version: str
    nbf: int
    exp: int

    @property
    def key(self) -> str:
        # Key Vault names are case-insensitive; version ids are hex.
        return f"{self.vault_name.lower()}/{self.name.lower()}/{self.version.lower()}"


def current_versions(vault_name: str, state: VaultState) -> list[CurrentVersion]:
    """Each certificate's current (newest) version, if it is enabled."""
    found = []
    for cert in state.certificates.values():
        latest = cert.latest()
        if latest is not None and latest.enabled:
            found.append(CurrentVersion(vault_name, cert.name, latest.version, latest.nbf, latest.exp))
    return found


def due_events(version: CurrentVersion, now: float, fired: FiredSet) -> list[str]:
    """The event types due for ``version`` at ``now`` that have not fired yet, in firing order."""
    due = []
    if now >= version.exp - NEAR_EXPIRY_WINDOW.total_seconds() and not fired.has(NEAR_EXPIRY, version.key):
        due.append(NEAR_EXPIRY)
    if now >= version.exp and not fired.has(EXPIRED, version.key):
        due.append(EXPIRED)
    return due


class FiredSet:
    """Which (event type, version) pairs already fired; persisted after every change."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / FIRED_FILE
        self._lock = threading.Lock()
        ensure_private_dir(directory)
        self._fired: dict[str, str] = self._load()

    @staticmethod
    def _entry(event_type: str, key: str) -> str:
        return f"{event_type}|{key}"

    def has(self, event_type: str, key: str) -> bool:
        with self._lock:
            return self._entry(event_type, key) in self._fired

    def add(self, pairs: Iterable[tuple[str, str]], moment: dt.datetime) -> None:
        """Record ``(event type, version key)`` pairs as fired at ``moment`` (one file write)."""
        with self._lock:
            new = {e: moment.isoformat() for t, k in pairs if (e := self._entry(t, k)) not in self._fired}
            if not new:
                return
            self._fired.update(new)
            atomic_write(self._path, json.dumps({"schema": SCHEMA_VERSION, "fired": self._fired}, indent=1,
                                                sort_keys=True))

    def __len__(self) -> int:
        with self._lock:
            return len(self._fired)

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self._path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"{self._path} has schema {data.get('schema')!r}; expected {SCHEMA_VERSION}")
        return dict(data["fired"])
