"""A throwaway PKI for the x509 tests: certificates, chains and CSRs made with cryptography.

A plain module with a unique name (not conftest) so test modules can import its types whichever
other conftest.py files pytest has loaded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import count

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

_START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes


class Pki:
    """Makes certificates; EC P-256 keys by default because they are quick to generate."""

    def __init__(self) -> None:
        self._serial = count(1000)

    def key(self) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(self, cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(
        self,
        cn: str,
        *,
        issuer: Issued | None = None,
        ca: bool = False,
        key: CertificateIssuerPrivateKeyTypes | None = None,
        san: Sequence[x509.GeneralName] = (),
        eku: Sequence[x509.ObjectIdentifier] = (),
        extensions: Iterable[x509.ExtensionType] = (),
        key_ids: bool = True,
        issuer_name: str | None = None,
        days: int = 90,
        offset_days: int = 0,
    ) -> Issued:
        """A certificate for ``cn``, self-signed unless ``issuer`` is given."""
        key = key or self.key()
        signer_key = issuer.key if issuer else key
        if issuer_name is not None:
            issuer_dn = self.name(issuer_name)
        else:
            issuer_dn = issuer.cert.subject if issuer else self.name(cn)
        builder = (
            x509.CertificateBuilder()
            .subject_name(self.name(cn))
            .issuer_name(issuer_dn)
            .public_key(key.public_key())
            .serial_number(next(self._serial))
            .not_valid_before(_START + dt.timedelta(days=offset_days))
            .not_valid_after(_START + dt.timedelta(days=offset_days + days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if key_ids:
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                            critical=False)
            if issuer is not None:
                builder = builder.add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        for ext in extensions:
            builder = builder.add_extension(ext, critical=False)
        return Issued(builder.sign(signer_key, hashes.SHA256()), key)

    def chain(self, depth: int = 3, prefix: str = "") -> list[Issued]:
        """A chain leaf first: leaf, intermediates, root (``depth`` certificates in all)."""
        root = self.cert(f"{prefix}Root", ca=True, days=3650)
        issued = [root]
        for level in range(depth - 2):
            issued.append(self.cert(f"{prefix}Intermediate {level + 1}", issuer=issued[-1], ca=True, days=1800))
        leaf = self.cert(f"{prefix}leaf.example.com", issuer=issued[-1],
                         san=[x509.DNSName(f"{prefix.lower()}leaf.example.com")])
        issued.append(leaf)
        return issued[::-1]

    def csr(
        self,
        cn: str,
        *,
        key: CertificateIssuerPrivateKeyTypes | None = None,
        san: Sequence[x509.GeneralName] = (),
        extensions: Iterable[x509.ExtensionType] = (),
    ) -> x509.CertificateSigningRequest:
        key = key or self.key()
        builder = x509.CertificateSigningRequestBuilder().subject_name(self.name(cn))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        for ext in extensions:
            builder = builder.add_extension(ext, critical=False)
        return builder.sign(key, hashes.SHA256())
