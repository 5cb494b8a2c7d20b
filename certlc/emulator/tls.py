"""The emulator's TLS: a local root CA made on first start and a server certificate for loopback.

The Key Vault SDK refuses bearer tokens over plain http and has no switch for it
(azure-reference.md §3.1), so the vaults must speak TLS. Clients trust ``<state>/tls/ca.pem``
(``connection_verify=`` or ``REQUESTS_CA_BUNDLE``). Both private keys are stored encrypted
(PKCS#8 with a password derived from the master key); uvicorn is given that password.

The certificates follow RFC 5280 closely enough for strict verifiers (Python 3.13's
``VERIFY_X509_STRICT``): CA basic constraints critical, key identifiers on both, EKU serverAuth.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certlc.emulator.sealing import MasterKey
from certlc.files import atomic_write, ensure_private_dir

__all__ = ["TlsFiles", "ensure_tls"]

CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
SERVER_NAMES: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
]


@dataclass(frozen=True)
class TlsFiles:
    ca_bundle: Path  # the local root, PEM: what clients trust
    certfile: Path  # server certificate, PEM
    keyfile: Path  # server key, encrypted PKCS#8 PEM
    key_password: str

    def __repr__(self) -> str:
        return f"TlsFiles(ca_bundle={self.ca_bundle}, certfile={self.certfile}, keyfile={self.keyfile})"


def ensure_tls(state_dir: Path, master: MasterKey) -> TlsFiles:
    """Create the local root and server certificate if missing (or the server one is expiring)."""
    tls_dir = ensure_private_dir(state_dir / "tls")
    password = master.derive("tls-key-password").hex()
    files = TlsFiles(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server-key.pem", password)
    ca_key_path = tls_dir / "ca-key.pem"
    now = dt.datetime.now(dt.UTC)

    if not (files.ca_bundle.exists() and ca_key_path.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _root(ca_key, now)
        atomic_write(ca_key_path, _encrypted_pem(ca_key, password))
        atomic_write(files.ca_bundle, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        files.certfile.unlink(missing_ok=True)  # a new root invalidates the old server cert
    if _server_needs_renewal(files, now):
        ca_cert = x509.load_pem_x509_certificate(files.ca_bundle.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password.encode())
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} is not the emulator's EC root key")
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = _server(server_key, ca_cert, loaded, now)
        atomic_write(files.keyfile, _encrypted_pem(server_key, password))
        atomic_write(files.certfile, server_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def _server_needs_renewal(files: TlsFiles, now: dt.datetime) -> bool:
    if not (files.certfile.exists() and files.keyfile.exists()):
        return True
    cert = x509.load_pem_x509_certificate(files.certfile.read_bytes())
    return cert.not_valid_after_utc - now < RENEW_BEFORE


def _encrypted_pem(key: ec.EllipticCurvePrivateKey, password: str) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )


def _serial() -> int:
    return int.from_bytes(secrets.token_bytes(16), "big") >> 1


def _root(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certlc"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"certlc emulator local root {now:%Y-%m-%d}"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server(
    key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(SERVER_NAMES), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
