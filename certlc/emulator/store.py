"""Persistent state of one emulated vault: certificates, versions, policies, pending operations.

One JSON file per vault (``<state>/vaults/<vault>.json``, mode 0600), rewritten atomically after
every change, so a restart finds exactly the last answered request's state. Private keys are
only ever stored sealed (:class:`~certlc.emulator.sealing.Sealer`); certificates, CSRs and
policies are public and stored as they are.

Concurrency: one re-entrant lock per vault. Callers do slow work (key generation, signing)
outside :meth:`VaultStore.write` and re-check their preconditions inside it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certlc.emulator.sealing import Sealer
from certlc.files import atomic_write, ensure_private_dir

__all__ = ["Certificate", "Deleted", "Pending", "VaultState", "VaultStore", "Version"]

SCHEMA_VERSION = 1
RECOVERABLE_DAYS = 7


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass
class Version:
    """A completed certificate version: the certificate, its chain and its (sealed) key."""

    version: str
    created: int
    updated: int
    enabled: bool
    tags: dict[str, str]
    content_type: str
    exportable: bool
    cer: bytes
    chain: list[bytes]
    sealed_key: str
    nbf: int
    exp: int

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "cer": _b64(self.cer), "chain": [_b64(c) for c in self.chain]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Version:
        return cls(**{**data, "cer": _unb64(data["cer"]), "chain": [_unb64(c) for c in data["chain"]]})


@dataclass
class Pending:
    """The certificate operation: a new version waiting for its certificate (or already done).

    ``version`` is reserved at create time: the merged certificate gets that version id, and the
    placeholder bundle of a first version shows it (azure-reference.md §2.8).
    """

    request_id: str
    version: str
    issuer: dict[str, Any]
    csr: bytes
    sealed_key: str | None
    status: str
    created: int
    nbf: int
    exp: int
    enabled: bool | None = None
    tags: dict[str, str] = field(default_factory=dict)
    cancellation_requested: bool = False
    status_details: str | None = None
    error: dict[str, Any] | None = None
    preserve_order: bool | None = None

    @property
    def in_progress(self) -> bool:
        return self.status.lower() == "inprogress"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "csr": _b64(self.csr)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pending:
        return cls(**{**data, "csr": _unb64(data["csr"])})


@dataclass
class Certificate:
    """A named certificate: its policy, versions (oldest first) and pending operation."""

    name: str
    policy: dict[str, Any]
    policy_created: int
    policy_updated: int
    versions: list[Version] = field(default_factory=list)
    pending: Pending | None = None

    def latest(self) -> Version | None:
        return self.versions[-1] if self.versions else None

    def find_version(self, version: str) -> Version | None:
        return next((v for v in self.versions if v.version.lower() == version.lower()), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "policy": self.policy,
            "policy_created": self.policy_created,
            "policy_updated": self.policy_updated,
            "versions": [v.to_json() for v in self.versions],
            "pending": self.pending.to_json() if self.pending else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Certificate:
        return cls(
            name=data["name"],
            policy=data["policy"],
            policy_created=data["policy_created"],
            policy_updated=data["policy_updated"],
            versions=[Version.from_json(v) for v in data["versions"]],
            pending=Pending.from_json(data["pending"]) if data.get("pending") else None,
        )


@dataclass
class Deleted:
    """A soft-deleted certificate, recoverable until ``scheduled_purge``."""

    certificate: Certificate
    deleted: int
    scheduled_purge: int

    def to_json(self) -> dict[str, Any]:
        return {"certificate": self.certificate.to_json(), "deleted": self.deleted, "scheduled_purge": self.scheduled_purge}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deleted:
        return cls(Certificate.from_json(data["certificate"]), data["deleted"], data["scheduled_purge"])


@dataclass
class VaultState:
    """Everything one vault holds. Keys are lower-case names: Key Vault names are case-insensitive."""

    certificates: dict[str, Certificate] = field(default_factory=dict)
    deleted: dict[str, Deleted] = field(default_factory=dict)

    def purge_expired(self, now: int) -> None:
        for key in [k for k, d in self.deleted.items() if d.scheduled_purge <= now]:
            del self.deleted[key]


class VaultStore:
    """One vault's state in memory, saved to disk after every write transaction."""

    def __init__(self, path: Path, sealer: Sealer) -> None:
        self.path = path
        self.sealer = sealer
        self._lock = threading.RLock()
        ensure_private_dir(path.parent)
        self._state = self._load()

    @contextlib.contextmanager
    def read(self) -> Iterator[VaultState]:
        with self._lock:
            self._state.purge_expired(int(time.time()))
            yield self._state

    @contextlib.contextmanager
    def write(self) -> Iterator[VaultState]:
        """A transaction: saved when the block ends; on an exception the change is discarded."""
        with self._lock:
            self._state.purge_expired(int(time.time()))
            try:
                yield self._state
            except BaseException:
                self._state = self._load()  # the file holds the last committed state
                raise
            self._save()

    def _load(self) -> VaultState:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return VaultState()
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"{self.path} has schema {data.get('schema')!r}; expected {SCHEMA_VERSION}")
        return VaultState(
            certificates={k: Certificate.from_json(v) for k, v in data["certificates"].items()},
            deleted={k: Deleted.from_json(v) for k, v in data["deleted"].items()},
        )

    def _save(self) -> None:
        data = {
            "schema": SCHEMA_VERSION,
            "certificates": {k: v.to_json() for k, v in self._state.certificates.items()},
            "deleted": {k: v.to_json() for k, v in self._state.deleted.items()},
        }
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True))
