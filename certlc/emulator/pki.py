"""X.509 work the emulated vault does: CSRs, self-signed certificates, imports, secret exports.

Everything here is a pure function of its inputs (no state, no I/O) and raises
:class:`~certlc.emulator.errors.KvError` with ``BadParameter`` for input Key Vault would refuse.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime as dt
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID, ObjectIdentifier

from certlc.emulator.errors import KvError, bad_parameter
from certlc.emulator.keys import PrivateKey, same_public_key, signature_hash
from certlc.x509.usage import key_usage, key_usage_names

__all__ = [
    "PEM",
    "PKCS12",
    "ImportedMaterial",
    "add_months",
    "build_csr",
    "build_self_signed",
    "cert_times",
    "format_subject",
    "order_merged_chain",
    "parse_import",
    "parse_subject",
    "parse_x5c",
    "secret_value",
    "x5t",
    "x509_props_from_certificate",
]

PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"
UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


# Attribute names accepted in a policy subject: RFC 4514's plus the ones Windows/.NET prints.
_SUBJECT_ATTRS: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "L": NameOID.LOCALITY_NAME,
    "S": NameOID.STATE_OR_PROVINCE_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "C": NameOID.COUNTRY_NAME,
    "E": NameOID.EMAIL_ADDRESS,
    "EMAIL": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "STREET": NameOID.STREET_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "UID": NameOID.USER_ID,
    "T": NameOID.TITLE,
    "TITLE": NameOID.TITLE,
    "G": NameOID.GIVEN_NAME,
    "GN": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME,
    "POSTALCODE": NameOID.POSTAL_CODE,
}
_PRINT_NAMES = {NameOID.EMAIL_ADDRESS: "E", NameOID.SERIAL_NUMBER: "SERIALNUMBER", NameOID.STATE_OR_PROVINCE_NAME: "S"}

# Self-signed and pending certificates start 10 minutes in the past, as the service does
# (azure-reference.md §2.8: nbf = created - 600 s), so small clock skew does not matter.
BACKDATE = dt.timedelta(seconds=600)


# Subjects -------------------------------------------------------------------------------------
def parse_subject(text: str) -> x509.Name:
    """Parse a Key Vault policy subject such as ``CN=web01.contoso.com, O=Contoso``.

    Separators ``,`` or ``;`` with optional spaces, ``+`` for multi-valued RDNs, quoted values
    and backslash escapes. As in RFC 4514 and .NET, the first RDN written is the most specific,
    so it ends up last in the DER sequence.
    """
    rdns: list[list[tuple[str, str]]] = []
    for rdn_text in _split_unescaped(text, ",;"):
        if not rdn_text.strip():
            continue
        pairs = []
        for pair in _split_unescaped(rdn_text, "+"):
            key, sep, value = pair.partition("=")
            if not sep:
                raise bad_parameter(f"Invalid subject '{text}': '{pair.strip()}' is not TYPE=value")
            pairs.append((key.strip(), _unescape(value.strip())))
        rdns.append(pairs)
    try:
        built = [x509.RelativeDistinguishedName([_attribute(k, v, text) for k, v in rdn]) for rdn in rdns]
        return x509.Name(list(reversed(built)))
    except ValueError as exc:
        raise bad_parameter(f"Invalid subject '{text}': {exc}") from None


def format_subject(name: x509.Name) -> str:
    """The policy spelling of a certificate's subject: most specific first, ``, `` separated."""
    return ", ".join(rdn.rfc4514_string(_PRINT_NAMES) for rdn in reversed(name.rdns))


def _attribute(key: str, value: str, text: str) -> x509.NameAttribute:
    oid = _SUBJECT_ATTRS.get(key.upper())
    if oid is None:
        if not re.fullmatch(r"\d+(\.\d+)+", key):
            raise bad_parameter(f"Invalid subject '{text}': unknown attribute type '{key}'")
        oid = ObjectIdentifier(key)
    return x509.NameAttribute(oid, value)


def _split_unescaped(text: str, separators: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char in separators and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return re.sub(r"\\(.)", r"\1", value)


# Subject alternative names ------------------------------------------------------------------------
def build_sans(sans: Mapping[str, Any]) -> list[x509.GeneralName]:
    """General names for policy ``sans`` (dns_names, emails, upns, ipAddresses, uris)."""
    names: list[x509.GeneralName] = []
    try:
        names += [x509.DNSName(_ascii(d, "DNS name")) for d in sans.get("dns_names") or []]
        names += [x509.RFC822Name(_ascii(e, "e-mail")) for e in sans.get("emails") or []]
        names += [x509.OtherName(UPN_OID, _der_utf8(u)) for u in sans.get("upns") or []]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in sans.get("ipAddresses") or []]
        names += [x509.UniformResourceIdentifier(_ascii(u, "URI")) for u in sans.get("uris") or []]
    except ValueError as exc:
        raise bad_parameter(f"Invalid subject alternative name: {exc}") from None
    return names


