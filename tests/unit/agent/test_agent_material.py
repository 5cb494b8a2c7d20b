"""A certificate's secret value (PFX base64 or PEM) becomes key + leaf + chain, or is refused cleanly."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from certlc.agent.material import CONTENT_TYPE_PEM, CONTENT_TYPE_PFX, SecretRefused, decode_secret
from certlc.x509 import load_any, same_public_key, sha1_thumbprint

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "corpus"
PFX, PEM = CONTENT_TYPE_PFX, CONTENT_TYPE_PEM
# DER of the OIDs that tell a PFX's encryption apart.
OID_PBE_SHA1_3DES = bytes.fromhex("060a2a864886f70d010c0103")  # 1.2.840.113549.1.12.1.3
OID_AES256_CBC = bytes.fromhex("060960864801650304012a")  # 2.16.840.1.101.3.4.1.42


def corpus(name: str) -> bytes:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"no corpus file {path}")
    return path.read_bytes()


def refused(value: str | bytes, content_type: str | None, **kw: Any) -> SecretRefused:
    with pytest.raises(SecretRefused) as info:
        decode_secret(value, content_type, **kw)
    return info.value


def key_bytes(issued: Any) -> bytes:
    return issued.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())


def assert_no_secret_in(text: str, *secrets: str | bytes) -> None:
    for secret in secrets:
        value = secret.decode("latin-1") if isinstance(secret, bytes) else secret
        # Any 24-character run of the secret (base64 text, PEM body lines) must not appear.
        for start in range(0, max(1, len(value) - 24), 24):
            assert value[start:start + 24] not in text


# Decoding --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_type", ["EC", "RSA"])
@pytest.mark.parametrize("form", ["pfx", "pem"])
def test_a_key_vault_secret_decodes_to_key_leaf_and_leaf_first_chain(test_ca: Any, form: str, key_type: str) -> None:
    issued = test_ca.issue(key=key_type)
    value, ctype = (issued.pfx_secret(), PFX) if form == "pfx" else (issued.pem_secret(), PEM)
    material = decode_secret(value, ctype, version="v1")
    assert material.leaf == issued.leaf
    assert material.chain == [test_ca.issuing, test_ca.root]
    assert same_public_key(material.key, issued.leaf)
    assert material.sha1 == sha1_thumbprint(issued.leaf) and material.version == "v1"
    assert material.content_type == ctype and material.unlinked == 0


def test_without_a_content_type_the_value_shape_decides(test_ca: Any) -> None:
    issued = test_ca.issue()
    assert decode_secret(issued.pfx_secret(), None).leaf == issued.leaf
    assert decode_secret(issued.pem_secret(), None).leaf == issued.leaf


def test_a_chain_in_any_order_comes_out_leaf_first(test_ca: Any) -> None:
    issued = test_ca.issue()
    certs = [test_ca.root, issued.leaf, test_ca.issuing]
    pem = issued.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    material = decode_secret(pem.decode(), PEM)
    assert [material.leaf, *material.chain] == [issued.leaf, test_ca.issuing, test_ca.root]


def test_certificates_outside_the_chain_go_last_and_are_counted(test_ca: Any) -> None:
    issued, other = test_ca.issue(), test_ca.issue("other.contoso.com")
    der = pkcs12.serialize_key_and_certificates(None, issued.key, issued.leaf, [other.leaf, test_ca.issuing],
                                                serialization.NoEncryption())
    material = decode_secret(base64.b64encode(der).decode(), PFX)
    assert material.chain == [test_ca.issuing, other.leaf] and material.unlinked == 1


def test_crlf_and_a_byte_order_mark_in_a_pem_secret_are_tolerated(test_ca: Any) -> None:
    issued = test_ca.issue()
    assert decode_secret("\ufeff" + issued.pem_secret().replace("\n", "\r\n"), PEM).leaf == issued.leaf


def test_base64_wrapped_over_lines_is_tolerated(test_ca: Any) -> None:
    issued = test_ca.issue()
    value = issued.pfx_secret()
    assert decode_secret("\n".join(value[i:i + 76] for i in range(0, len(value), 76)), PFX).leaf == issued.leaf


# Refusals ---------------------------------------------------------------------------------------------------------
def test_a_secret_without_a_private_key_is_refused_as_non_exportable(test_ca: Any) -> None:
    issued = test_ca.issue()
    for value, ctype in ((issued.pfx_secret(with_key=False), PFX), (issued.pem_secret(with_key=False), PEM)):
        error = refused(value, ctype)
        assert error.reason == "NoPrivateKey" and "non-exportable" in error.message


def test_a_key_that_belongs_to_no_certificate_is_refused(test_ca: Any) -> None:
    issued, other = test_ca.issue(), test_ca.issue()
    pem = other.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
    error = refused(pem + issued.pem_secret(with_key=False), PEM)
    assert error.reason == "KeyMismatch"
    assert_no_secret_in(error.message + repr(error), pem, key_bytes(other))


def test_an_expired_leaf_is_refused_with_its_expiry(test_ca: Any) -> None:
    issued = test_ca.issue(not_after=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    error = refused(issued.pfx_secret(), PFX)
    assert error.reason == "LeafExpired" and "expired on" in error.message and sha1_thumbprint(issued.leaf) in error.message


@pytest.mark.parametrize(("value", "ctype", "reason", "words"), [
    ("%%% not base64 %%%", PFX, "MalformedSecret", "not base64"),
    ("", PFX, "MalformedSecret", "empty"),
    (base64.b64encode(b"\x30\x03\x02\x01\x03").decode(), PFX, "MalformedSecret", "not a PFX"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", PEM, "MalformedSecret", "no readable certificate"),
    ("just some words", PEM, "MalformedSecret", "no readable certificate"),
    ("{}", "application/json", "NotACertificateSecret", "not a certificate's"),
], ids=["not base64", "empty", "DER that is no PFX", "PEM block that is no certificate", "text", "other content type"])
def test_malformed_secrets_are_refused(value: str, ctype: str, reason: str, words: str) -> None:
    error = refused(value, ctype)
    assert error.reason == reason and words in error.message


def test_an_encrypted_or_doubled_or_broken_key_in_a_pem_secret_is_refused(test_ca: Any) -> None:
    issued = test_ca.issue()
    encrypted = issued.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"pw")).decode()
    certs = issued.pem_secret(with_key=False)
    assert "encrypted" in refused(encrypted + certs, PEM).message
    assert "2 private keys" in refused(issued.pem_secret() + issued.pem_secret(), PEM).message
    broken = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n-----END PRIVATE KEY-----\n"
    assert "cannot be read" in refused(broken + certs, PEM).message


def test_no_refusal_or_repr_carries_key_material(test_ca: Any) -> None:
    issued = test_ca.issue(key="RSA")
    pfx, pem = issued.pfx_secret(), issued.pem_secret()
    other = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    cases = [(pfx[:-8] + "AAAAAAAA", PFX), (pfx[:200], PFX), (other + issued.pem_secret(with_key=False), PEM),
             (pem.replace("-----END PRIVATE KEY", "-----END RSA PRIVATE KEY"), PEM)]
    for value, ctype in cases:
        with pytest.raises(SecretRefused) as info:
            decode_secret(value, ctype)
        assert_no_secret_in(str(info.value) + repr(info.value) + repr(info.value.context), pfx, pem, other)
    material = decode_secret(pfx, PFX)
    assert_no_secret_in(repr(material) + str(material), pfx, pem, material.key_pem())


# The field corpus (../shared/corpus; skipped when absent) ---------------------------------------------------------
def test_corpus_pfx_without_password_decodes_while_valid_and_is_refused_once_expired() -> None:
    data = corpus("certipy-user-template-nopass.pfx")
    value = base64.b64encode(data).decode()
    material = decode_secret(value, PFX, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert material.leaf.subject.rfc4514_string() == "CN=cert_admin,OU=ADCS,DC=tombwatcher,DC=htb"
    assert same_public_key(material.key, material.leaf)
    assert refused(value, PFX, now=dt.datetime(2026, 8, 10, tzinfo=dt.UTC)).reason == "LeafExpired"


def test_corpus_key_vault_pem_secret_key_first_decodes() -> None:
    text = corpus("lowkey-kv-pem-key-then-cert-rsa4096.pem").decode()
    material = decode_secret(text, PEM, now=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    assert material.leaf.subject.rfc4514_string() == "CN=example.com"
    assert material.key.key_size == 4096  # type: ignore[union-attr]
    assert material.combined_pem().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_corpus_chain_without_key_is_refused_as_non_exportable() -> None:
    text = corpus("acme-le-stackoverflow-leaf-e8-chain.pem").decode()
    assert refused(text, PEM).reason == "NoPrivateKey"


def test_corpus_bogus_key_block_is_refused_without_echoing_it() -> None:
    text = corpus("pyca-chain-with-garbage.pem").decode()
    error = refused(text, PEM)
    assert error.reason == "MalformedSecret" and "private key" in error.message
    assert "BEGIN" not in error.message


def test_corpus_password_protected_pfx_is_not_a_key_vault_secret() -> None:
    value = base64.b64encode(corpus("pyca-aes256-pw-cryptography.p12")).decode()
    error = refused(value, PFX)
    assert error.reason == "MalformedSecret" and "blank password" in error.message
    assert "cryptography" not in error.message  # the password is never named


# Output forms -------------------------------------------------------------------------------------------------------
def test_the_combined_pem_is_key_then_leaf_then_chain(test_ca: Any) -> None:
    issued = test_ca.issue()
    material = decode_secret(issued.pfx_secret(), PFX)
    combined = material.combined_pem()
    blocks = [line for line in combined.decode().splitlines() if line.startswith("-----BEGIN")]
    assert blocks == ["-----BEGIN PRIVATE KEY-----"] + ["-----BEGIN CERTIFICATE-----"] * 3
    loaded = load_any(combined)
    assert loaded.certificates == [issued.leaf, test_ca.issuing, test_ca.root] and loaded.key_matches_cert
    assert material.fullchain_pem() == material.cert_pem() + material.chain_pem()
    assert all(len(line) <= 64 for line in combined.decode().splitlines())


def test_pfx_output_modern_and_legacy_encryption(test_ca: Any) -> None:
    issued = test_ca.issue()
    material = decode_secret(issued.pem_secret(), PEM)
    modern, legacy = material.pfx(b"s3cret"), material.pfx(b"s3cret", legacy=True)
    for der in (modern, legacy):
        key, cert, extra = pkcs12.load_key_and_certificates(der, b"s3cret")
        assert cert == issued.leaf and extra == [test_ca.issuing, test_ca.root]
        assert key is not None and same_public_key(key, issued.leaf)
    assert OID_PBE_SHA1_3DES in legacy and OID_AES256_CBC not in legacy
    assert OID_AES256_CBC in modern and OID_PBE_SHA1_3DES not in modern
    blank = material.pfx(b"")
    assert pkcs12.load_key_and_certificates(blank, None)[1] == issued.leaf
