"""A throwaway TLS CA and a ``localhost`` server certificate for a local CA server's listener."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certlc.files import PRIVATE_FILE_MODE, atomic_write

__all__ = ["LocalTls", "localhost_tls", "self_signed_ca"]


@dataclass(frozen=True)
class LocalTls:
    ca_pem: Path  # what clients trust (a CA profile's ca_bundle)
    cert_pem: Path
    key_pem: Path  # unencrypted, mode 0600


def self_signed_ca(key: ec.EllipticCurvePrivateKey, name: x509.Name, days: int = 3650) -> x509.Certificate:
    """A root CA certificate for ``key``: may sign certificates (path length 0), valid ``days``."""
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=10))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def localhost_tls(folder: Path, label: str) -> LocalTls:
    """Make (once) a TLS CA and a certificate for localhost / 127.0.0.1 in ``folder``."""
    found = LocalTls(folder / "tls-ca.pem", folder / "tls-cert.pem", folder / "tls-key.pem")
    if all(p.exists() for p in (found.ca_pem, found.cert_pem, found.key_pem)):
        return found
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = self_signed_ca(ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{label} local TLS root")]))
    ca_name = ca.subject
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    atomic_write(found.key_pem, key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                  serialization.NoEncryption()), PRIVATE_FILE_MODE)
    atomic_write(found.cert_pem, cert.public_bytes(pem), 0o644)
    atomic_write(found.ca_pem, ca.public_bytes(pem), 0o644)
    return found
