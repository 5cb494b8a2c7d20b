"""load_any reads every byte form certificates, chains, CSRs and PFX files arrive in."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from x509_pki import Issued, Pki

from certlc.errors import InvalidInput
from certlc.x509 import Loaded, load_any, load_certificates, load_csr
from certlc.x509 import load as load_module

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(PEM)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(DER)


def armor(label: str, data: bytes, newline: bytes = b"\n") -> bytes:
    body = base64.encodebytes(data).replace(b"\n", newline)
    return b"-----BEGIN " + label.encode() + b"-----" + newline + body + b"-----END " + label.encode() \
        + b"-----" + newline


def key_pem(issued: Issued, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return issued.key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, encryption)


def p7_der(certs: list[x509.Certificate]) -> bytes:
    return pkcs7.serialize_certificates(certs, DER)


def shuffled_set(p7: bytes, certs: list[x509.Certificate]) -> bytes:
    """The same PKCS#7 with its certificate SET written in reverse (not DER order), as AD CS does."""
    ders = [der(c) for c in certs]
    joined = b"".join(ders)
    if joined not in p7:
        ders = ders[::-1]
        joined = b"".join(ders)
    assert joined in p7
    return p7.replace(joined, b"".join(ders[::-1]))


def subjects(loaded: Loaded) -> list[str]:
    return [c.subject.rfc4514_string() for c in loaded.certificates]


# --- certificates in every form ---------------------------------------------------------------


def test_binary_der_certificate_is_read_and_noted(chain3: list[Issued]) -> None:
    loaded = load_any(der(chain3[0].cert))
    assert loaded.certificates == [chain3[0].cert]
    assert loaded.format_notes == ["der"]
    assert loaded.csrs == [] and loaded.has_private_key is False and loaded.key_matches_cert is None


def test_pem_with_text_before_between_and_after_blocks_keeps_file_order(chain3: list[Issued]) -> None:
    data = b"Subject: leaf\nissuer: whatever\n" + pem(chain3[0].cert) + b"\nBag Attributes\n  friendlyName: x\n" \
        + pem(chain3[1].cert) + b"trailing words\n"
    loaded = load_any(data)
    assert loaded.certificates == [chain3[0].cert, chain3[1].cert]
    assert loaded.format_notes == ["text-before-first-pem-block"]


def test_crlf_and_utf8_bom_are_noted(chain3: list[Issued]) -> None:
    data = b"\xef\xbb\xbf" + pem(chain3[0].cert).replace(b"\n", b"\r\n")
    loaded = load_any(data)
    assert loaded.certificates == [chain3[0].cert]
    assert loaded.format_notes == ["utf-8 BOM", "crlf"]


def test_utf16_text_as_windows_powershell_writes_it(chain3: list[Issued]) -> None:
    data = pem(chain3[0].cert).decode().encode("utf-16")  # with BOM
    loaded = load_any(data)
    assert loaded.certificates == [chain3[0].cert]
    assert "utf-16 text" in loaded.format_notes


def test_bare_base64_without_armor(chain3: list[Issued]) -> None:
    loaded = load_any(base64.encodebytes(der(chain3[0].cert)))
    assert loaded.certificates == [chain3[0].cert]
    assert loaded.format_notes == ["base64 of DER, no armor"]


def test_base64url_on_one_line(chain3: list[Issued]) -> None:
    loaded = load_any(base64.urlsafe_b64encode(der(chain3[0].cert)).rstrip(b"="))
    assert loaded.certificates == [chain3[0].cert]


def test_json_escaped_pem_newlines(chain3: list[Issued]) -> None:
    data = pem(chain3[0].cert).replace(b"\n", b"\\n")
    assert load_any(data).certificates == [chain3[0].cert]


def test_base64_of_a_pem_file(chain3: list[Issued]) -> None:
    data = base64.b64encode(pem(chain3[0].cert) + pem(chain3[1].cert))
    assert load_any(data).certificates == [chain3[0].cert, chain3[1].cert]


def test_key_first_pem_as_key_vault_secret(chain3: list[Issued]) -> None:
    loaded = load_any(key_pem(chain3[0]) + pem(chain3[0].cert))
    assert loaded.certificates == [chain3[0].cert]
    assert loaded.has_private_key is True
    assert loaded.key_matches_cert is True
    assert loaded.format_notes == ["non-cert-block:PRIVATE KEY"]


def test_key_for_another_certificate_does_not_match(pki: Pki, chain3: list[Issued]) -> None:
    other = pki.cert("other")
    loaded = load_any(key_pem(other) + pem(chain3[0].cert))
    assert loaded.has_private_key is True and loaded.key_matches_cert is False


