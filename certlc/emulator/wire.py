"""The JSON shapes Key Vault answers with (azure-reference.md §2.4, §2.8, §2.10, §2.12).

Identifiers are built from ``base`` (``https://host:port`` exactly as the client addressed the
vault), because the SDK parses every id back into vault URL, collection, name and version.
Timestamps are integer Unix seconds; ``cer``/``csr`` standard base64; ``x5t`` base64url.
"""

from __future__ import annotations

import base64
from typing import Any

from certlc.emulator.pki import x5t
from certlc.emulator.store import RECOVERABLE_DAYS, Certificate, Deleted, Pending, Version

__all__ = [
    "bundle",
    "certificate_item",
    "deleted_bundle",
    "deleted_item",
    "operation",
    "placeholder_bundle",
    "policy",
    "secret_bundle",
    "secret_item",
    "version_item",
]

RECOVERY_LEVEL = "CustomizedRecoverable+Purgeable"
PENDING_DETAILS = "Pending certificate created. Please Perform Merge to complete the request."


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _attributes(enabled: bool, nbf: int, exp: int, created: int, updated: int) -> dict[str, Any]:
    return {
        "enabled": enabled,
        "nbf": nbf,
        "exp": exp,
        "created": created,
        "updated": updated,
        "recoveryLevel": RECOVERY_LEVEL,
        "recoverableDays": RECOVERABLE_DAYS,
    }


def _version_attributes(version: Version) -> dict[str, Any]:
    return _attributes(version.enabled, version.nbf, version.exp, version.created, version.updated)


def _pending_attributes(pending: Pending) -> dict[str, Any]:
    return _attributes(False, pending.nbf, pending.exp, pending.created, pending.created)


def policy(base: str, cert: Certificate) -> dict[str, Any]:
    body = {"id": f"{base}/certificates/{cert.name}/policy", **cert.policy}
    body["attributes"] = {
        **cert.policy.get("attributes", {}),
        "created": cert.policy_created,
        "updated": cert.policy_updated,
    }
    return body


def bundle(base: str, cert: Certificate, version: Version, *, with_policy: bool = True) -> dict[str, Any]:
    ident = f"{cert.name}/{version.version}"
    body: dict[str, Any] = {
        "id": f"{base}/certificates/{ident}",
        "kid": f"{base}/keys/{ident}",
        "sid": f"{base}/secrets/{ident}",
        "x5t": x5t(version.cer),
        "cer": _b64(version.cer),
        "contentType": version.content_type,
        "attributes": _version_attributes(version),
    }
    if version.tags:
        body["tags"] = dict(version.tags)
    if with_policy:
        body["policy"] = policy(base, cert)
    if cert.pending is not None:
        body["pending"] = {"id": f"{base}/certificates/{cert.name}/pending"}
    return body


def placeholder_bundle(base: str, cert: Certificate, pending: Pending, *, full: bool) -> dict[str, Any]:
    """A version that exists only as a pending operation: disabled, no cer/kid/sid/x5t.

    ``full`` is the "get latest" shape (with policy and pending link); a get of that exact
    version returns only id and attributes (``REC`` VerifyCertificateGetWithPolicyInProgress).
    """
    body: dict[str, Any] = {
        "id": f"{base}/certificates/{cert.name}/{pending.version}",
        "attributes": _pending_attributes(pending),
    }
    if full:
        if pending.tags:
            body["tags"] = dict(pending.tags)
        body["policy"] = policy(base, cert)
        body["pending"] = {"id": f"{base}/certificates/{cert.name}/pending"}
    return body


def operation(base: str, cert: Certificate, pending: Pending) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"{base}/certificates/{cert.name}/pending",
        "issuer": dict(pending.issuer),
        "csr": _b64(pending.csr),
        "cancellation_requested": pending.cancellation_requested,
        "status": pending.status,
        "request_id": pending.request_id,
    }
    if pending.status_details:
        body["status_details"] = pending.status_details
    if pending.error:
        body["error"] = dict(pending.error)
    if pending.status == "completed":
        body["target"] = f"{base}/certificates/{cert.name}"
    if pending.preserve_order is not None:
        body["preserveCertOrder"] = pending.preserve_order
    return body


def deleted_bundle(base: str, deleted: Deleted) -> dict[str, Any]:
    cert = deleted.certificate
    latest = cert.latest()
    if latest is not None:
        body = bundle(base, cert, latest)
    elif cert.pending is not None:
        body = placeholder_bundle(base, cert, cert.pending, full=True)
    else:
        body = {"id": f"{base}/certificates/{cert.name}", "policy": policy(base, cert)}
    body.pop("pending", None)
    body.update(_deletion(base, deleted))
    return body


def _deletion(base: str, deleted: Deleted) -> dict[str, Any]:
    return {
        "recoveryId": f"{base}/deletedcertificates/{deleted.certificate.name}",
        "deletedDate": deleted.deleted,
        "scheduledPurgeDate": deleted.scheduled_purge,
    }


def certificate_item(base: str, cert: Certificate) -> dict[str, Any]:
    """A list entry: unversioned id, the latest version's attributes, tags and thumbprint."""
    item: dict[str, Any] = {"id": f"{base}/certificates/{cert.name}"}
    latest = cert.latest()
    if latest is not None:
        item["attributes"] = _version_attributes(latest)
        item["x5t"] = x5t(latest.cer)
        if latest.tags:
            item["tags"] = dict(latest.tags)
    elif cert.pending is not None:
        item["attributes"] = _pending_attributes(cert.pending)
        if cert.pending.tags:
            item["tags"] = dict(cert.pending.tags)
    return item


def version_item(base: str, cert: Certificate, version: Version | Pending) -> dict[str, Any]:
    item: dict[str, Any] = {"id": f"{base}/certificates/{cert.name}/{version.version}"}
    if isinstance(version, Version):
        item["attributes"] = _version_attributes(version)
        item["x5t"] = x5t(version.cer)
    else:
        item["attributes"] = _pending_attributes(version)
    if version.tags:
        item["tags"] = dict(version.tags)
    return item


def deleted_item(base: str, deleted: Deleted) -> dict[str, Any]:
    item = certificate_item(base, deleted.certificate)
    item.update(_deletion(base, deleted))
    return item


def secret_bundle(base: str, cert: Certificate, version: Version, value: str, content_type: str) -> dict[str, Any]:
    ident = f"{cert.name}/{version.version}"
    body: dict[str, Any] = {
        "value": value,
        "contentType": content_type,
        "id": f"{base}/secrets/{ident}",
        "kid": f"{base}/keys/{ident}",
        "managed": True,
        "attributes": _version_attributes(version),
    }
    if version.tags:
        body["tags"] = dict(version.tags)
    return body


def secret_item(base: str, cert: Certificate, version: Version, *, versioned: bool) -> dict[str, Any]:
    ident = f"{cert.name}/{version.version}" if versioned else cert.name
    item: dict[str, Any] = {
        "id": f"{base}/secrets/{ident}",
        "contentType": version.content_type,
        "managed": True,
        "attributes": _version_attributes(version),
    }
    if version.tags:
        item["tags"] = dict(version.tags)
    return item
