"""Private keys for certificates: generate per policy, seal for storage, compare public halves.

Keys are generated inside the emulator, as Key Vault does; a key is only ever stored sealed
(see :mod:`certlc.emulator.sealing`) and only leaves through the certificate's secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certlc.emulator.errors import bad_parameter
from certlc.emulator.sealing import Sealer

__all__ = [
    "CURVES",
    "RSA_SIZES",
    "KeySpec",
    "PrivateKey",
    "describe_key",
    "generate_key",
    "public_key_der",
    "same_public_key",
    "seal_key",
    "signature_hash",
    "unseal_key",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

RSA_SIZES = (2048, 3072, 4096)
CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
    "P-256K": ec.SECP256K1,
}
_CURVE_NAMES = {cls.name: jwk for jwk, cls in CURVES.items()}


@dataclass(frozen=True)
class KeySpec:
    """What policy.key_props asks for, already validated by :mod:`certlc.emulator.policy`."""

    kty: str
    key_size: int | None = None
    crv: str | None = None

    @classmethod
    def from_policy(cls, policy: dict[str, Any]) -> KeySpec:
        props = policy["key_props"]
        return cls(kty=props["kty"], key_size=props.get("key_size"), crv=props.get("crv"))


def generate_key(spec: KeySpec) -> PrivateKey:
    """A fresh key as the policy describes (slow for RSA 4096: call it from a worker thread)."""
    if spec.kty.startswith("RSA"):
        size = spec.key_size or 2048
        if size not in RSA_SIZES:
            raise bad_parameter(f"Unsupported RSA key size {size}; use one of {', '.join(map(str, RSA_SIZES))}")
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if spec.kty.startswith("EC"):
        curve = CURVES.get(spec.crv or "P-256")
        if curve is None:
            raise bad_parameter(f"Unsupported curve {spec.crv}; use one of {', '.join(CURVES)}")
        return ec.generate_private_key(curve())
    raise bad_parameter(f"Unsupported key type {spec.kty} for a certificate; use RSA or EC")


def describe_key(key: Any) -> dict[str, Any]:
    """The key_props fields (kty, key_size or crv) that describe an imported key."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size not in RSA_SIZES:
            raise bad_parameter(f"Unsupported RSA key size {key.key_size}")
        return {"kty": "RSA", "key_size": key.key_size}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        crv = _CURVE_NAMES.get(key.curve.name)
        if crv is None:
            raise bad_parameter(f"Unsupported curve {key.curve.name}")
        return {"kty": "EC", "crv": crv, "key_size": key.curve.key_size}
    raise bad_parameter("Unsupported private key type; Key Vault certificates use RSA or EC keys")


def signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    """The hash Key Vault pairs with the key: SHA-256, or the curve's own size for P-384/P-521."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    return hashes.SHA256()


def public_key_der(key: Any) -> bytes:
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def same_public_key(a: Any, b: Any) -> bool:
    """True when two keys (private, public or a certificate's) have the same public half."""
    return public_key_der(a) == public_key_der(b)


def seal_key(sealer: Sealer, key: PrivateKey) -> str:
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return sealer.seal(der)


def unseal_key(sealer: Sealer, sealed: str) -> PrivateKey:
    key = serialization.load_der_private_key(sealer.unseal(sealed), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("sealed key is not an RSA or EC key")
    return key
