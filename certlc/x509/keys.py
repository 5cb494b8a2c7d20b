"""Public keys: what kind they are, and whether two objects hold the same one.

Key identity is the SubjectPublicKeyInfo DER, so a certificate, a CSR and a bare key compare
alike. This is how an issued certificate is matched to its request: AD CS's certnew.p7b holds
the issued certificate among its CA certificates in no reliable position.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PrivateKeyTypes

__all__ = ["KeyHolder", "find_by_public_key", "key_info", "public_key_der", "same_public_key"]

# Anything a public key can be read from.
KeyHolder = x509.Certificate | x509.CertificateSigningRequest | CertificatePublicKeyTypes | PrivateKeyTypes


def key_info(public_key: Any) -> dict[str, Any]:
    """``{"type", "size"}`` of a public key, plus ``"curve"`` (cryptography's name) for EC."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return {"type": "RSA", "size": public_key.key_size}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"type": "EC", "curve": public_key.curve.name, "size": public_key.curve.key_size}
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return {"type": "Ed25519", "size": 256}
    if isinstance(public_key, ed448.Ed448PublicKey):
        return {"type": "Ed448", "size": 448}
    if isinstance(public_key, dsa.DSAPublicKey):
        return {"type": "DSA", "size": public_key.key_size}
    if isinstance(public_key, x25519.X25519PublicKey):
        return {"type": "X25519", "size": 256}
    if isinstance(public_key, x448.X448PublicKey):
        return {"type": "X448", "size": 448}
    raise TypeError(f"not a public key: {type(public_key).__name__}")


def public_key_der(obj: KeyHolder) -> bytes:
    """SubjectPublicKeyInfo DER of a certificate's, CSR's, private key's or public key's key."""
    key: Any = obj
    if isinstance(obj, x509.Certificate | x509.CertificateSigningRequest) or hasattr(obj, "private_bytes"):
        key = obj.public_key()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def same_public_key(a: KeyHolder, b: KeyHolder) -> bool:
    """Whether two certificates/CSRs/keys hold the same public key (SubjectPublicKeyInfo DER)."""
    return public_key_der(a) == public_key_der(b)


def find_by_public_key(certs: Iterable[x509.Certificate], public_key_or_csr: KeyHolder) -> x509.Certificate | None:
    """The first certificate whose public key is that of ``public_key_or_csr``, else None."""
    wanted = public_key_der(public_key_or_csr)
    for cert in certs:
        try:
            if public_key_der(cert) == wanted:
                return cert
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue  # a certificate whose key cryptography cannot read is not the one asked for
    return None
