"""A certificate's secret value decoded into what a server installs: key, leaf and chain.

Key Vault's secret behind a certificate is either base64 of a PFX with a blank password
(``application/x-pkcs12``) or plain PEM text, private key first (``application/x-pem-file``).
:func:`decode_secret` reads either and refuses, with a :class:`SecretRefused` naming the reason
and nothing else, a value that is malformed, holds no private key (a non-exportable
certificate), holds a key that belongs to none of its certificates, or whose leaf has expired.
No message, ``repr`` or log line carries key material.

:class:`Material` renders the output forms: the Linux extension's combined PEM (key, leaf,
chain), separate cert / key / chain / fullchain PEM, and PFX (AES-256, or the legacy
PBE-SHA1-3DES with a SHA-1 MAC that Windows Server 2016 and older need).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from certlc.errors import CertlcError, InvalidInput
from certlc.x509 import find_by_public_key, is_issued_by, load_certificates, order_chain, sha1_thumbprint

__all__ = [
    "CONTENT_TYPE_PEM",
    "CONTENT_TYPE_PFX",
    "Material",
    "SecretRefused",
    "decode_secret",
]

CONTENT_TYPE_PFX = "application/x-pkcs12"
CONTENT_TYPE_PEM = "application/x-pem-file"

_KEY_BLOCK = re.compile(r"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----(.*?)-----END \1-----", re.DOTALL)
_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm)


class SecretRefused(InvalidInput):
    """A secret value the agent will not install; ``reason`` says why. Nothing was written."""

    reason = "SecretRefused"


@dataclass(frozen=True, repr=False)
class Material:
    """What one secret version holds: the private key, the leaf and its issuers (leaf first)."""

    key: PrivateKeyTypes
    leaf: x509.Certificate
    chain: list[x509.Certificate]
    # Certificates in the secret that are not issuers of the leaf (kept at the end of the chain).
    unlinked: int = 0
    content_type: str = CONTENT_TYPE_PFX
    version: str | None = field(default=None)

    def __repr__(self) -> str:  # never the key
        return (f"Material(leaf={self.leaf.subject.rfc4514_string()!r}, sha1={self.sha1}, "
                f"chain={len(self.chain)}, version={self.version!r})")

    @property
    def sha1(self) -> str:
        """Upper-case hex SHA-1 of the leaf: Key Vault's and Windows' thumbprint."""
        return sha1_thumbprint(self.leaf)

    @property
    def sha256(self) -> str:
        return self.leaf.fingerprint(hashes.SHA256()).hex().upper()

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    # --- output forms --------------------------------------------------------------------------
    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (what Key Vault's PEM secrets hold)."""
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def cert_pem(self) -> bytes:
        return self.leaf.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def fullchain_pem(self) -> bytes:
        return self.cert_pem() + self.chain_pem()

    def combined_pem(self) -> bytes:
        """Key, leaf, chain in one file: what the Linux extension (v2+) writes."""
        return self.key_pem() + self.fullchain_pem()

    def pfx(self, password: bytes = b"", *, legacy: bool = False, name: bytes | None = None) -> bytes:
        """A PFX of key, leaf and chain.

        With a password: AES-256-CBC and HMAC-SHA256 (PBES2), or with ``legacy`` PBE-SHA1-3DES
        and an HMAC-SHA1 MAC, which Windows Server 2016 / Windows 10 before 1709 need to import.
        Without one: no encryption (cryptography cannot encrypt with an empty password).
        """
        encryption: serialization.KeySerializationEncryption
        if not password:
            encryption = serialization.NoEncryption()
        elif legacy:
            # SHA-1 and 3DES here are what old Windows can read, chosen on purpose by the setting.
            encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                          .kdf_rounds(2048)
                          .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
                          .hmac_hash(hashes.SHA1())  # noqa: S303
                          .build(password))
        else:
            encryption = serialization.BestAvailableEncryption(password)
        return pkcs12.serialize_key_and_certificates(name, self.key, self.leaf, self.chain or None,  # type: ignore[arg-type]
                                                     encryption)

    def render(self, form: str, *, password: bytes = b"", legacy: bool = False, name: bytes | None = None) -> bytes:
        """The bytes of one output form: pem, cert, key, chain, fullchain or pfx."""
        if form == "pem":
            return self.combined_pem()
        if form == "cert":
            return self.cert_pem()
        if form == "key":
            return self.key_pem()
        if form == "chain":
            return self.chain_pem()
        if form == "fullchain":
            return self.fullchain_pem()
        if form == "pfx":
            return self.pfx(password, legacy=legacy, name=name)
        raise ValueError(f"unknown output form {form!r}")


