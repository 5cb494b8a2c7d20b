"""Read certificates and CSRs from whatever bytes the field hands over.

One entry point, :func:`load_any`, takes every form certlc meets and says what it saw:

* PEM, with text before, between and after blocks, CRLF, a UTF-8 or UTF-16 byte-order mark,
  any order of blocks (a Key Vault secret puts the private key first), unknown or bogus blocks
  skipped, and PEM whose newlines were escaped as ``\\n`` on the way through JSON;
* ``CERTIFICATE``, ``X509 CERTIFICATE``, ``TRUSTED CERTIFICATE``, ``PKCS7``, ``CERTIFICATE REQUEST``
  and ``NEW CERTIFICATE REQUEST`` blocks, each also accepted holding one of the other kinds (AD CS's
  "Base 64" chain download is a PKCS#7 inside ``CERTIFICATE`` armor);
* binary DER and bare base64 (no armor) of a certificate, a PKCS#7 SignedData, a CSR or a PFX;
* PFX/PKCS#12 with or without a password.

Notes (``Loaded.format_notes``) name the byte form when it is not the plain one, using a small
fixed vocabulary (the ``NOTE_*`` constants and ``non-cert-block:<LABEL>`` /
``unreadable-block:<LABEL>``). Private keys are only looked at to say whether the file holds one
and whether it belongs to a certificate; they are never returned.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from certlc.errors import InvalidInput
from certlc.x509 import _der
from certlc.x509.chain import is_issued_by, order_chain
from certlc.x509.keys import public_key_der

__all__ = [
    "NOTE_BARE_BASE64",
    "NOTE_BOM",
    "NOTE_CHAIN_REVERSED",
    "NOTE_CHAIN_UNORDERED",
    "NOTE_CRLF",
    "NOTE_DER",
    "NOTE_DER_PKCS7",
    "NOTE_SET_ORDER",
    "NOTE_TEXT_BEFORE",
    "NOTE_TRAILING_DATA",
    "NOTE_UTF16",
    "Loaded",
    "load_any",
    "load_certificates",
    "load_csr",
]

NOTE_BOM = "utf-8 BOM"
NOTE_UTF16 = "utf-16 text"
NOTE_DER = "der"                       # binary DER certificate or CSR
NOTE_DER_PKCS7 = "der-pkcs7"           # binary DER PKCS#7
NOTE_BARE_BASE64 = "base64 of DER, no armor"
NOTE_TEXT_BEFORE = "text-before-first-pem-block"
NOTE_CRLF = "crlf"
NOTE_TRAILING_DATA = "trailing data after DER object"
NOTE_SET_ORDER = "certificates SET not in DER order"
NOTE_CHAIN_REVERSED = "chain in reverse order: issuer first, leaf last"
NOTE_CHAIN_UNORDERED = "chain not in leaf-first order"

# Notes are listed in this order (encoding first, then content), whatever order they were found in.
_NOTE_ORDER = [NOTE_BOM, NOTE_UTF16, NOTE_DER, NOTE_DER_PKCS7, NOTE_BARE_BASE64, " inside ",
               "non-cert-block:", "unreadable-block:", NOTE_TEXT_BEFORE, NOTE_CRLF, NOTE_TRAILING_DATA,
               NOTE_SET_ORDER, NOTE_CHAIN_REVERSED, NOTE_CHAIN_UNORDERED]

_CERT, _PKCS7, _CSR = "certificate", "pkcs7", "csr"
_LABEL_KINDS = {
    "CERTIFICATE": _CERT, "X509 CERTIFICATE": _CERT, "TRUSTED CERTIFICATE": _CERT,
    "PKCS7": _PKCS7, "PKCS #7 SIGNED DATA": _PKCS7,
    "CERTIFICATE REQUEST": _CSR, "NEW CERTIFICATE REQUEST": _CSR,
}
_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9][A-Z0-9 #._-]*?)-----", re.IGNORECASE)
_LEGACY_ENCRYPTED = re.compile(r"Proc-Type:\s*4\s*,\s*ENCRYPTED", re.IGNORECASE)
_BASE64 = re.compile(rb"[A-Za-z0-9+/=_-]+")
# What cryptography raises for bytes it cannot parse; anything else is a bug worth seeing.
_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)


@dataclass(frozen=True)
class Loaded:
    """What a file holds: certificates and CSRs in file order, and how it was written."""

    certificates: list[x509.Certificate]
    csrs: list[x509.CertificateSigningRequest]
    has_private_key: bool
    format_notes: list[str]
    # Whether a private key in the file belongs to one of its certificates; None without a readable key.
    key_matches_cert: bool | None = None


@dataclass
class _Found:
    """Accumulates what the readers find; turned into a Loaded at the end."""

    certificates: list[x509.Certificate] = field(default_factory=list)
    csrs: list[x509.CertificateSigningRequest] = field(default_factory=list)
    key_ders: list[bytes] = field(default_factory=list)  # public halves only
    key_present: bool = False
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def load_any(data: bytes, password: bytes | None = None) -> Loaded:
    """Every certificate and CSR in ``data``, in file order, whatever its form.

    ``password`` opens a PFX or an encrypted PEM private key; it is ignored otherwise.
    Raises InvalidInput with a one-line reason when nothing readable is found, or when a PFX
    needs a password or was given a wrong one.
    """
    data = bytes(data)
    if not data.strip():
        raise InvalidInput("file is empty", reason="EmptyInput")
    found = _Found()
    _read(data, password, found, depth=0)
    if not found.certificates and not found.csrs:
        raise InvalidInput(_why_nothing(found), reason="NoCertificateData")
    _note_chain_order(found)
    key_matches = None
    if found.key_ders:
        cert_keys = {_safe_key_der(c) for c in found.certificates}
        key_matches = any(k in cert_keys for k in found.key_ders)
    return Loaded(
        certificates=found.certificates,
        csrs=found.csrs,
        has_private_key=found.key_present,
        format_notes=sorted(found.notes, key=_note_rank),
        key_matches_cert=key_matches,
    )


def load_certificates(data: bytes | str) -> list[x509.Certificate]:
    """The certificates in ``data`` (any form load_any reads), in file order."""
    loaded = load_any(data.encode("utf-8") if isinstance(data, str) else data)
    if not loaded.certificates:
        raise InvalidInput("file holds a certificate request, not a certificate", reason="NoCertificate")
    return loaded.certificates


def load_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    """The one CSR in ``data`` (PEM, DER or bare base64)."""
    loaded = load_any(data.encode("utf-8") if isinstance(data, str) else data)
    if not loaded.csrs:
        raise InvalidInput("file holds no certificate request (CSR)", reason="NoCsr")
    if len(loaded.csrs) > 1:
        raise InvalidInput(f"file holds {len(loaded.csrs)} certificate requests, expected one", reason="NoCsr")
    return loaded.csrs[0]


# --- the readers -------------------------------------------------------------------------------


def _read(data: bytes, password: bytes | None, found: _Found, depth: int) -> None:
    if data.startswith(b"\xef\xbb\xbf"):
        found.note(NOTE_BOM)
        data = data[3:]
    elif data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        # Windows PowerShell 5 redirection writes UTF-16; the PEM inside is still ASCII.
        try:
            data = data.decode("utf-16").encode("utf-8")
            found.note(NOTE_UTF16)
        except UnicodeDecodeError:
            pass  # not text after all: let the binary readers try
    if data[:1] == b"\x30" and _read_der(data, password, found, binary=True):
        return
    crlf = b"\r\n" in data
    if re.search(rb"-----BEGIN ", data, re.IGNORECASE):
        _read_pem(data, password, found)
    else:
        decoded = _bare_base64(data)
        if decoded is None:
            return
        if depth == 0 and (decoded.lstrip().startswith(b"-----BEGIN") or decoded.startswith(b"\xef\xbb\xbf")):
            _read(decoded, password, found, depth + 1)  # base64 of a PEM file (Key Vault secret values)
        elif not _read_der(decoded, password, found, binary=False):
            return
        found.note(NOTE_BARE_BASE64)
    if crlf and (found.certificates or found.csrs):
        found.note(NOTE_CRLF)


def _read_der(der: bytes, password: bytes | None, found: _Found, *, binary: bool,
              kinds: tuple[str, ...] = (_CERT, _PKCS7, _CSR)) -> str | None:
    """Read one DER object, trying ``kinds`` in order, then PFX; the kind read, or None."""
    for kind in kinds:
        if kind == _CERT and (cert := _parse(der, x509.load_der_x509_certificate, found)) is not None:
            found.certificates.append(cert)
            if binary:
                found.note(NOTE_DER)
            return kind
        if kind == _PKCS7 and (certs := _read_pkcs7(der, found)) is not None:
            found.certificates.extend(certs)
            if binary:
                found.note(NOTE_DER_PKCS7)
            if not certs:
                found.problems.append("PKCS#7 data holds no certificates")
            return kind
        if kind == _CSR and (csr := _parse(der, x509.load_der_x509_csr, found)) is not None:
            found.csrs.append(csr)
            if binary:
                found.note(NOTE_DER)
            return kind
    if _der.looks_like_pfx(der):
        _read_pfx(der, password, found)
        return "pfx"
    return None


def _parse(der: bytes, loader: Callable[[bytes], Any], found: _Found) -> Any:
    """``loader(der)``, retried on the first DER element alone when bytes trail it (OpenSSL's
    TRUSTED CERTIFICATE aux data, padding some tools add); None when it does not parse."""
    try:
        return loader(der)
    except _PARSE_ERRORS:
        pass  # not this kind, or trailing bytes: see below
    head = _der.first_element(der)
    if head is None or head == der:
        return None
    try:
        obj = loader(head)
    except _PARSE_ERRORS:
        return None
    found.note(NOTE_TRAILING_DATA)
    return obj


def _read_pkcs7(der: bytes, found: _Found) -> list[x509.Certificate] | None:
    """Certificates of a DER PKCS#7 in file order; None when ``der`` is not a readable PKCS#7."""
    elements = _der.pkcs7_certificate_ders(der)
    certs: list[x509.Certificate] | None
    with warnings.catch_warnings():
        # AD CS writes the certificate SET out of DER order; cryptography reads it as BER and
        # warns. That is expected input here, and the note below records it.
        warnings.filterwarnings("ignore", message="PKCS#7 certificates could not be parsed as DER")
        try:
            certs = pkcs7.load_der_pkcs7_certificates(der)
        except _PARSE_ERRORS:
            certs = None
    if certs is None and elements:
        # cryptography may refuse non-DER SETs outright in future; read the elements one by one.
        certs = [c for e in elements if (c := _parse(e, x509.load_der_x509_certificate, found)) is not None]
        certs = certs or None
    if certs is not None and elements and not _der.is_der_set_order(elements):
        found.note(NOTE_SET_ORDER)
    return certs


