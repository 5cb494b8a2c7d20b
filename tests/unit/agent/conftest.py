"""A throwaway root and issuing CA, and certificate secrets shaped like Key Vault's."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "corpus"
NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Issued:
    key: PrivateKeyTypes
    leaf: x509.Certificate
    chain: list[x509.Certificate]  # issuing CA, root

    def pfx_secret(self, *, with_key: bool = True) -> str:
        """What Key Vault's application/x-pkcs12 secret value holds: base64 of a blank-password PFX."""
        der = pkcs12.serialize_key_and_certificates(b"kv", self.key if with_key else None, self.leaf, self.chain,
                                                    serialization.NoEncryption())
        return base64.b64encode(der).decode()

    def pem_secret(self, *, with_key: bool = True) -> str:
        """What Key Vault's application/x-pem-file secret value holds: PKCS#8 key, then the certificates."""
        key = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()) if with_key else b""
        return (key + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [self.leaf, *self.chain])).decode()


class TestCA:
    """Root -> issuing CA -> leaves."""

    __test__ = False

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._cert(_name("Agent Test Root"), _name("Agent Test Root"), self.root_key.public_key(),
                               self.root_key, ca=True)
        self.issuing_key = ec.generate_private_key(ec.SECP256R1())
        self.issuing = self._cert(_name("Agent Test Issuing CA"), self.root.subject, self.issuing_key.public_key(),
                                  self.root_key, ca=True, issuer_cert=self.root)

    def _cert(self, subject: x509.Name, issuer: x509.Name, public_key: object, signer: PrivateKeyTypes, *,
              ca: bool, issuer_cert: x509.Certificate | None = None, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None, dns: list[str] | None = None) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public_key)  # type: ignore[arg-type]
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or NOW - dt.timedelta(days=1))
                   .not_valid_after(not_after or NOW + dt.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))  # type: ignore[arg-type]
        if issuer_cert is not None:
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_cert.public_key()), critical=False)  # type: ignore[arg-type]
        if dns:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
        return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]

    def issue(self, cn: str = "web.contoso.com", *, key: str = "EC", days: float = 90,
              not_after: dt.datetime | None = None, not_before: dt.datetime | None = None) -> Issued:
        private: PrivateKeyTypes = (rsa.generate_private_key(65537, 2048) if key == "RSA"
                                    else ec.generate_private_key(ec.SECP256R1()))
        end = not_after or NOW + dt.timedelta(days=days)
        leaf = self._cert(_name(cn), self.issuing.subject, private.public_key(), self.issuing_key, ca=False,
                          issuer_cert=self.issuing,
                          not_before=not_before or min(NOW, end) - dt.timedelta(days=1),
                          not_after=end, dns=[cn])
        return Issued(private, leaf, [self.issuing, self.root])


@pytest.fixture(scope="session")
def test_ca() -> TestCA:
    return TestCA()
