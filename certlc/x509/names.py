"""Subject alternative names as strings, and DNS names as A-labels.

SANs are written as ``DNS:``/``IP:``/``UPN:``/``email:``/``URI:`` strings in the order the
certificate or CSR holds them, so that a renewal can compare and copy them one for one. A UPN
(otherName 1.3.6.1.4.1.311.20.2.3, what AD CS user and smart-card templates carry) stays a UPN:
turning it into a DNS name would issue a certificate that no longer logs the user on.
"""

from __future__ import annotations

from collections.abc import Iterable

import idna
from cryptography import x509
from pyasn1.codec.der import decoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char

from certlc.errors import InvalidInput

__all__ = ["UPN_OID", "dns_a_label", "san_strings", "subject_alternative_names", "unique_a_labels"]

UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


def subject_alternative_names(obj: x509.Certificate | x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    """The SAN entries of a certificate or CSR in file order; empty when it has none."""
    try:
        ext = obj.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value)


def san_strings(obj: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    """SANs as ``DNS:x``, ``IP:x``, ``UPN:x``, ``email:x``, ``URI:x`` strings, in file order.

    DNS names are given as the file holds them (a U-label stays a U-label); use
    :func:`dns_a_label` to put them into a request. Other otherNames are ``otherName:<oid>:<hex>``.
    """
    return [_general_name_string(name) for name in subject_alternative_names(obj)]


def _general_name_string(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.OtherName):
        if name.type_id == UPN_OID:
            upn = _utf8_string(name.value)
            if upn is not None:
                return f"UPN:{upn}"
        return f"otherName:{name.type_id.dotted_string}:{name.value.hex()}"
    if isinstance(name, x509.DirectoryName):
        return f"dirName:{name.value.rfc4514_string()}"
    if isinstance(name, x509.RegisteredID):
        return f"RID:{name.value.dotted_string}"
    return f"{type(name).__name__}:{name.value!r}"


def _utf8_string(der: bytes) -> str | None:
    """The text of a DER UTF8String (the UPN's syntax), or None when it is something else."""
    try:
        value, rest = decoder.decode(der, asn1Spec=char.UTF8String())
    except PyAsn1Error:
        return None
    return None if rest else str(value)


def dns_a_label(name: str) -> str:
    """``name`` in lower-case A-label (punycode) form, as a request to a CA must carry it.

    IDNA 2008 with UTS #46 mapping first (what browsers do). Labels IDNA refuses but DNS
    certificates carry anyway are kept: ``*`` and ASCII labels such as ``_acme-challenge``.
    A non-ASCII label IDNA 2008 refuses falls back to IDNA 2003; failing that, InvalidInput.
    """
    text = name.strip()
    if not text:
        raise InvalidInput("empty DNS name", reason="DnsNameInvalid")
    if text.isascii():
        return text.lower()
    try:
        return idna.encode(text, uts46=True).decode("ascii").lower()
    except idna.IDNAError:
        pass  # wildcard, underscore or an IDNA-2008-disallowed code point: go label by label
    try:
        # std3_rules=False keeps '*' and '_'; the mapping also turns ideographic full stops into dots.
        mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
    except idna.IDNAError:
        mapped = text
    return ".".join(_a_label(label, name) for label in mapped.split("."))


def _a_label(label: str, name: str) -> str:
    if label.isascii():
        return label.lower()
    try:
        return idna.alabel(label).decode("ascii").lower()
    except idna.IDNAError:
        pass  # e.g. symbols IDNA 2008 disallows; IDNA 2003 (Python's codec) still encodes many
    try:
        return label.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidInput(f"DNS name {name!r} cannot be written as an A-label",
                           reason="DnsNameInvalid") from None


def unique_a_labels(names: Iterable[str]) -> list[str]:
    """DNS names as A-labels, duplicates removed, first occurrence kept (a U-label and its
    punycode form are one name)."""
    out: list[str] = []
    for name in names:
        label = dns_a_label(name)
        if label not in out:
            out.append(label)
    return out