def _read_pfx(der: bytes, password: bytes | None, found: _Found) -> None:
    # A PFX exported "without a password" is encrypted with an empty one, or not at all; which
    # of the two depends on the tool, so both are tried.
    attempts = [password] if password is not None else [None, b""]
    for attempt in attempts:
        try:
            pfx = pkcs12.load_pkcs12(der, attempt)
            break
        except UnsupportedAlgorithm as exc:
            raise InvalidInput(f"PKCS#12 file uses an algorithm this system cannot read: {exc}",
                               reason="UnsupportedAlgorithm") from None
        except (ValueError, TypeError):
            continue  # cryptography says "invalid password or PKCS12 data" for both
    else:
        if password is None:
            raise InvalidInput("PKCS#12 file needs a password", reason="PasswordRequired")
        raise InvalidInput("wrong password for PKCS#12 file", reason="PasswordWrong")
    if pfx.cert is not None:
        found.certificates.append(pfx.cert.certificate)
    found.certificates.extend(c.certificate for c in pfx.additional_certs)
    if pfx.key is not None:
        found.key_present = True
        found.key_ders.append(public_key_der(pfx.key))
    if not found.certificates:
        found.problems.append("PKCS#12 file holds no certificate")


def _read_pem(data: bytes, password: bytes | None, found: _Found) -> None:
    # latin-1 maps bytes 1:1, so no input fails to decode; PEM itself is ASCII.
    text = data.decode("latin-1")
    if "\\n" in text:
        text = text.replace("\\r", "").replace("\\n", "\n")  # PEM that went through JSON escaped
    pos = 0
    first = True
    while (begin := _BEGIN.search(text, pos)) is not None:
        if first and text[:begin.start()].strip():
            found.note(NOTE_TEXT_BEFORE)
        first = False
        label = " ".join(begin.group(1).upper().split())
        end = re.compile(r"-----END " + re.escape(begin.group(1)) + r"-----", re.IGNORECASE).search(
            text, begin.end())
        following = _BEGIN.search(text, begin.end())
        if end is None or (following is not None and following.start() < end.start()):
            found.note(f"unreadable-block:{label}")
            found.problems.append(f"PEM {label} block has no END line (file truncated?)")
            pos = begin.end()
            continue
        pos = end.end()
        _read_block(label, text[begin.end():end.start()], password, found)