def test_encrypted_key_counts_as_present_without_a_password(chain3: list[Issued]) -> None:
    data = key_pem(chain3[0], b"secret") + pem(chain3[0].cert)
    without = load_any(data)
    assert without.has_private_key is True and without.key_matches_cert is None
    assert load_any(data, b"secret").key_matches_cert is True


def test_bogus_blocks_are_skipped_when_something_readable_remains(chain3: list[Issued]) -> None:
    data = (armor("CERTIFICATE", b"\x30\x03\x02\x01\x05") + pem(chain3[0].cert)
            + b"-----BEGIN PRIVATE KEY-----\naHR0cHM6Ly9iaXQubHkvM3VKOXpZZw==\n-----END PRIVATE KEY-----\n"
            + b"-----BEGIN X509 CRL-----\n!!!\n-----END X509 CRL-----\n")
    loaded = load_any(data)
    assert loaded.certificates == [chain3[0].cert]
    assert loaded.has_private_key is False
    assert loaded.format_notes == ["non-cert-block:PRIVATE KEY", "non-cert-block:X509 CRL",
                                   "unreadable-block:CERTIFICATE"]


def test_trusted_certificate_with_openssl_aux_data(chain3: list[Issued]) -> None:
    aux = bytes.fromhex("300c300a06082b06010505070301")  # trust: serverAuth
    loaded = load_any(armor("TRUSTED CERTIFICATE", der(chain3[0].cert) + aux))
    assert loaded.certificates == [chain3[0].cert]
    assert "trailing data after DER object" in loaded.format_notes


def test_load_certificates_accepts_str(chain3: list[Issued]) -> None:
    assert load_certificates(pem(chain3[0].cert).decode()) == [chain3[0].cert]


# --- PKCS#7 -----------------------------------------------------------------------------------


def test_der_pkcs7_keeps_set_order(chain3: list[Issued]) -> None:
    certs = [c.cert for c in chain3]
    p7 = shuffled_set(p7_der(certs), certs)
    loaded = load_any(p7)
    in_file_order = sorted(certs, key=lambda c: p7.index(der(c)))
    assert loaded.certificates == in_file_order
    assert loaded.format_notes[0] == "der-pkcs7"
    assert "certificates SET not in DER order" in loaded.format_notes


def test_pkcs7_inside_certificate_armor_with_crlf_as_adcs_delivers_it(chain3: list[Issued]) -> None:
    certs = [chain3[1].cert, chain3[2].cert]
    data = armor("CERTIFICATE", shuffled_set(p7_der(certs), certs), b"\r\n")
    loaded = load_any(data)
    assert sorted(subjects(loaded)) == sorted(c.subject.rfc4514_string() for c in certs)
    assert loaded.format_notes == ["pkcs7 DER inside CERTIFICATE armor", "crlf",
                                   "certificates SET not in DER order"]


def test_begin_pkcs7_block(chain3: list[Issued]) -> None:
    certs = [c.cert for c in chain3]
    loaded = load_any(pkcs7.serialize_certificates(certs, PEM))
    assert set(loaded.certificates) == set(certs)
    assert loaded.format_notes == [] or loaded.format_notes[0].startswith("chain")


def test_bare_base64_pkcs7(chain3: list[Issued]) -> None:
    loaded = load_any(base64.b64encode(p7_der([chain3[0].cert])))
    assert loaded.certificates == [chain3[0].cert]
    assert loaded.format_notes == ["base64 of DER, no armor"]


def test_pkcs7_still_read_if_cryptography_refuses_non_der_sets(
        chain3: list[Issued], monkeypatch: pytest.MonkeyPatch) -> None:
    # cryptography 50 warns that it may refuse such SETs in future; certlc must keep reading them.
    certs = [chain3[1].cert, chain3[2].cert]
    p7 = shuffled_set(p7_der(certs), certs)

    def refuse(data: bytes) -> list[x509.Certificate]:
        raise ValueError("InvalidSetOrdering")

    monkeypatch.setattr(load_module.pkcs7, "load_der_pkcs7_certificates", refuse)
    loaded = load_any(p7)
    assert loaded.certificates == sorted(certs, key=lambda c: p7.index(der(c)))
    assert "certificates SET not in DER order" in loaded.format_notes


# --- PFX ---------------------------------------------------------------------------------------


