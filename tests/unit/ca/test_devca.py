"""The dev CA issues the way AD CS does and speaks the disposition contract."""

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certlc.ca import DispositionStatus, SigningRequest, connector_for
from certlc.ca.base import TemplateStatus
from certlc.ca.devca import APPLICATION_POLICIES_OID, OFFLINE_FILE, DevCA
from certlc.config import TemplateSpec, load_settings
from certlc.errors import ConfigError, TransientError
from certlc.x509.templates import TEMPLATE_NAME_OID, TEMPLATE_V2_OID, template_of

V2_OID = "1.3.6.1.4.1.311.21.8.1.2.3"
TEMPLATES = [
    {"name": "WebServer", "validity_days": 730, "ekus": ["1.3.6.1.5.5.7.3.1"]},
    {"name": "WebServerV2", "oid": V2_OID, "major": 100, "minor": 3, "validity_days": 90},
    {"name": "NoMinor", "oid": V2_OID + ".9", "major": 7},
    {"name": "Approval", "approval": "manager"},
    {"name": "Forbidden", "approval": "deny"},
]


@pytest.fixture
def connector(tmp_path: Path):
    settings = load_settings(state_dir=str(tmp_path), devca={"templates": TEMPLATES},
                             ca_profiles={"default": {"kind": "devca"}})
    return connector_for("default", settings)


def csr_pem(*names: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def issued_cert(disposition) -> x509.Certificate:
    assert disposition.status is DispositionStatus.ISSUED, disposition
    return x509.load_pem_x509_certificate(disposition.certificate_pem.encode())


def test_v1_template_is_a_bmpstring_name_only(connector) -> None:
    cert = issued_cert(connector.submit(SigningRequest(csr_pem("a.example", "b.example"), "WebServer")))
    raw = cert.extensions.get_extension_for_oid(TEMPLATE_NAME_OID).value.value
    assert raw[0] == 0x1E and raw[2:].decode("utf-16-be") == "WebServer"
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(TEMPLATE_V2_OID)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["a.example", "b.example"]


def test_v2_template_carries_oid_and_versions_and_absent_minor_stays_absent(connector) -> None:
    cert = issued_cert(connector.submit(SigningRequest(csr_pem("a.example"), "WebServerV2")))
    assert template_of(cert).to_dict() == {"name": None, "oid": V2_OID, "major": 100, "minor": 3}
    cert = issued_cert(connector.submit(SigningRequest(csr_pem("a.example"), "NoMinor")))
    assert template_of(cert).minor is None
    # AD CS accepts the OID in the request as well as the name.
    cert = issued_cert(connector.submit(SigningRequest(csr_pem("a.example"), V2_OID)))
    assert template_of(cert).oid == V2_OID


def test_validity_ekus_and_backdating_follow_the_template(connector) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = issued_cert(connector.submit(SigningRequest(csr_pem("a.example"), "WebServer")))
    assert dt.timedelta(minutes=9) <= before - cert.not_valid_before_utc <= dt.timedelta(minutes=11)
    assert abs(cert.not_valid_after_utc - before - dt.timedelta(days=730)) < dt.timedelta(minutes=1)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [o.dotted_string for o in eku] == ["1.3.6.1.5.5.7.3.1"]
    cert.extensions.get_extension_for_oid(APPLICATION_POLICIES_OID)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_chain_links_leaf_to_issuing_to_root(connector) -> None:
    d = connector.submit(SigningRequest(csr_pem("a.example"), "WebServer"))
    leaf = issued_cert(d)
    issuing, root = (x509.load_pem_x509_certificate(p.encode()) for p in d.chain_pem)
    leaf.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(root)


def test_unknown_template_is_denied_with_the_ad_cs_message(connector) -> None:
    d = connector.submit(SigningRequest(csr_pem("a.example"), "NoSuchTemplate"))
    assert d.status is DispositionStatus.DENIED and "CERTSRV_E_UNSUPPORTED_CERT_TYPE" in d.message


def test_manager_approval_holds_the_request_until_approved(connector) -> None:
    d = connector.submit(SigningRequest(csr_pem("a.example"), "Approval"))
    assert d.status is DispositionStatus.PENDING and d.request_id
    assert connector.retrieve(d.request_id).status is DispositionStatus.PENDING
    connector.ca.set_decision(d.request_id, "approve")
    first = connector.retrieve(d.request_id)
    assert first.status is DispositionStatus.ISSUED
    assert connector.retrieve(d.request_id).certificate_pem == first.certificate_pem  # issued once


def test_deny_template_and_denied_request(connector) -> None:
    assert connector.submit(SigningRequest(csr_pem("a.example"), "Forbidden")).status is DispositionStatus.DENIED
    d = connector.submit(SigningRequest(csr_pem("a.example"), "Approval"))
    connector.ca.set_decision(d.request_id, "deny")
    assert connector.retrieve(d.request_id).status is DispositionStatus.DENIED


def test_state_survives_a_new_instance(tmp_path: Path) -> None:
    first = DevCA(tmp_path / "ca", [TemplateSpec(name="WebServer")])
    second = DevCA(tmp_path / "ca", [TemplateSpec(name="WebServer")])
    assert first.chain[0] == second.chain[0]
    assert (tmp_path / "ca" / "issuing.key").stat().st_mode & 0o077 == 0


def test_unknown_connector_kind_names_the_known_ones(tmp_path: Path) -> None:
    settings = load_settings(state_dir=str(tmp_path), ca_profiles={"x": {"kind": "nosuch"}})
    with pytest.raises(ConfigError, match="known: devca"):
        connector_for("x", settings)


# --- check_templates: what ``certlc ca check`` asks --------------------------------------------
def test_check_templates_says_issued_held_refused_or_unknown(connector) -> None:
    results = connector.check_templates(["WebServer", "Approval", "Forbidden", "NoSuchTemplate", V2_OID])
    assert [r.status for r in results] == [TemplateStatus.OK, TemplateStatus.OK, TemplateStatus.NOT_ENROLLABLE,
                                          TemplateStatus.UNKNOWN, TemplateStatus.OK]
    assert "approval" in results[1].detail
    assert "by policy" in results[2].detail and "approval" in results[2].action
    assert "no template 'NoSuchTemplate'" in results[3].detail and "WebServer" in results[3].detail
    assert all(r.template == r.ca_name for r in results)


def test_check_templates_maps_through_the_profile(tmp_path: Path) -> None:
    settings = load_settings(state_dir=str(tmp_path), devca={"templates": TEMPLATES},
                             ca_profiles={"dev": {"kind": "devca", "template_map": {"1.2.3.4": "WebServerV2"}}})
    [result] = connector_for("dev", settings).check_templates(["1.2.3.4"])
    assert result.ok and (result.template, result.ca_name) == ("1.2.3.4", "WebServerV2")


def test_check_templates_of_an_offline_dev_ca_is_transient(connector) -> None:
    connector.ca.ensure()
    (connector.ca.state_dir / OFFLINE_FILE).touch()
    with pytest.raises(TransientError):
        connector.check_templates(["WebServer"])


@pytest.mark.parametrize("profile", [{"kind": "devca", "options": {"foo": 1}},
                                     {"kind": "devca", "endpoint": "https://ca01.contoso.com/certsrv"}])
def test_a_dev_ca_profile_with_an_endpoint_or_options_was_meant_for_another_kind(tmp_path: Path, profile) -> None:
    settings = load_settings(state_dir=str(tmp_path), ca_profiles={"adcs": profile})
    with pytest.raises(ConfigError, match="was another kind meant"):
        connector_for("adcs", settings)