def _read_block(label: str, body: str, password: bytes | None, found: _Found) -> None:
    if "PRIVATE KEY" in label:
        found.note(f"non-cert-block:{label}")
        _read_private_key(label, body, password, found)
        return
    kind = _LABEL_KINDS.get(label)
    if kind is None:
        found.note(f"non-cert-block:{label}")
        return
    der = _pem_body(body)
    if der is None:
        found.note(f"unreadable-block:{label}")
        found.problems.append(f"PEM {label} block is not valid base64")
        return
    kinds = (kind, *(k for k in (_CERT, _PKCS7, _CSR) if k != kind))
    read = _read_der(der, password, found, binary=False, kinds=kinds)
    if read is None:
        found.note(f"unreadable-block:{label}")
        found.problems.append(f"PEM {label} block holds no readable {kind}")
    elif read != kind:
        found.note(f"{read} DER inside {label} armor")


def _pem_body(body: str) -> bytes | None:
    # RFC 1421 headers (Proc-Type, DEK-Info) are "Name: value" lines; base64 has no colon.
    lines = [line for line in body.splitlines() if ":" not in line]
    return _b64decode("".join("".join(lines).split()).encode("ascii", "replace"))


def _bare_base64(data: bytes) -> bytes | None:
    compact = b"".join(data.split())
    if len(compact) < 4 or not _BASE64.fullmatch(compact):
        return None
    return _b64decode(compact)