def decode_secret(value: str | bytes, content_type: str | None, *, version: str | None = None,
                  now: dt.datetime | None = None) -> Material:
    """The key, leaf and chain in a certificate's secret value, checked; else SecretRefused.

    ``content_type`` is the secret's (``application/x-pkcs12`` or ``application/x-pem-file``);
    without one the value's shape decides. ``now`` is for tests (default: the current time).
    """
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    kind = (content_type or "").split(";")[0].strip().lower()
    if not kind:
        kind = CONTENT_TYPE_PEM if "-----BEGIN" in text else CONTENT_TYPE_PFX
    if kind == CONTENT_TYPE_PFX:
        key, certs = _from_pfx(text)
    elif kind == CONTENT_TYPE_PEM:
        key, certs = _from_pem(text)
    else:
        raise SecretRefused(f"the secret's content type {content_type!r} is not a certificate's "
                            f"({CONTENT_TYPE_PFX} or {CONTENT_TYPE_PEM})", reason="NotACertificateSecret")
    if not certs:
        raise SecretRefused("the secret holds no certificate", reason="MalformedSecret")
    if key is None:
        raise SecretRefused("the secret holds no private key (a certificate with a non-exportable key "
                            "cannot be installed from its secret)", reason="NoPrivateKey")
    leaf = find_by_public_key(certs, key)
    if leaf is None:
        raise SecretRefused(f"the secret's private key belongs to none of its {len(certs)} certificate(s)",
                            reason="KeyMismatch")
    now = now or dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc <= now:
        raise SecretRefused(f"the certificate {leaf.subject.rfc4514_string()} (SHA-1 {sha1_thumbprint(leaf)}) "
                            f"expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", reason="LeafExpired")
    if leaf.not_valid_before_utc > now + _NOT_YET_VALID_SKEW:
        # A server would serve a certificate its clients refuse; the poller installs it once valid.
        raise SecretRefused(f"the certificate {leaf.subject.rfc4514_string()} (SHA-1 {sha1_thumbprint(leaf)}) "
                            f"is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                            reason="LeafNotYetValid")
    chain, unlinked = _issuers_of(leaf, certs)
    return Material(key=key, leaf=leaf, chain=chain, unlinked=unlinked, content_type=kind, version=version)


_NOT_YET_VALID_SKEW = dt.timedelta(minutes=5)  # clocks differ a little; CAs backdate by about this much


def _from_pfx(text: str) -> tuple[PrivateKeyTypes | None, list[x509.Certificate]]:
    compact = "".join(text.split())
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise SecretRefused("the secret is not base64 (a PFX secret's value is base64 of the PFX)",
                            reason="MalformedSecret") from None
    if not der:
        raise SecretRefused("the secret is empty", reason="MalformedSecret")
    # Key Vault's PFX has a blank password; some tools write an unencrypted one instead.
    for password in (b"", None):
        try:
            pfx = pkcs12.load_pkcs12(der, password)
            break
        except UnsupportedAlgorithm:
            raise SecretRefused("the PFX in the secret uses an algorithm this system cannot read",
                                reason="MalformedSecret") from None
        except _PARSE_ERRORS:
            continue
    else:
        raise SecretRefused("the secret is not a PFX readable with a blank password", reason="MalformedSecret")
    certs = ([pfx.cert.certificate] if pfx.cert is not None else []) + [c.certificate for c in pfx.additional_certs]
    return pfx.key, certs


def _from_pem(text: str) -> tuple[PrivateKeyTypes | None, list[x509.Certificate]]:
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    blocks = _KEY_BLOCK.findall(text)
    if len(blocks) > 1:
        raise SecretRefused(f"the secret holds {len(blocks)} private keys; a certificate's secret holds one",
                            reason="MalformedSecret")
    key: PrivateKeyTypes | None = None
    if blocks:
        label, body = blocks[0]
        if label.startswith("ENCRYPTED") or "Proc-Type" in body:
            raise SecretRefused("the secret's private key is encrypted; Key Vault's PEM secrets hold an "
                                "unencrypted key", reason="MalformedSecret")
        pem = f"-----BEGIN {label}-----{body}-----END {label}-----\n".encode("ascii", "replace")
        try:
            key = serialization.load_pem_private_key(pem, None)
        except _PARSE_ERRORS:
            raise SecretRefused("the secret's private key block cannot be read", reason="MalformedSecret") from None
    try:
        certs = load_certificates(text)
    except CertlcError:
        raise SecretRefused("the secret holds no readable certificate", reason="MalformedSecret") from None
    return key, certs


def _issuers_of(leaf: x509.Certificate, certs: list[x509.Certificate]) -> tuple[list[x509.Certificate], int]:
    """The leaf's issuers in order, then any other certificates of the secret; and how many those are."""
    rest = [c for c in order_chain(certs) if c != leaf]
    chain: list[x509.Certificate] = []
    current = leaf
    while (parent := next((c for c in rest if c not in chain and is_issued_by(current, c)), None)) is not None:
        chain.append(parent)
        current = parent
    others = [c for c in rest if c not in chain]
    return chain + others, len(others)