def sans_from_names(names: Iterable[x509.GeneralName]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in names:
        if isinstance(name, x509.DNSName):
            out.setdefault("dns_names", []).append(name.value)
        elif isinstance(name, x509.RFC822Name):
            out.setdefault("emails", []).append(name.value)
        elif isinstance(name, x509.OtherName) and name.type_id == UPN_OID:
            upn = _from_der_utf8(name.value)
            if upn is not None:
                out.setdefault("upns", []).append(upn)
        elif isinstance(name, x509.IPAddress):
            out.setdefault("ipAddresses", []).append(str(name.value))
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.setdefault("uris", []).append(name.value)
    return out


def _ascii(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or not value.isascii():
        raise ValueError(f"{what} {value!r} must be a non-empty ASCII string")
    return value


def _der_utf8(text: Any) -> bytes:
    # A UPN is an otherName holding a DER UTF8String (tag 0x0C): tag, length, bytes.
    if not isinstance(text, str) or not text:
        raise ValueError(f"UPN {text!r} must be a non-empty string")
    data = text.encode("utf-8")
    if len(data) < 0x80:
        length = bytes([len(data)])
    else:
        size = len(data).to_bytes((len(data).bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(size)]) + size
    return b"\x0c" + length + data


def _from_der_utf8(der: bytes) -> str | None:
    if len(der) < 2 or der[0] != 0x0C:
        return None
    first = der[1]
    if first < 0x80:
        start, length = 2, first
    else:
        count = first & 0x7F
        start, length = 2 + count, int.from_bytes(der[2 : 2 + count], "big")
    try:
        return der[start : start + length].decode("utf-8")
    except UnicodeDecodeError:
        return None


# Extensions, CSR, self-signed -----------------------------------------------------------------------
def _extensions(props: Mapping[str, Any], subject: x509.Name) -> list[tuple[x509.ExtensionType, bool]]:
    exts: list[tuple[x509.ExtensionType, bool]] = []
    usages = props.get("key_usage") or []
    if usages:
        try:
            exts.append((key_usage(usages), True))  # critical, as the service's CSRs have it
        except (KeyError, ValueError) as exc:
            raise bad_parameter(f"Invalid key_usage {usages}: {exc}") from None
    ekus = props.get("ekus") or []
    if ekus:
        exts.append((x509.ExtendedKeyUsage([ObjectIdentifier(o) for o in ekus]), False))
    sans = build_sans(props.get("sans") or {})
    if sans:
        # RFC 5280 4.2.1.6: the SAN extension is critical when the subject is empty.
        exts.append((x509.SubjectAlternativeName(sans), len(subject) == 0))
    exts.append((x509.BasicConstraints(ca=False, path_length=None), False))
    return exts


def build_csr(key: PrivateKey, props: Mapping[str, Any]) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for ``key`` with the policy's subject, SANs, key usage, EKUs, CA:false."""
    subject = parse_subject(props.get("subject") or "")
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    for ext, critical in _extensions(props, subject):
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, signature_hash(key))


def build_self_signed(key: PrivateKey, props: Mapping[str, Any], now: dt.datetime) -> x509.Certificate:
    """The certificate the ``Self`` issuer makes: valid ``validity_months`` from ``now - 10 min``."""
    subject = parse_subject(props.get("subject") or "")
    not_before = now - BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(not_before)
        .not_valid_after(add_months(not_before, int(props.get("validity_months") or 12)))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for ext, critical in _extensions(props, subject):
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, signature_hash(key))


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    """``moment`` plus calendar months, clamping the day (31 Jan + 1 month = 28/29 Feb)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


# Reading certificates ---------------------------------------------------------------------------------
def cert_times(cert: x509.Certificate) -> tuple[int, int]:
    return int(cert.not_valid_before_utc.timestamp()), int(cert.not_valid_after_utc.timestamp())


def x5t(der: bytes) -> str:
    """base64url (no padding) SHA-1 of the DER certificate, as in bundles and items."""
    return base64.urlsafe_b64encode(hashlib.sha1(der, usedforsecurity=False).digest()).rstrip(b"=").decode()


def x509_props_from_certificate(cert: x509.Certificate) -> dict[str, Any]:
    """The policy's x509_props as the service derives them from an imported certificate."""
    props: dict[str, Any] = {"subject": format_subject(cert.subject)}
    try:
        sans = sans_from_names(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        if sans:
            props["sans"] = sans
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        props["ekus"] = [oid.dotted_string for oid in eku]
    except x509.ExtensionNotFound:
        props["ekus"] = []
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        props["key_usage"] = key_usage_names(ku)
    except x509.ExtensionNotFound:
        props["key_usage"] = []
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    props["validity_months"] = max(1, round(lifetime.days / 30.4))
    return props


# Merge ------------------------------------------------------------------------------------------------
def parse_x5c(x5c: Any) -> list[x509.Certificate]:
    """Decode the merge body's ``x5c``: base64 DER certificates (a PEM block is tolerated)."""
    if not isinstance(x5c, list) or not x5c:
        raise bad_parameter("Property x5c has invalid value X5C must has at least one valid item")
    certs = []
    for item in x5c:
        if not isinstance(item, str):
            raise bad_parameter("Property x5c has invalid value X5C must has at least one valid item")
        try:
            raw = base64.b64decode(item, validate=False)
            certs.append(
                x509.load_pem_x509_certificate(raw) if raw.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_certificate(raw)
            )
        except (ValueError, binascii.Error):
            raise bad_parameter("ASN1 bad tag value met.") from None
    return certs


KEY_MISMATCH = (
    "The public key of the end-entity certificate in the specified X.509 certificate content does not match "
    "the public part of the specified private key. Please check if certificate is valid"
)


def order_merged_chain(
    certs: Sequence[x509.Certificate], key: PrivateKey
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Find the leaf (the certificate of ``key``) wherever it is; the rest keep their order."""
    for index, cert in enumerate(certs):
        if same_public_key(cert.public_key(), key):
            return cert, [c for i, c in enumerate(certs) if i != index]
    raise bad_parameter(KEY_MISMATCH)


# Import -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportedMaterial:
    key: PrivateKey
    leaf: x509.Certificate
    chain: list[x509.Certificate]


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)-----END \1-----", re.DOTALL)


def parse_import(value: Any, password: str | None, content_type: str) -> ImportedMaterial:
    """Decode an import's ``value`` (base64 of the PFX or PEM file) into key, leaf and chain."""
    if not isinstance(value, str) or not value:
        raise bad_parameter("Property value is required and must be the base64 encoded certificate")
    try:
        raw = base64.b64decode(value, validate=False)
    except (ValueError, binascii.Error):
        raise bad_parameter("Property value must be base64 encoded") from None
    pwd = password.encode("utf-8") if password else None
    if content_type == PEM:
        key, certs = _read_pem(raw, pwd)
    else:
        key, certs = _read_pfx(raw, pwd)
    if key is None:
        raise bad_parameter(
            "Private key is not specified in the specified X.509 certificate content. "
            "Please specify private key in the X.509 certificate content."
        )
    if not certs:
        raise bad_parameter("No certificate was found in the specified X.509 certificate content.")
    leaf, chain = order_merged_chain(certs, key)
    return ImportedMaterial(key=key, leaf=leaf, chain=chain)


def _read_pfx(raw: bytes, pwd: bytes | None) -> tuple[PrivateKey | None, list[x509.Certificate]]:
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(raw, pwd)
    except ValueError:
        hint = (
            " The content looks like PEM: import PEM with policy.secret_props.contentType application/x-pem-file."
            if raw.lstrip().startswith(b"-----BEGIN")
            else ""
        )
        raise bad_parameter(
            "The specified PKCS#12 X.509 certificate content can not be read. Please check if certificate is "
            "in valid PKCS#12 format, and the password (if any) is correct." + hint
        ) from None
    certs = ([cert] if cert else []) + list(extra)
    return _supported(key), certs


def _read_pem(raw: bytes, pwd: bytes | None) -> tuple[PrivateKey | None, list[x509.Certificate]]:
    key: PrivateKey | None = None
    certs: list[x509.Certificate] = []
    blocks = list(_PEM_BLOCK.finditer(raw.replace(b"\r\n", b"\n")))
    if not blocks:
        raise bad_parameter(
            "The specified PEM X.509 certificate content is in an unexpected format. "
            "Please check if certificate is in valid PEM format."
        )
    try:
        for block in blocks:
            kind = block.group(1)
            if kind == b"CERTIFICATE":
                certs.append(x509.load_pem_x509_certificate(block.group(0)))
            elif kind.endswith(b"PRIVATE KEY") and key is None:
                key = _supported(serialization.load_pem_private_key(block.group(0), pwd))
    except (ValueError, TypeError):
        raise bad_parameter(
            "The specified PEM X.509 certificate content can not be read. Please check if the key and "
            "certificates are valid PEM, and the password (if any) is correct."
        ) from None
    return key, certs


def _supported(key: Any) -> PrivateKey | None:
    if key is None:
        return None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise bad_parameter("Unsupported private key type; Key Vault certificates use RSA or EC keys")
    return key


# Secret export -----------------------------------------------------------------------------------------
def secret_value(
    content_type: str, key: PrivateKey | None, leaf: x509.Certificate, chain: Sequence[x509.Certificate]
) -> str:
    """The certificate's secret: base64 PFX (blank password) or plain PEM text, key first.

    ``key`` is None for a non-exportable key: the secret then holds the certificates only.
    """
    if content_type == PEM:
        parts = []
        if key is not None:
            parts.append(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        parts += [c.public_bytes(serialization.Encoding.PEM) for c in (leaf, *chain)]
        return b"".join(parts).decode("ascii")
    if content_type != PKCS12:
        raise KvError(400, "BadParameter", f"Unsupported content type {content_type}")
    # The service exports with an empty password; NoEncryption loads with password b"" or None.
    pfx = pkcs12.serialize_key_and_certificates(
        name=None, key=key, cert=leaf, cas=list(chain) or None, encryption_algorithm=serialization.NoEncryption()
    )
    return base64.b64encode(pfx).decode("ascii")

