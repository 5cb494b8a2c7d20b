"""The emulator's X.509 work: subjects, CSRs, imports and secret exports (no server needed)."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certlc.emulator.errors import KvError
from certlc.emulator.keys import KeySpec, generate_key, same_public_key
from certlc.emulator.pki import (
    PEM,
    PKCS12,
    add_months,
    build_csr,
    build_self_signed,
    format_subject,
    parse_import,
    parse_subject,
    sans_from_names,
    secret_value,
)


@pytest.mark.parametrize(
    ("text", "rfc4514"),
    [
        ("CN=web01.contoso.com, O=Contoso, C=US", "CN=web01.contoso.com,O=Contoso,C=US"),
        ("CN=a;OU=b", "CN=a,OU=b"),
        ('CN="Doe, John", O=Contoso', "CN=Doe\\, John,O=Contoso"),
        ("CN=a, S=Bavaria, E=ops@contoso.com", "CN=a,ST=Bavaria,1.2.840.113549.1.9.1=ops@contoso.com"),
        ("CN=a+UID=7, DC=contoso, DC=com", "CN=a+UID=7,DC=contoso,DC=com"),
    ],
    ids=["spaces after commas", "semicolons", "quoted comma", "Windows attribute names", "multi-valued RDN"],
)
def test_policy_subjects_parse_most_specific_first(text: str, rfc4514: str) -> None:
    name = parse_subject(text)
    assert name.rfc4514_string({NameOID.EMAIL_ADDRESS: "1.2.840.113549.1.9.1"}) == rfc4514
    assert parse_subject(format_subject(name)) == name  # what an import stores parses back the same


def test_a_subject_that_is_not_type_value_pairs_is_refused() -> None:
    with pytest.raises(KvError) as refused:
        parse_subject("just a name")
    assert refused.value.status == 400


def test_the_csr_carries_every_kind_of_san_and_a_critical_key_usage() -> None:
    key = generate_key(KeySpec("EC", crv="P-384"))
    sans = {"dns_names": ["a.example"], "emails": ["a@example.com"], "upns": ["a@corp.example"],
            "ipAddresses": ["192.0.2.1", "2001:db8::2"], "uris": ["spiffe://example/a"]}
    csr = build_csr(key, {"subject": "CN=a", "sans": sans, "key_usage": ["digitalSignature"],
                          "ekus": ["1.3.6.1.5.5.7.3.2"]})
    assert csr.signature_hash_algorithm is not None and csr.signature_hash_algorithm.name == "sha384"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans_from_names(san.value) == sans and not san.critical
    assert csr.extensions.get_extension_for_class(x509.KeyUsage).critical
    assert same_public_key(csr.public_key(), key)


def test_the_san_extension_is_critical_when_the_subject_is_empty() -> None:
    key = generate_key(KeySpec("EC"))
    csr = build_csr(key, {"sans": {"dns_names": ["only-san.example"]}})
    assert len(csr.subject) == 0
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_months_are_calendar_months_with_the_day_clamped() -> None:
    assert add_months(dt.datetime(2025, 1, 31, tzinfo=dt.UTC), 1) == dt.datetime(2025, 2, 28, tzinfo=dt.UTC)
    assert add_months(dt.datetime(2025, 11, 15, tzinfo=dt.UTC), 14) == dt.datetime(2027, 1, 15, tzinfo=dt.UTC)


def _material() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, x509.Certificate]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build_self_signed(ca_key, {"subject": "CN=Test CA"}, dt.datetime.now(dt.UTC))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder().subject_name(parse_subject("CN=leaf")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    return key, leaf, ca


def test_a_pem_import_finds_the_leaf_anywhere_and_reads_an_encrypted_key() -> None:
    key, leaf, ca = _material()
    pem = (ca.public_bytes(serialization.Encoding.PEM)
           + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.BestAvailableEncryption(b"pw"))
           + leaf.public_bytes(serialization.Encoding.PEM)).replace(b"\n", b"\r\n")
    material = parse_import(base64.b64encode(pem).decode(), "pw", PEM)
    assert material.leaf == leaf and material.chain == [ca] and same_public_key(material.key, key)


def test_pem_sent_as_pkcs12_is_refused_with_a_hint() -> None:
    key, leaf, _ = _material()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()) + leaf.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(KvError) as refused:
        parse_import(base64.b64encode(pem).decode(), None, PKCS12)
    assert refused.value.status == 400 and "application/x-pem-file" in refused.value.message


def test_secrets_export_as_blank_password_pfx_or_pem_key_first() -> None:
    key, leaf, ca = _material()
    key_, cert, chain = pkcs12.load_key_and_certificates(base64.b64decode(secret_value(PKCS12, key, leaf, [ca])), b"")
    assert cert == leaf and chain == [ca] and key_ is not None and same_public_key(key_, key)
    pem = secret_value(PEM, key, leaf, [ca])
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n") and pem.count("BEGIN CERTIFICATE") == 2
    assert "PRIVATE KEY" not in secret_value(PEM, None, leaf, [ca])  # non-exportable key
