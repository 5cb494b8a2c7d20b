"""A certificate or CSR as a plain dict: the object shape of ``certlc inspect --json``.

Certificate::

    kind, subject, issuer, serial_hex, not_before, not_after, sha1_thumbprint,
    key, san, eku, template, is_ca

CSR (no issuer, serial, validity or thumbprint; a CSR is not a certificate yet)::

    kind, subject, key, san, eku, template

Names are RFC 4514 strings as cryptography writes them, times ISO 8601 UTC with ``Z``, the
thumbprint upper-case hex as Windows and Key Vault show it.
"""

from __future__ import annotations

from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from certlc.errors import InvalidInput
from certlc.times import iso_utc
from certlc.x509.keys import key_info
from certlc.x509.names import san_strings
from certlc.x509.templates import template_of

__all__ = ["describe", "eku_oids", "is_ca", "sha1_thumbprint"]


def sha1_thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the certificate's DER in upper-case hex: Windows' and Key Vault's ``x5t`` identity."""
    # SHA-1 here names a certificate, it does not protect anything.
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303


def eku_oids(obj: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    """Extended key usage OIDs as dotted strings, in file order; empty when absent."""
    try:
        ext = obj.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return []
    return [oid.dotted_string for oid in ext.value]


def is_ca(cert: x509.Certificate) -> bool:
    """BasicConstraints cA; False when the extension is absent."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _key(obj: x509.Certificate | x509.CertificateSigningRequest) -> dict[str, Any]:
    try:
        return key_info(obj.public_key())
    except (UnsupportedAlgorithm, TypeError, ValueError):
        # A key type cryptography does not model (GOST, SM2, ...): still show what it is.
        return {"type": "unsupported", "oid": obj.public_key_algorithm_oid.dotted_string}


def describe(obj: x509.Certificate | x509.CertificateSigningRequest) -> dict[str, Any]:
    """The ``certlc inspect --json`` object for a certificate or a CSR.

    Raises InvalidInput when a field cryptography parses lazily (names, extensions) is malformed.
    """
    try:
        if isinstance(obj, x509.Certificate):
            return _describe_certificate(obj)
        if isinstance(obj, x509.CertificateSigningRequest):
            return _describe_csr(obj)
    except ValueError as exc:
        what = "certificate" if isinstance(obj, x509.Certificate) else "certificate request"
        raise InvalidInput(f"{what} has a field that cannot be read: {exc}", reason="CertificateUnreadable") \
            from None
    raise TypeError(f"describe() takes a certificate or a CSR, not {type(obj).__name__}")


def _template(obj: x509.Certificate | x509.CertificateSigningRequest) -> dict[str, Any] | None:
    # template_of only reads .extensions, which a CSR has too (certreq puts the template there).
    info = template_of(cast(x509.Certificate, obj))
    return None if info is None else info.to_dict()


def _describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "kind": "certificate",
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial_hex": format(cert.serial_number, "x"),
        "not_before": iso_utc(cert.not_valid_before_utc),
        "not_after": iso_utc(cert.not_valid_after_utc),
        "sha1_thumbprint": sha1_thumbprint(cert),
        "key": _key(cert),
        "san": san_strings(cert),
        "eku": eku_oids(cert),
        "template": _template(cert),
        "is_ca": is_ca(cert),
    }


def _describe_csr(csr: x509.CertificateSigningRequest) -> dict[str, Any]:
    return {
        "kind": "csr",
        "subject": csr.subject.rfc4514_string(),
        "key": _key(csr),
        "san": san_strings(csr),
        "eku": eku_oids(csr),
        "template": _template(csr),
    }