def pfx(chain: list[Issued], password: bytes | None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return pkcs12.serialize_key_and_certificates(b"friendly", chain[0].key, chain[0].cert,
                                                 [c.cert for c in chain[1:]], encryption)


def test_pfx_without_password(chain3: list[Issued]) -> None:
    loaded = load_any(pfx(chain3, None))
    assert loaded.certificates == [c.cert for c in chain3]
    assert loaded.has_private_key is True and loaded.key_matches_cert is True
    assert loaded.format_notes == []


def test_pfx_with_password(chain3: list[Issued]) -> None:
    loaded = load_any(pfx(chain3, b"s3cret"), b"s3cret")
    assert loaded.certificates[0] == chain3[0].cert and loaded.key_matches_cert is True


def test_base64_pfx_as_key_vault_secret_value(chain3: list[Issued]) -> None:
    loaded = load_any(base64.b64encode(pfx(chain3, None)))
    assert loaded.certificates[0] == chain3[0].cert and loaded.has_private_key


def test_pfx_needs_a_password(chain3: list[Issued]) -> None:
    with pytest.raises(InvalidInput, match=r"^PKCS#12 file needs a password$") as info:
        load_any(pfx(chain3, b"s3cret"))
    assert info.value.reason == "PasswordRequired"


def test_pfx_wrong_password(chain3: list[Issued]) -> None:
    with pytest.raises(InvalidInput, match=r"^wrong password for PKCS#12 file$") as info:
        load_any(pfx(chain3, b"s3cret"), b"guess")
    assert info.value.reason == "PasswordWrong"
    assert "guess" not in str(info.value)


# --- CSRs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pem", "new-certificate-request", "der", "bare-base64", "crlf-bom"])
def test_csr_in_every_form(pki: Pki, form: str) -> None:
    csr = pki.csr("req.example.com", san=[x509.DNSName("req.example.com")])
    raw = csr.public_bytes(DER)
    data = {
        "pem": csr.public_bytes(PEM),
        "new-certificate-request": armor("NEW CERTIFICATE REQUEST", raw),
        "der": raw,
        "bare-base64": base64.encodebytes(raw),
        "crlf-bom": b"\xef\xbb\xbf" + csr.public_bytes(PEM).replace(b"\n", b"\r\n"),
    }[form]
    assert load_csr(data) == csr
    assert load_any(data).certificates == []


def test_load_csr_refuses_a_certificate(chain3: list[Issued]) -> None:
    with pytest.raises(InvalidInput, match="no certificate request") as info:
        load_csr(pem(chain3[0].cert))
    assert info.value.reason == "NoCsr"


def test_load_certificates_refuses_a_csr(pki: Pki) -> None:
    with pytest.raises(InvalidInput, match="not a certificate"):
        load_certificates(pki.csr("x").public_bytes(PEM))


# --- nothing readable ----------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "message"), [
    pytest.param(b"", "file is empty", id="empty"),
    pytest.param(b" \r\n\t", "file is empty", id="whitespace"),
    pytest.param(b"hello world, no certificate here\n", "file holds no certificate, CSR or PKCS#12 data",
                 id="text"),
    pytest.param(b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n", "PEM CERTIFICATE block has no END line",
                 id="truncated-pem"),
    pytest.param(b"-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
                 "PEM CERTIFICATE block is not valid base64", id="bad-base64"),
    pytest.param(b"-----BEGIN CERTIFICATE-----\nMAMCAQU=\n-----END CERTIFICATE-----\n",
                 "PEM CERTIFICATE block holds no readable certificate", id="not-a-certificate"),
    pytest.param(b"\x30\x82\x01\x00garbage", "file holds no certificate, CSR or PKCS#12 data", id="bad-der"),
])
def test_unreadable_input_says_why_in_one_line(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        load_any(data)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_random_bytes_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="no certificate"):
        load_any(b"\x00\x01" + os.urandom(512))


def test_truncated_pem_certificate(chain3: list[Issued]) -> None:
    data = pem(chain3[0].cert)
    with pytest.raises(InvalidInput, match="no END line"):
        load_any(data[: len(data) // 2])


def test_truncated_pem_body_with_end_line(chain3: list[Issued]) -> None:
    lines = pem(chain3[0].cert).splitlines(keepends=True)
    with pytest.raises(InvalidInput, match="holds no readable certificate"):
        load_any(b"".join(lines[:3] + lines[-1:]))


def test_only_a_private_key(chain3: list[Issued]) -> None:
    with pytest.raises(InvalidInput, match="private key but no certificate"):
        load_any(key_pem(chain3[0]))


def test_private_key_never_in_loaded(chain3: list[Issued]) -> None:
    loaded = load_any(key_pem(chain3[0]) + pem(chain3[0].cert))
    secret = chain3[0].key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert secret.hex() not in repr(loaded)
    assert all(not hasattr(v, "private_bytes") for v in vars(loaded).values())
