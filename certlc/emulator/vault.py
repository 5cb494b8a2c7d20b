"""What an emulated vault does with certificates: the operations behind the REST routes.

Each method takes the request's ``base`` URL (for ids), validates its input, changes the
store in one transaction and returns the JSON body Key Vault would. Failures are
:class:`~certlc.emulator.errors.KvError`. Methods are synchronous and may be slow (key
generation, signing): the routes call them in a worker thread.

Behaviour follows azure-reference.md §2: the first create needs a policy and later ones reuse or
replace it; create/import are refused (409) while an operation is in progress; ``Self`` is
issued at once; ``Unknown`` waits for a merge whose leaf must carry the pending key.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certlc.emulator import wire
from certlc.emulator.errors import (
    KvError,
    bad_parameter,
    certificate_not_found,
    pending_not_found,
    secret_not_found,
)
from certlc.emulator.keys import KeySpec, describe_key, generate_key, seal_key, unseal_key
from certlc.emulator.pki import (
    BACKDATE,
    PEM,
    PKCS12,
    add_months,
    build_csr,
    build_self_signed,
    cert_times,
    order_merged_chain,
    parse_import,
    parse_x5c,
    secret_value,
    x509_props_from_certificate,
)
from certlc.emulator.policy import (
    ISSUER_SELF,
    ISSUER_UNKNOWN,
    drop_nulls,
    merge_policy,
    normalize_policy,
    policy_for_import,
)
from certlc.emulator.store import RECOVERABLE_DAYS, Certificate, Deleted, Pending, VaultState, VaultStore, Version

__all__ = ["Listing", "Vault", "VersionListener", "check_name"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")
MAX_TAGS = 15

# What cancelling an `Unknown` operation does is unconfirmed (azure-reference.md §2.4 ⚠). The
# emulator takes the cautious reading: the operation stays inProgress (cancellation only
# requested) until it is merged or deleted, so a client must delete it before creating anew.
CANCEL_KEEPS_UNKNOWN_IN_PROGRESS = True

SELF_IN_PROGRESS = (
    "Pending certificate created. Certificate request is in progress. This may take some time based on the "
    "issuer provider. Please check again later."
)

Listing = list[tuple[str, dict[str, Any]]]
"""(sort key, item) pairs; the routes page through them by key."""

VersionListener = Callable[[str, str, str, int, int], None]
"""Called once per new certificate version: (vault, certificate name, version, nbf, exp)."""


def check_name(name: str, what: str = "certificate") -> str:
    """The lower-case key for ``name``; 400 when Key Vault would refuse the name."""
    if not _NAME.fullmatch(name):
        raise bad_parameter(
            f"The {what} name '{name}' is invalid: use 1 to 127 characters from 0-9, a-z, A-Z and '-'."
        )
    return name.lower()


class Vault:
    """One emulated vault over its :class:`VaultStore`."""

    def __init__(
        self,
        name: str,
        store: VaultStore,
        clock: Callable[[], float] = time.time,
        on_new_version: VersionListener | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self._clock = clock
        self._on_new_version = on_new_version

    def _now(self) -> int:
        return int(self._clock())

    def _version_created(self, cert: Certificate, version: Version) -> None:
        """Tell the listener (Event Grid) about a committed version; never fail the request for it."""
        if self._on_new_version is None:
            return
        try:
            self._on_new_version(self.name, cert.name, version.version, version.nbf, version.exp)
        except Exception:
            logger.exception("emulator: the new-version listener failed for %s/%s", self.name, cert.name)

    # Reading -------------------------------------------------------------------------------------
    def get_certificate(self, base: str, name: str, version: str | None) -> dict[str, Any]:
        key = check_name(name)
        with self.store.read() as state:
            cert = _existing(state, key, name)
            if not version:
                latest = cert.latest()
                if latest is not None:
                    return wire.bundle(base, cert, latest)
                if cert.pending is not None:
                    return wire.placeholder_bundle(base, cert, cert.pending, full=True)
                raise certificate_not_found(name)
            found = cert.find_version(version)
            if found is not None:
                return wire.bundle(base, cert, found, with_policy=False)
            if cert.pending is not None and cert.pending.in_progress and cert.pending.version == version.lower():
                return wire.placeholder_bundle(base, cert, cert.pending, full=False)
            raise certificate_not_found(name, version)

    def list_certificates(self, base: str, include_pending: bool) -> Listing:
        with self.store.read() as state:
            return [
                (key, wire.certificate_item(base, cert))
                for key, cert in sorted(state.certificates.items())
                if cert.versions or (include_pending and cert.pending is not None)
            ]

    def list_versions(self, base: str, name: str) -> Listing:
        key = check_name(name)
        with self.store.read() as state:
            cert = _existing(state, key, name)
            entries: list[Version | Pending] = list(cert.versions)
            if cert.pending is not None and cert.pending.in_progress:
                entries.append(cert.pending)  # shown disabled, as the service lists a pending version
            return [(f"{e.created:012d}-{e.version}", wire.version_item(base, cert, e)) for e in entries]

    def get_policy(self, base: str, name: str) -> dict[str, Any]:
        key = check_name(name)
        with self.store.read() as state:
            return wire.policy(base, _existing(state, key, name))

    def get_pending(self, base: str, name: str, request_id: str | None = None) -> dict[str, Any]:
        key = check_name(name)
        with self.store.read() as state:
            cert = _existing(state, key, name)
            pending = cert.pending
            if pending is None or (request_id and request_id != pending.request_id):
                raise pending_not_found(name)
            return wire.operation(base, cert, pending)

    # Create, merge, import -----------------------------------------------------------------------------
    def create(self, base: str, name: str, body: Any) -> dict[str, Any]:
        key = check_name(name)
        body = _object(body)
        enabled = _enabled(body.get("attributes"))
        tags = _tags(body.get("tags"))
        preserve = _optional_bool(body.get("preserveCertOrder"), "preserveCertOrder")
        with self.store.read() as state:
            cert = self._creatable(state, key, name)
            if body.get("policy") is not None:
                policy = normalize_policy(body["policy"])
            elif cert is not None:
                policy = cert.policy
            else:
                raise bad_parameter(f"A policy is required to create the first version of certificate {name}.")
            latest = cert.latest() if cert else None
            reused = (
                unseal_key(self.store.sealer, latest.sealed_key)
                if latest is not None and policy["key_props"]["reuse_key"]
                else None
            )
        if reused is not None and not policy["key_props"]["kty"].startswith(describe_key(reused)["kty"]):
            reused = None  # the policy now asks for another key type: nothing to reuse
        # The slow part (RSA generation, signing) runs without the vault lock held.
        private_key = reused or generate_key(KeySpec.from_policy(policy))
        csr = build_csr(private_key, policy["x509_props"]).public_bytes(serialization.Encoding.DER)
        now = self._now()
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        self_signed = (
            build_self_signed(private_key, policy["x509_props"], moment)
            if policy["issuer"]["name"] == ISSUER_SELF
            else None
        )
        version_id = uuid.uuid4().hex
        not_before = moment - BACKDATE
        not_after = add_months(not_before, policy["x509_props"]["validity_months"])
        with self.store.write() as state:
            cert = self._creatable(state, key, name)  # again: another request may have won the race
            if cert is None:
                cert = Certificate(name=name, policy=policy, policy_created=now, policy_updated=now)
                state.certificates[key] = cert
            elif body.get("policy") is not None:
                cert.policy, cert.policy_updated = policy, now
            sealed = seal_key(self.store.sealer, private_key)
            pending = Pending(
                request_id=uuid.uuid4().hex,
                version=version_id,
                issuer=dict(policy["issuer"]),
                csr=csr,
                sealed_key=sealed,
                status="inProgress",
                created=now,
                nbf=int(not_before.timestamp()),
                exp=int(not_after.timestamp()),
                enabled=enabled,
                tags=tags or {},
                status_details=wire.PENDING_DETAILS,
                preserve_order=preserve,
            )
            cert.pending = pending
            if self_signed is None:
                return wire.operation(base, cert, pending)
            # The Self issuer signs at once, but the answer must still say inProgress: the SDK's
            # create poller never polls (and returns None) when the first answer is already
            # final for an issuer other than Unknown (_polling.py CreateCertificatePoller).
            version = self._add_version(cert, pending, self_signed, [], enabled, tags, now)
            answer = wire.operation(base, cert, pending)
            answer.pop("target", None)
            answer.update(status="inProgress", status_details=SELF_IN_PROGRESS)
        self._version_created(cert, version)  # after the commit: a failed save publishes nothing
        return answer

    def merge(self, base: str, name: str, body: Any) -> dict[str, Any]:
        key = check_name(name)
        body = _object(body)
        with self.store.read() as state:  # first: is there anything to merge at all?
            pending = self._mergeable(state, key, name)
            request_id = pending.request_id
            private_key = unseal_key(self.store.sealer, pending.sealed_key or "")
        certs = parse_x5c(body.get("x5c"))
        enabled = _enabled(body.get("attributes"))
        tags = _tags(body.get("tags"))
        leaf, chain = order_merged_chain(certs, private_key)
        with self.store.write() as state:
            pending = self._mergeable(state, key, name)
            if pending.request_id != request_id:
                raise KvError(409, "Conflict", f"There was a conflict while updating pending certificate {name}.")
            cert = state.certificates[key]
            version = self._add_version(cert, pending, leaf, chain, enabled, tags, self._now())
            answer = wire.bundle(base, cert, version)
        self._version_created(cert, version)
        return answer

    def import_certificate(self, base: str, name: str, body: Any) -> dict[str, Any]:
        key = check_name(name)
        body = _object(body)
        enabled = _enabled(body.get("attributes"))
        tags = _tags(body.get("tags"))
        supplied = body.get("policy")
        with self.store.read() as state:
            cert = self._creatable(state, key, name)
            current = cert.policy if cert else None
        content_type = _content_type_of(supplied, current)
        material = parse_import(body.get("value"), _optional_str(body.get("pwd"), "pwd"), content_type)
        policy = policy_for_import(
            supplied, current, describe_key(material.key), x509_props_from_certificate(material.leaf)
        )
        now = self._now()
        with self.store.write() as state:
            cert = self._creatable(state, key, name)
            if cert is None:
                cert = Certificate(name=name, policy=policy, policy_created=now, policy_updated=now)
                state.certificates[key] = cert
            else:
                cert.policy, cert.policy_updated = policy, now
            nbf, exp = cert_times(material.leaf)
            version = Version(
                version=uuid.uuid4().hex,
                created=now,
                updated=now,
                enabled=True if enabled is None else enabled,
                tags=tags or {},
                content_type=policy["secret_props"]["contentType"],
                exportable=policy["key_props"]["exportable"],
                cer=material.leaf.public_bytes(serialization.Encoding.DER),
                chain=[c.public_bytes(serialization.Encoding.DER) for c in material.chain],
                sealed_key=seal_key(self.store.sealer, material.key),
                nbf=nbf,
                exp=exp,
            )
            cert.versions.append(version)
            cert.pending = None  # an import overwrites a finished operation
            answer = wire.bundle(base, cert, version)
        self._version_created(cert, version)
        return answer

    # Pending operation ----------------------------------------------------------------------------------
    def cancel_pending(self, base: str, name: str, body: Any) -> dict[str, Any]:
        key = check_name(name)
        body = _object(body)
        if body.get("cancellation_requested") is not True:
            raise bad_parameter("Property cancellation_requested must be true.")
        with self.store.write() as state:
            cert = _existing(state, key, name)
            pending = cert.pending
            if pending is None:
                raise pending_not_found(name)
            if not pending.in_progress:
                raise bad_parameter(
                    f"The pending certificate operation of {name} is {pending.status}; "
                    "only an operation in progress can be cancelled."
                )
            pending.cancellation_requested = True
            if not (CANCEL_KEEPS_UNKNOWN_IN_PROGRESS and pending.issuer.get("name") == ISSUER_UNKNOWN):
                pending.status, pending.status_details, pending.sealed_key = "cancelled", None, None
            return wire.operation(base, cert, pending)

    def delete_pending(self, base: str, name: str) -> dict[str, Any]:
        key = check_name(name)
        with self.store.write() as state:
            cert = _existing(state, key, name)
            pending = cert.pending
            if pending is None:
                raise pending_not_found(name)
            body = wire.operation(base, cert, pending)  # answered as it was before the delete
            cert.pending = None
            if not cert.versions:
                # A first version that never got its certificate leaves nothing behind.
                del state.certificates[key]
            return body

    # Properties and policy ------------------------------------------------------------------------------
    def update_certificate(self, base: str, name: str, version: str | None, body: Any) -> dict[str, Any]:
        key = check_name(name)
        body = _object(body)
        enabled = _enabled(body.get("attributes"))
        tags = _tags(body.get("tags"))
        with self.store.write() as state:
            cert = _existing(state, key, name)
            target = cert.find_version(version) if version else cert.latest()
            if target is None:
                raise certificate_not_found(name, version)
            now = self._now()
            if enabled is not None:
                target.enabled = enabled
            if tags is not None:
                target.tags = tags
            if body.get("policy") is not None:
                cert.policy, cert.policy_updated = merge_policy(cert.policy, body["policy"]), now
            target.updated = now
            return wire.bundle(base, cert, target)

    def update_policy(self, base: str, name: str, body: Any) -> dict[str, Any]:
        key = check_name(name)
        with self.store.write() as state:
            cert = _existing(state, key, name)
            cert.policy, cert.policy_updated = merge_policy(cert.policy, _object(body)), self._now()
            return wire.policy(base, cert)

    # Delete, recover, purge --------------------------------------------------------------------------------
    def delete_certificate(self, base: str, name: str) -> dict[str, Any]:
        key = check_name(name)
        with self.store.write() as state:
            cert = _existing(state, key, name)
            del state.certificates[key]
            now = self._now()
            deleted = Deleted(cert, now, now + RECOVERABLE_DAYS * 86400)
            state.deleted[key] = deleted
            return wire.deleted_bundle(base, deleted)

    def get_deleted(self, base: str, name: str) -> dict[str, Any]:
        key = check_name(name)
        with self.store.read() as state:
            return wire.deleted_bundle(base, _deleted(state, key, name))

    def list_deleted(self, base: str) -> Listing:
        with self.store.read() as state:
            return [(key, wire.deleted_item(base, d)) for key, d in sorted(state.deleted.items())]

    def purge_deleted(self, name: str) -> None:
        key = check_name(name)
        with self.store.write() as state:
            _deleted(state, key, name)
            del state.deleted[key]

    def recover_deleted(self, base: str, name: str) -> dict[str, Any]:
        key = check_name(name)
        with self.store.write() as state:
            deleted = _deleted(state, key, name)
            if key in state.certificates:
                raise KvError(409, "Conflict", f"Certificate {name} already exists.")
            del state.deleted[key]
            cert = state.certificates[key] = deleted.certificate
            latest = cert.latest()
            if latest is not None:
                return wire.bundle(base, cert, latest)
            if cert.pending is not None:
                return wire.placeholder_bundle(base, cert, cert.pending, full=True)
            raise certificate_not_found(name)

    # Secrets -------------------------------------------------------------------------------------------------
    def get_secret(self, base: str, name: str, version: str | None, out_content_type: str | None) -> dict[str, Any]:
        key = check_name(name, "secret")
        with self.store.read() as state:
            cert = state.certificates.get(key)
            found = None
            if cert is not None:
                found = cert.find_version(version) if version else cert.latest()
            if cert is None or found is None:
                raise secret_not_found(name, version)
            if not found.enabled:
                raise KvError(403, "Forbidden", "Operation get is not allowed on a disabled secret.")
            content_type = out_content_type or found.content_type
            if content_type not in (PKCS12, PEM):
                raise bad_parameter(f"Unsupported outContentType '{content_type}'; use {PKCS12} or {PEM}")
            private_key = unseal_key(self.store.sealer, found.sealed_key) if found.exportable else None
            leaf = x509.load_der_x509_certificate(found.cer)
            chain = [x509.load_der_x509_certificate(c) for c in found.chain]
            value = secret_value(content_type, private_key, leaf, chain)
            return wire.secret_bundle(base, cert, found, value, content_type)

    def list_secrets(self, base: str) -> Listing:
        with self.store.read() as state:
            return [
                (key, wire.secret_item(base, cert, latest, versioned=False))
                for key, cert in sorted(state.certificates.items())
                if (latest := cert.latest()) is not None
            ]

    def list_secret_versions(self, base: str, name: str) -> Listing:
        key = check_name(name, "secret")
        with self.store.read() as state:
            cert = state.certificates.get(key)
            if cert is None or not cert.versions:
                raise secret_not_found(name)
            return [
                (f"{v.created:012d}-{v.version}", wire.secret_item(base, cert, v, versioned=True))
                for v in cert.versions
            ]

    # Helpers ----------------------------------------------------------------------------------------------------
    def _creatable(self, state: VaultState, key: str, name: str) -> Certificate | None:
        """The certificate a create/import adds a version to (None: a new one), or 409."""
        if key in state.deleted:
            raise KvError(
                409,
                "Conflict",
                f"Certificate {name} is currently in a deleted but recoverable state, and its name cannot be reused; "
                "in this state, the certificate can only be recovered or purged.",
                inner_code="ObjectIsDeletedButRecoverable",
            )
        cert = state.certificates.get(key)
        if cert is not None and cert.pending is not None and cert.pending.in_progress:
            raise KvError(
                409,
                "Conflict",
                "A new key vault certificate can not be created or imported while a pending key vault "
                "certificate's status is inProgress.",
            )
        return cert

    def _mergeable(self, state: VaultState, key: str, name: str) -> Pending:
        cert = state.certificates.get(key)
        pending = cert.pending if cert else None
        if pending is None:
            raise pending_not_found(name)
        if not pending.in_progress or pending.sealed_key is None:
            raise bad_parameter(
                f"The pending certificate operation of {name} is {pending.status}; there is nothing to merge."
            )
        issuer = pending.issuer.get("name", "")
        if issuer != ISSUER_UNKNOWN:
            # (sic) "progess": the service's own spelling (azure-reference.md §2.6).
            raise KvError(
                403,
                "Forbidden",
                f"Merge is forbidden on pending object created with issuer : {issuer} while it is in progess.",
            )
        return pending

    def _add_version(
        self,
        cert: Certificate,
        pending: Pending,
        leaf: x509.Certificate,
        chain: list[x509.Certificate],
        enabled: bool | None,
        tags: dict[str, str] | None,
        now: int,
    ) -> Version:
        """Turn the pending operation into a completed version (same version id)."""
        nbf, exp = cert_times(leaf)
        version = Version(
            version=pending.version,
            created=now,
            updated=now,
            enabled=next((e for e in (enabled, pending.enabled) if e is not None), True),
            tags=dict(tags if tags is not None else pending.tags),
            content_type=cert.policy["secret_props"]["contentType"],
            exportable=cert.policy["key_props"]["exportable"],
            cer=leaf.public_bytes(serialization.Encoding.DER),
            chain=[c.public_bytes(serialization.Encoding.DER) for c in chain],
            sealed_key=pending.sealed_key or "",
            nbf=nbf,
            exp=exp,
        )
        cert.versions.append(version)
        pending.status, pending.status_details, pending.sealed_key = "completed", None, None
        return version


# Module helpers ---------------------------------------------------------------------------------------------
def _existing(state: VaultState, key: str, name: str) -> Certificate:
    cert = state.certificates.get(key)
    if cert is None:
        raise certificate_not_found(name)
    return cert


def _deleted(state: VaultState, key: str, name: str) -> Deleted:
    deleted = state.deleted.get(key)
    if deleted is None:
        raise KvError(404, "CertificateNotFound", f"Deleted Certificate not found: {name}")
    return deleted


def _object(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, Mapping):
        raise bad_parameter("The request body must be a JSON object.")
    return dict(drop_nulls(body))


def _enabled(attributes: Any) -> bool | None:
    if attributes is None:
        return None
    if not isinstance(attributes, Mapping):
        raise bad_parameter("Property attributes must be a JSON object.")
    return _optional_bool(attributes.get("enabled"), "attributes.enabled")


def _optional_bool(value: Any, what: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise bad_parameter(f"Property {what} must be true or false.")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise bad_parameter(f"Property {what} must be a string.")
    return value


def _tags(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise bad_parameter("Property tags must be an object of string values.")
    if len(value) > MAX_TAGS:
        raise bad_parameter(f"A key vault object can have at most {MAX_TAGS} tags.")
    return dict(value)


def _content_type_of(supplied: Any, current: Mapping[str, Any] | None) -> str:
    """The content type an import is read with: the supplied policy's, else the stored one."""
    if isinstance(supplied, Mapping):
        secret_props = supplied.get("secret_props")
        if isinstance(secret_props, Mapping) and secret_props.get("contentType"):
            return str(secret_props["contentType"])
        return PKCS12
    if current is not None:
        return str(current["secret_props"]["contentType"])
    return PKCS12
