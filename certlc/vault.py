"""Renewal operations over the Key Vault certificates client.

Everything here takes an SDK ``CertificateClient`` (made by :mod:`certlc.clients`) and returns
plain data. Azure SDK exceptions are turned into certlc's error classes in one place
(:func:`azure_errors`): throttling, 5xx, network faults and conflicts are transient; the rest
is terminal or bad input. The private key is never requested: Key Vault makes the CSR.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.certificates import (
    CertificateClient,
    CertificatePolicy,
    CertificatePolicyAction,
    KeyCurveName,
    KeyType,
    LifetimeAction,
    WellKnownIssuerNames,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certlc.errors import CertlcError, InvalidInput, TerminalError, TransientError, first_line
from certlc.times import iso_utc as _iso
from certlc.times import parse_iso
from certlc.x509 import dns_a_label, key_info, san_strings, sha1_thumbprint, template_of

__all__ = [
    "CertificateSnapshot",
    "CertificateSummary",
    "MergeResult",
    "PendingCsr",
    "azure_errors",
    "csr_mismatch",
    "desired_sans",
    "discard_pending",
    "ensure_pending_csr",
    "expected_san_set",
    "kv_subject",
    "list_certificates",
    "merge_issued",
    "normalised_sans",
    "parse_iso",
    "read_certificate",
    "renewal_policy",
    "validate_name",
]

# Key Vault's rule for certificate names (create and import).
_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")


def validate_name(name: str, vault: str = "") -> str:
    """``name`` if Key Vault could hold a certificate by that name, else InvalidInput."""
    if not _NAME.match(name):
        raise InvalidInput(f"{name!r} is not a Key Vault certificate name (1-127 letters, digits and '-')",
                           reason="NameInvalid", vault=vault, certificate=name)
    return name


_CURVES = {"secp256r1": KeyCurveName.p_256, "secp384r1": KeyCurveName.p_384, "secp521r1": KeyCurveName.p_521,
           "secp256k1": KeyCurveName.p_256_k}


@contextlib.contextmanager
def azure_errors(action: str, vault: str, name: str | None = None) -> Iterator[None]:
    """Translate SDK exceptions raised while doing ``action`` into certlc's error classes."""
    what = f"{action} ({vault}{'/' + name if name else ''})"
    try:
        yield
    except CertlcError:
        raise
    except ResourceNotFoundError as exc:
        raise InvalidInput(f"{what}: not found in the vault", reason="NotFound", vault=vault,
                           certificate=name, status=exc.status_code) from None
    except ClientAuthenticationError as exc:
        if exc.status_code is None:
            # No HTTP status: the credential chain never produced a token; the vault was not asked.
            raise TerminalError(
                f"{what}: no credential could get a token for the vault (set up a managed identity — "
                "IDENTITY_ENDPOINT/IDENTITY_HEADER, as the emulator provides — a service principal "
                "(AZURE_CLIENT_ID, AZURE_TENANT_ID and a secret or certificate) or `az login`)",
                reason="NoCredential", vault=vault, certificate=name) from None
        raise TerminalError(f"{what}: the vault refused our token ({exc.status_code})", reason="Unauthorized",
                            vault=vault, certificate=name) from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        detail = first_line(exc)
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            # Configuration, not weather: retrying will not make the certificate trusted.
            raise TerminalError(f"{what}: the vault's TLS certificate is not trusted; check azure.ca_bundle "
                                f"({detail})", reason="VaultTlsUntrusted", vault=vault, certificate=name) from None
        raise TransientError(f"{what}: vault unreachable: {detail}", reason="VaultUnreachable",
                             vault=vault, certificate=name) from None
    except HttpResponseError as exc:
        status = exc.status_code or 0
        code = getattr(getattr(exc, "error", None), "code", None) or ""
        message = (getattr(getattr(exc, "error", None), "message", None)
                   or first_line(exc) or exc.reason or "").strip()
        text = f"{what}: vault answered {status} {code}: {message}".rstrip(": ")
        inner = getattr(getattr(getattr(exc, "error", None), "innererror", None), "code", None) or ""
        if status == 409 and "Deleted" in (inner or code or message):
            raise TerminalError(text, reason="ObjectIsDeletedButRecoverable", vault=vault, certificate=name,
                                status=status) from None
        if status in (408, 409, 429) or status >= 500:
            retry_after = None
            if exc.response is not None:
                with contextlib.suppress(TypeError, ValueError):
                    retry_after = float(exc.response.headers.get("Retry-After", ""))
            raise TransientError(text, reason="VaultBusy" if status == 429 else "VaultTransient",
                                 retry_after=retry_after, vault=vault, certificate=name, status=status) from None
        if status == 403:
            raise TerminalError(text, reason="Forbidden", vault=vault, certificate=name, status=status) from None
        raise TerminalError(text, reason=code or "VaultRefused", vault=vault, certificate=name,
                            status=status) from None


