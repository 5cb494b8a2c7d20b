"""SANs keep their kind and file order; DNS names become A-labels for requests."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from pyasn1.codec.der import encoder
from pyasn1.type import char, univ
from x509_pki import Pki

from certlc.errors import InvalidInput
from certlc.x509 import UPN_OID, dns_a_label, san_strings, unique_a_labels


def upn(value: str) -> x509.OtherName:
    return x509.OtherName(UPN_OID, encoder.encode(char.UTF8String(value)))


@pytest.mark.parametrize(("name", "a_label"), [
    pytest.param("bücher.de", "xn--bcher-kva.de", id="u-label"),
    pytest.param("BÜCHER.de", "xn--bcher-kva.de", id="upper-case-u-label"),
    pytest.param("*.bücher.de", "*.xn--bcher-kva.de", id="wildcard"),
    pytest.param("_acme-challenge.bücher.de", "_acme-challenge.xn--bcher-kva.de", id="underscore"),
    pytest.param("\uff42\u00fc\uff43her\u3002de", "xn--bcher-kva.de", id="fullwidth-and-ideographic-dot"),
    pytest.param("biztosítás.hu", "xn--biztosts-fza2j.hu", id="corpus-idn"),
    pytest.param("*.biztosítás.hu", "*.xn--biztosts-fza2j.hu", id="corpus-wildcard-idn"),
    pytest.param("WWW.Example.COM", "www.example.com", id="ascii-lowercased"),
    pytest.param("xn--BCHER-kva.de", "xn--bcher-kva.de", id="a-label-lowercased"),
    pytest.param("_dmarc.example.com", "_dmarc.example.com", id="ascii-underscore"),
    pytest.param("☃.net", "xn--n3h.net", id="idna2003-fallback"),
])
def test_dns_a_label(name: str, a_label: str) -> None:
    assert dns_a_label(name) == a_label


def test_dns_a_label_refuses_empty() -> None:
    with pytest.raises(InvalidInput, match="empty DNS name"):
        dns_a_label("  ")


def test_unique_a_labels_merges_u_labels_with_their_punycode_forms() -> None:
    # The SANs of the corpus's NetLock certificate: raw UTF-8 next to the punycode forms.
    sans = ["partner.biztositas.hu", "biztositas.hu", "*.biztositas.hu", "biztosítás.hu", "*.biztosítás.hu",
            "xn--biztosts-fza2j.hu", "*.xn--biztosts-fza2j.hu"]
    assert unique_a_labels(sans) == ["partner.biztositas.hu", "biztositas.hu", "*.biztositas.hu",
                                     "xn--biztosts-fza2j.hu", "*.xn--biztosts-fza2j.hu"]


def test_upn_san_stays_a_upn(pki: Pki) -> None:
    cert = pki.cert("cert_admin", san=[upn("cert_admin@tombwatcher.htb")]).cert
    assert san_strings(cert) == ["UPN:cert_admin@tombwatcher.htb"]


def test_upn_in_a_csr(pki: Pki) -> None:
    csr = pki.csr("user", san=[upn("jdoe@corp.example"), x509.DNSName("host.corp.example")])
    assert san_strings(csr) == ["UPN:jdoe@corp.example", "DNS:host.corp.example"]


def test_every_kind_in_file_order(pki: Pki) -> None:
    guid = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.25.1"), encoder.encode(univ.OctetString(b"\x01\x02")))
    cert = pki.cert("all", san=[
        x509.UniformResourceIdentifier("https://example.com/x"),
        x509.DNSName("b.example.com"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        x509.RFC822Name("ops@example.com"),
        upn("u@example.com"),
        guid,
        x509.DNSName("a.example.com"),
        x509.DirectoryName(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "dir")])),
        x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
    ]).cert
    assert san_strings(cert) == [
        "URI:https://example.com/x",
        "DNS:b.example.com",
        "IP:192.0.2.7",
        "IP:2001:db8::1",
        "email:ops@example.com",
        "UPN:u@example.com",
        "otherName:1.3.6.1.4.1.311.25.1:04020102",
        "DNS:a.example.com",
        "dirName:CN=dir",
        "RID:1.2.3.4",
    ]


def test_upn_that_is_not_a_utf8string_is_shown_raw(pki: Pki) -> None:
    odd = x509.OtherName(UPN_OID, encoder.encode(char.BMPString("x@y")))
    cert = pki.cert("odd", san=[odd]).cert
    assert san_strings(cert) == [f"otherName:{UPN_OID.dotted_string}:{encoder.encode(char.BMPString('x@y')).hex()}"]


def test_no_san_extension(pki: Pki) -> None:
    assert san_strings(pki.cert("plain").cert) == []