def _b64decode(compact: bytes) -> bytes | None:
    if not compact or not _BASE64.fullmatch(compact):
        return None
    altchars = b"-_" if (b"-" in compact or b"_" in compact) else None  # base64url, as in JSON APIs
    compact = compact.rstrip(b"=")
    compact += b"=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None


def _read_private_key(label: str, body: str, password: bytes | None, found: _Found) -> None:
    """Note whether a usable private key is there; keep only its public half."""
    # PKCS#8 says so in its label; legacy OpenSSL PEM says so in an RFC 1421 header.
    encrypted = label.startswith("ENCRYPTED") or _LEGACY_ENCRYPTED.search(body) is not None
    if encrypted and password is None:
        found.key_present = True  # a key is there even if it cannot be opened without its password
        return
    pem = f"-----BEGIN {label}-----\n{body.strip()}\n-----END {label}-----\n".encode("latin-1")
    try:
        # Only the public half is kept, so the slow RSA consistency check buys nothing here.
        key = serialization.load_pem_private_key(pem, password if encrypted else None,
                                                 unsafe_skip_rsa_key_validation=True)
    except _PARSE_ERRORS:
        if encrypted:
            # The caller gave a password for this very key and it does not open it: say so, as
            # for a PFX, rather than report a key that "matches no certificate".
            raise InvalidInput("wrong password for the encrypted private key", reason="PasswordWrong") from None
        return  # a bogus key block (test vectors carry one) is not a key
    found.key_present = True
    found.key_ders.append(public_key_der(key))


# --- after reading -----------------------------------------------------------------------------


def _why_nothing(found: _Found) -> str:
    if found.problems:
        return found.problems[0]
    if found.key_present:
        return "file holds a private key but no certificate, CSR or PKCS#12 data"
    return "file holds no certificate, CSR or PKCS#12 data"


def _note_chain_order(found: _Found) -> None:
    certs = found.certificates
    if len(certs) < 2:
        return
    ordered = order_chain(certs)
    one_chain = len(ordered) == len(certs) and all(
        is_issued_by(child, parent) for child, parent in itertools.pairwise(ordered))
    if not one_chain or ordered == certs:
        return
    found.note(NOTE_CHAIN_REVERSED if ordered == certs[::-1] else NOTE_CHAIN_UNORDERED)


def _note_rank(note: str) -> int:
    for rank, marker in enumerate(_NOTE_ORDER):
        if note == marker or (marker.endswith(":") and note.startswith(marker)) \
                or (marker == " inside " and marker in note):
            return rank
    return len(_NOTE_ORDER)


def _safe_key_der(cert: x509.Certificate) -> bytes | None:
    try:
        return public_key_der(cert)
    except _PARSE_ERRORS:
        return None
