"""describe() gives the ``certlc inspect --json`` object; key_info names the key."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from x509_pki import Pki

from certlc.errors import InvalidInput
from certlc.x509 import (
    TEMPLATE_NAME_OID,
    TEMPLATE_V2_OID,
    describe,
    encode_template_name,
    encode_template_v2,
    key_info,
    sha1_thumbprint,
)


def test_certificate_object(pki: Pki) -> None:
    ca = pki.cert("Issuing CA", ca=True)
    issued = pki.cert(
        "web.example.com", issuer=ca,
        san=[x509.DNSName("web.example.com"), x509.DNSName("*.example.com")],
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
        extensions=[x509.UnrecognizedExtension(TEMPLATE_NAME_OID, encode_template_name("WebServer"))],
    ).cert
    obj = describe(issued)
    assert obj == {
        "kind": "certificate",
        "subject": "CN=web.example.com",
        "issuer": "CN=Issuing CA",
        "serial_hex": format(issued.serial_number, "x"),
        "not_before": "2025-01-01T00:00:00Z",
        "not_after": "2025-04-01T00:00:00Z",
        "sha1_thumbprint": sha1_thumbprint(issued),
        "key": {"type": "EC", "curve": "secp256r1", "size": 256},
        "san": ["DNS:web.example.com", "DNS:*.example.com"],
        "eku": ["1.3.6.1.5.5.7.3.2", "1.3.6.1.5.5.7.3.1"],
        "template": {"name": "WebServer", "oid": None, "major": None, "minor": None},
        "is_ca": False,
    }
    assert list(obj) == ["kind", "subject", "issuer", "serial_hex", "not_before", "not_after",
                         "sha1_thumbprint", "key", "san", "eku", "template", "is_ca"]
    assert describe(ca.cert)["is_ca"] is True
    assert describe(ca.cert)["template"] is None


def test_sha1_thumbprint_is_upper_case_hex(pki: Pki) -> None:
    assert re.fullmatch(r"[0-9A-F]{40}", sha1_thumbprint(pki.cert("t").cert))


def test_csr_object_has_no_issuer_or_validity(pki: Pki) -> None:
    csr = pki.csr("req.example.com", san=[x509.DNSName("req.example.com")], extensions=[
        x509.UnrecognizedExtension(TEMPLATE_V2_OID, encode_template_v2("1.3.6.1.4.1.311.21.8.1.2", 100, 3)),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
    ])
    assert describe(csr) == {
        "kind": "csr",
        "subject": "CN=req.example.com",
        "key": {"type": "EC", "curve": "secp256r1", "size": 256},
        "san": ["DNS:req.example.com"],
        "eku": ["1.3.6.1.5.5.7.3.1"],
        "template": {"name": None, "oid": "1.3.6.1.4.1.311.21.8.1.2", "major": 100, "minor": 3},
    }


def test_malformed_extension_is_invalid_input_not_a_crash(pki: Pki) -> None:
    # An OCTET STRING under the SAN OID: cryptography writes it, but cannot read it back as a SAN.
    broken = pki.cert("broken", extensions=[x509.UnrecognizedExtension(
        x509.ObjectIdentifier("2.5.29.17"), b"\x04\x00")]).cert
    with pytest.raises(InvalidInput, match="cannot be read"):
        describe(broken)


def test_describe_refuses_other_objects() -> None:
    with pytest.raises(TypeError):
        describe("not a certificate")  # type: ignore[arg-type]


@pytest.mark.parametrize(("make_key", "info"), [
    pytest.param(lambda: rsa.generate_private_key(65537, 2048), {"type": "RSA", "size": 2048}, id="rsa"),
    pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()),
                 {"type": "EC", "curve": "secp384r1", "size": 384}, id="ec"),
    pytest.param(ed25519.Ed25519PrivateKey.generate, {"type": "Ed25519", "size": 256}, id="ed25519"),
    pytest.param(ed448.Ed448PrivateKey.generate, {"type": "Ed448", "size": 448}, id="ed448"),
    # 1024 bits: DSA parameter generation is slow, and only the reported size is under test.
    pytest.param(lambda: dsa.generate_private_key(1024), {"type": "DSA", "size": 1024}, id="dsa"),  # noqa: S505
    pytest.param(x25519.X25519PrivateKey.generate, {"type": "X25519", "size": 256}, id="x25519"),
])
def test_key_info(make_key: Callable[[], Any], info: dict[str, object]) -> None:
    assert key_info(make_key().public_key()) == info


def test_key_info_refuses_non_keys() -> None:
    with pytest.raises(TypeError):
        key_info(b"key")