@dataclass(frozen=True)
class CertificateSnapshot:
    """The current version of a certificate: what a renewal must reproduce. JSON-able."""

    vault: str
    name: str
    version: str
    thumbprint: str
    subject: str
    sans: list[str]
    key: dict[str, Any]
    ekus: list[str]
    not_before: str
    not_after: str
    template: dict[str, Any] | None
    tags: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    issuer: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CertificateSnapshot:
        return cls(**data)

    def tag(self, name: str) -> str | None:
        """Tag value by case-insensitive name (Azure tags are case-insensitive)."""
        for key, value in self.tags.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True)
class CertificateSummary:
    """A list entry: enough to decide whether the certificate is due, without fetching it."""

    name: str
    version: str | None
    enabled: bool
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    tags: dict[str, str]
    thumbprint: str | None


@dataclass(frozen=True)
class PendingCsr:
    """Key Vault's pending operation for a new version: its request id and CSR (public data)."""

    request_id: str
    csr_pem: str
    reused: bool
    replaced: str = ""  # why a pending operation found in the vault was deleted, if one was

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PendingCsr:
        return cls(**data)


def _snapshot(vault: str, name: str, version: str, cer: bytes, tags: dict[str, str] | None,
              enabled: bool) -> CertificateSnapshot:
    cert = x509.load_der_x509_certificate(cer)
    try:
        ekus = [o.dotted_string for o in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        ekus = []
    template = template_of(cert)
    return CertificateSnapshot(
        vault=vault,
        name=name,
        version=version,
        thumbprint=sha1_thumbprint(cert),
        subject=cert.subject.rfc4514_string(),
        sans=san_strings(cert),
        key=key_info(cert.public_key()),
        ekus=ekus,
        not_before=_iso(cert.not_valid_before_utc) or "",
        not_after=_iso(cert.not_valid_after_utc) or "",
        template=template.to_dict() if template else None,
        tags=dict(tags or {}),
        enabled=enabled,
        issuer=cert.issuer.rfc4514_string(),
    )


def read_certificate(client: CertificateClient, vault: str, name: str) -> CertificateSnapshot:
    """The latest version of ``name``; InvalidInput when it does not exist or holds no certificate."""
    with azure_errors("read certificate", vault, name):
        bundle = client.get_certificate(name)
    if not bundle.cer or not bundle.properties.version:
        raise InvalidInput(f"certificate {name!r} in vault {vault!r} has no issued version yet (only a pending one)",
                           reason="NoIssuedVersion", vault=vault, certificate=name)
    # Key Vault names are case-insensitive; carry on with the vault's own spelling.
    return _snapshot(vault, bundle.name or name, bundle.properties.version, bytes(bundle.cer),
                     bundle.properties.tags, bool(bundle.properties.enabled))


def list_certificates(client: CertificateClient, vault: str) -> list[CertificateSummary]:
    """Every certificate in the vault (latest version's properties), paging through the list."""
    out: list[CertificateSummary] = []
    with azure_errors("list certificates", vault):
        for props in client.list_properties_of_certificates():
            out.append(CertificateSummary(
                name=props.name or "",
                version=props.version,
                enabled=props.enabled is not False,
                not_before=props.not_before,
                not_after=props.expires_on,
                tags=dict(props.tags or {}),
                thumbprint=props.x509_thumbprint.hex().upper() if props.x509_thumbprint else None,
            ))
    return out


# --- the CSR: what we intend, and whether Key Vault's pending one matches -----------------------

def desired_sans(snapshot: CertificateSnapshot) -> dict[str, list[str]]:
    """The SANs a renewal must carry, by Key Vault policy field: DNS names as A-labels, de-duplicated."""
    kinds: dict[str, list[str]] = {"dns_names": [], "ip_addresses": [], "emails": [], "upns": [], "uris": []}
    prefix_to_kind = {"DNS": "dns_names", "IP": "ip_addresses", "email": "emails", "UPN": "upns", "URI": "uris"}
    for entry in snapshot.sans:
        prefix, _, value = entry.partition(":")
        kind = prefix_to_kind.get(prefix)
        if kind is None:
            # A Key Vault policy can ask only for DNS, IP, e-mail, UPN and URI names; renewing
            # would silently drop this one, so the certificate is refused instead.
            raise InvalidInput(
                f"certificate {snapshot.name!r} has a SAN Key Vault cannot request ({entry[:80]}); renewing "
                "it would drop that name", reason="SanNotRepresentable", vault=snapshot.vault,
                certificate=snapshot.name)
        if kind == "dns_names":
            value = dns_a_label(value)
        if value not in kinds[kind]:
            kinds[kind].append(value)
    return kinds


def normalised_sans(strings: list[str]) -> set[str]:
    out = set()
    for entry in strings:
        prefix, _, value = entry.partition(":")
        if prefix == "DNS":
            value = dns_a_label(value)
        elif prefix == "email":
            value = value.lower()
        out.add(f"{prefix}:{value}")
    return out


def expected_san_set(snapshot: CertificateSnapshot) -> set[str]:
    names = {"dns_names": "DNS", "ip_addresses": "IP", "emails": "email", "upns": "UPN", "uris": "URI"}
    return normalised_sans([f"{names[k]}:{v}" for k, vs in desired_sans(snapshot).items() for v in vs])


def csr_mismatch(csr: x509.CertificateSigningRequest, snapshot: CertificateSnapshot) -> str | None:
    """Why a pending CSR does not fit this renewal, or None when it does."""
    if csr.subject.rfc4514_string() != snapshot.subject:
        return f"subject {csr.subject.rfc4514_string()!r} differs from {snapshot.subject!r}"
    have = normalised_sans(san_strings(csr))
    want = expected_san_set(snapshot)
    if have != want:
        return f"SANs differ (missing {sorted(want - have)}, extra {sorted(have - want)})"
    k = key_info(csr.public_key())
    if (k.get("type"), k.get("size"), k.get("curve")) != (
        snapshot.key.get("type"), snapshot.key.get("size"), snapshot.key.get("curve")
    ):
        return f"key {k} differs from {snapshot.key}"
    return None


def _parse_csr(der: bytes, vault: str, name: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_der_x509_csr(der)
    except ValueError:
        raise TerminalError(f"{vault}/{name}: Key Vault's pending CSR is not a DER PKCS#10 request",
                            reason="CsrUnreadable", vault=vault, certificate=name) from None


def _csr_pem(raw: bytes | str) -> str:
    der = base64.b64decode(raw) if isinstance(raw, str) else bytes(raw)
    csr = x509.load_der_x509_csr(der)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def kv_subject(rfc4514: str) -> str:
    """The subject as a Key Vault policy names it: RFC 4514, but e-mail as ``E=`` (as Windows and
    Key Vault print it) rather than the dotted OID RFC 4514 falls back to."""
    name = x509.Name.from_rfc4514_string(rfc4514)
    return name.rfc4514_string({x509.NameOID.EMAIL_ADDRESS: "E"})


def renewal_policy(client: CertificateClient, snapshot: CertificateSnapshot) -> CertificatePolicy:
    """The stored policy, with the issuer set to Unknown and subject, SANs and key taken from the
    current certificate (what servers use now), so the renewal reproduces it exactly."""
    with azure_errors("read policy", snapshot.vault, snapshot.name):
        policy = client.get_certificate_policy(snapshot.name)
    sans = desired_sans(snapshot)
    key = snapshot.key
    if key.get("type") not in ("RSA", "EC") or (key.get("type") == "EC" and key.get("curve") not in _CURVES):
        raise InvalidInput(f"certificate {snapshot.name!r} has a {key.get('type')} {key.get('curve') or ''} key, "
                           "which Key Vault cannot generate", reason="KeyTypeUnsupported", vault=snapshot.vault,
                           certificate=snapshot.name)
    key_type = KeyType.ec if key.get("type") == "EC" else KeyType.rsa
    if policy.key_type in (KeyType.ec_hsm, KeyType.rsa_hsm):
        key_type = KeyType.ec_hsm if key_type == KeyType.ec else KeyType.rsa_hsm
    return CertificatePolicy(
        issuer_name=WellKnownIssuerNames.unknown,
        subject=kv_subject(snapshot.subject),
        san_dns_names=sans["dns_names"] or None,
        san_ip_addresses=sans["ip_addresses"] or None,
        san_emails=sans["emails"] or None,
        san_user_principal_names=sans["upns"] or None,
        san_uris=sans["uris"] or None,
        exportable=policy.exportable if policy.exportable is not None else True,
        key_type=key_type,
        key_size=key.get("size") if key_type in (KeyType.rsa, KeyType.rsa_hsm) else None,
        key_curve_name=_CURVES.get(str(key.get("curve"))) if key_type in (KeyType.ec, KeyType.ec_hsm) else None,
        reuse_key=policy.reuse_key,
        enhanced_key_usage=policy.enhanced_key_usage or snapshot.ekus or None,
        key_usage=policy.key_usage,
        content_type=policy.content_type,
        validity_in_months=policy.validity_in_months,
        lifetime_actions=_manual_issuer_actions(policy.lifetime_actions),
        certificate_transparency=policy.certificate_transparency,
    )


def _manual_issuer_actions(actions: list[LifetimeAction] | None) -> list[LifetimeAction] | None:
    """Key Vault cannot AutoRenew with the Unknown issuer (it has no CA to call): keep the
    trigger, e-mail the contacts instead. certlc does the renewing."""
    if not actions:
        return actions
    return [LifetimeAction(CertificatePolicyAction.email_contacts, days_before_expiry=a.days_before_expiry,
                           lifetime_percentage=a.lifetime_percentage)
            if a.action == CertificatePolicyAction.auto_renew else a for a in actions]


def ensure_pending_csr(client: CertificateClient, snapshot: CertificateSnapshot) -> PendingCsr:
    """Key Vault's pending CSR for renewing ``snapshot``: reuse ours if it exists, else create one.

    A pending operation is reused only when its CSR asks for exactly what this renewal needs
    (subject, SANs, key type and size); a stale one is deleted first. The key is generated
    inside Key Vault and never leaves it.
    """
    vault, name = snapshot.vault, snapshot.name
    operation = None
    replaced = ""
    with contextlib.suppress(InvalidInput), azure_errors("read pending operation", vault, name):
        operation = client.get_certificate_operation(name)
    if operation is not None and (operation.status or "").lower() == "inprogress":
        if (operation.issuer_name or "").lower() != "unknown":
            replaced = f"issuer {operation.issuer_name!r} is not 'Unknown'"
        elif not operation.csr:
            replaced = "it holds no CSR"
        else:
            try:
                mismatch = csr_mismatch(_parse_csr(bytes(operation.csr), vault, name), snapshot)
            except TerminalError as exc:
                mismatch = exc.message
            if mismatch is None:
                return PendingCsr(request_id=operation.request_id or "", csr_pem=_csr_pem(bytes(operation.csr)),
                                  reused=True)
            replaced = f"request {operation.request_id}: {mismatch}"
        # Stale: made for another subject/SAN set/key, or by an issuer we do not drive. Never sign
        # someone else's request: delete it and let Key Vault make one for exactly this renewal.
        with contextlib.suppress(InvalidInput), azure_errors("delete stale pending operation", vault, name):
            client.delete_certificate_operation(name)
    policy = renewal_policy(client, snapshot)
    with azure_errors("create pending version", vault, name):
        poller = client.begin_create_certificate(name, policy=policy, tags=snapshot.tags or None)
        created = poller.result()
    csr_raw = getattr(created, "csr", None)
    request_id = getattr(created, "request_id", None) or ""
    if not csr_raw:
        raise TerminalError(f"create pending version ({vault}/{name}): Key Vault returned no CSR",
                            reason="NoCsr", vault=vault, certificate=name)
    mismatch = csr_mismatch(_parse_csr(bytes(csr_raw), vault, name), snapshot)
    if mismatch is not None:
        # Never send the CA a request for something else than the certificate we renew: each
        # sweep would have it issue a certificate that verification then refuses.
        with contextlib.suppress(CertlcError), azure_errors("delete mismatching pending operation", vault, name):
            client.delete_certificate_operation(name)
        raise TerminalError(f"create pending version ({vault}/{name}): Key Vault made a CSR that does not match "
                            f"the certificate: {mismatch}", reason="CsrMismatch", vault=vault, certificate=name)
    return PendingCsr(request_id=request_id, csr_pem=_csr_pem(bytes(csr_raw)), reused=False, replaced=replaced)


def discard_pending(client: CertificateClient, snapshot: CertificateSnapshot, pending: PendingCsr) -> bool:
    """Delete the pending operation if it is still ours (same Key Vault request); True if deleted."""
    vault, name = snapshot.vault, snapshot.name
    operation = None
    with contextlib.suppress(InvalidInput), azure_errors("read pending operation", vault, name):
        operation = client.get_certificate_operation(name)
    if operation is None or (operation.status or "").lower() != "inprogress" \
            or (pending.request_id and operation.request_id != pending.request_id):
        return False
    with contextlib.suppress(InvalidInput), azure_errors("delete pending operation", vault, name):
        client.delete_certificate_operation(name)
    return True


# --- merge ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MergeResult:
    version: str
    thumbprint: str
    not_before: str
    not_after: str
    already_merged: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _result_from_bundle(bundle: Any, already: bool) -> MergeResult:
    cert = x509.load_der_x509_certificate(bytes(bundle.cer))
    return MergeResult(
        version=bundle.properties.version or "",
        thumbprint=sha1_thumbprint(cert),
        not_before=_iso(cert.not_valid_before_utc) or "",
        not_after=_iso(cert.not_valid_after_utc) or "",
        already_merged=already,
    )


def merge_issued(client: CertificateClient, snapshot: CertificateSnapshot, pending: PendingCsr,
                 chain: list[x509.Certificate]) -> MergeResult:
    """Merge the verified ``chain`` (leaf first) into the pending operation; re-apply the tags.

    Idempotent: when the latest version is already this very leaf (another run merged it a
    moment ago), that version is returned and nothing is written.
    """
    vault, name = snapshot.vault, snapshot.name
    leaf_thumbprint = sha1_thumbprint(chain[0])

    def merged_already() -> Any:
        # Our merge happened iff the latest version is a *new* version holding the CA's leaf. The
        # key alone would not do: with reuse_key the old version holds the same key.
        with azure_errors("read certificate", vault, name):
            latest = client.get_certificate(name)
        if latest.cer and latest.properties.version != snapshot.version \
                and sha1_thumbprint(x509.load_der_x509_certificate(bytes(latest.cer))) == leaf_thumbprint:
            return latest
        return None

    operation = None
    with contextlib.suppress(InvalidInput), azure_errors("read pending operation", vault, name):
        operation = client.get_certificate_operation(name)
    if operation is None or (operation.status or "").lower() != "inprogress":
        if (latest := merged_already()) is not None:
            return _result_from_bundle(latest, already=True)
        raise TerminalError(
            f"merge ({vault}/{name}): the pending operation {pending.request_id} is gone and no new version holds "
            "the issued certificate", reason="PendingOperationMissing", vault=vault, certificate=name)
    if pending.request_id and operation.request_id and operation.request_id != pending.request_id:
        raise TerminalError(
            f"merge ({vault}/{name}): the pending operation was replaced ({operation.request_id}), "
            f"not merging a certificate issued for {pending.request_id}",
            reason="PendingOperationReplaced", vault=vault, certificate=name)
    der_chain = [c.public_bytes(serialization.Encoding.DER) for c in chain]
    try:
        with azure_errors("merge", vault, name):
            merged = client.merge_certificate(name, der_chain, tags=snapshot.tags or None)
    except (TerminalError, InvalidInput):
        # Another run may have merged the same pending operation a moment ago: then the renewal
        # is done, not failed. Anything else (e.g. "the CSR has already been used") stands.
        if (latest := merged_already()) is not None:
            return _result_from_bundle(latest, already=True)
        raise
    return _result_from_bundle(merged, already=False)
