"""Domain logic between the steps: template choice, intended CSR, verifying what the CA returned."""

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certlc.ca.devca import DevCA
from certlc.config import CAProfile, Settings, TemplateSpec
from certlc.denials import Denial, DenialLog, denial_message
from certlc.errors import InvalidInput, TerminalError
from certlc.renewal import ca_profile_name, choose_ca, resolve_template
from certlc.vault import CertificateSnapshot, _snapshot, csr_mismatch, desired_sans
from certlc.verify import verify_issued

PEM = serialization.Encoding.PEM
# Built from defaults alone: a developer's CERTLC_* environment must not change these tests.
SETTINGS = Settings.model_validate({})
OID = "1.3.6.1.4.1.311.21.8.5.6.7"


def snapshot(**kw) -> CertificateSnapshot:
    base = dict(vault="v", name="c", version="1", thumbprint="AA", subject="CN=a.example", sans=["DNS:a.example"],
                key={"type": "EC", "size": 256, "curve": "secp256r1"}, ekus=[], not_before="2026-01-01T00:00:00Z",
                not_after="2026-12-31T00:00:00Z", template=None, tags={})
    base.update(kw)
    return CertificateSnapshot(**base)


@pytest.mark.parametrize(
    ("template", "tags", "profile", "expected"),
    [
        pytest.param({"name": "WebServer"}, {}, CAProfile(kind="devca"), "WebServer", id="a v1 name passes through"),
        pytest.param({"oid": OID, "major": 1}, {}, CAProfile(kind="devca", template_map={OID: "WebServerV2"}), "WebServerV2",
                     id="a v2 OID maps to the template's common name"),
        pytest.param({"oid": OID}, {}, CAProfile(kind="devca"), OID, id="an unmapped v2 OID is sent as the OID"),
        pytest.param(None, {"template": " Legacy "}, CAProfile(kind="devca"), "Legacy", id="the Template tag, any case"),
        pytest.param({"name": "WebServer"}, {"Template": "Other"}, CAProfile(kind="devca"), "WebServer",
                     id="the certificate's own template wins over the tag"),
        pytest.param(None, {}, CAProfile(kind="devca", default_template="Fallback"), "Fallback", id="a profile default"),
        pytest.param({"name": "WebServer"}, {"RenewWithTemplate": "WebServer2026"}, CAProfile(kind="devca"), "WebServer2026",
                     id="the override tag wins over the certificate's template (a migration)"),
        pytest.param({"oid": OID}, {"renewwithtemplate": "1.2.3"}, CAProfile(kind="devca", template_map={"1.2.3": "New"}), "New",
                     id="the override goes through the template map"),
    ],
)
def test_template_resolution(template, tags, profile, expected) -> None:
    assert resolve_template(snapshot(template=template, tags=tags), profile, SETTINGS) == expected


def test_no_template_and_no_tag_is_refused_with_a_hint() -> None:
    with pytest.raises(InvalidInput, match="no template extension and no 'Template' tag") as info:
        resolve_template(snapshot(), CAProfile(kind="devca"), SETTINGS)
    assert info.value.reason == "TemplateMissing"


def test_desired_sans_are_a_labels_without_duplicates_and_keep_every_kind() -> None:
    snap = snapshot(sans=["DNS:biztosítás.hu", "DNS:xn--biztosts-fza2j.hu", "DNS:*.Biztosítás.hu", "IP:10.0.0.1",
                          "UPN:u@corp.example", "email:a@corp.example", "URI:spiffe://corp/x"])
    assert desired_sans(snap) == {
        "dns_names": ["xn--biztosts-fza2j.hu", "*.xn--biztosts-fza2j.hu"],
        "ip_addresses": ["10.0.0.1"], "emails": ["a@corp.example"], "upns": ["u@corp.example"],
        "uris": ["spiffe://corp/x"],
    }


def make_csr(key, cn: str, names: list[x509.GeneralName]) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_a_pending_csr_matches_only_the_same_subject_sans_and_key() -> None:
    snap = snapshot(sans=["DNS:a.example", "IP:10.0.0.1"])
    ec_key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("a.example"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]
    assert csr_mismatch(make_csr(ec_key, "a.example", names), snap) is None
    assert "subject" in csr_mismatch(make_csr(ec_key, "b.example", names), snap)
    assert "SANs differ" in csr_mismatch(make_csr(ec_key, "a.example", names[:1]), snap)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "key" in csr_mismatch(make_csr(rsa_key, "a.example", names), snap)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> DevCA:
    return DevCA(tmp_path_factory.mktemp("ca"), [TemplateSpec(name="WebServer", validity_days=90)])


def issue(ca: DevCA, csr, **kw) -> tuple[str, list[str]]:
    cert = ca.sign(csr, ca.templates[0], **kw)
    return cert.public_bytes(PEM).decode(), [c.public_bytes(PEM).decode() for c in ca.chain]


def test_verify_orders_the_chain_leaf_first_whatever_order_the_ca_used(ca: DevCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, "a.example", [x509.DNSName("a.example")])
    leaf, chain = issue(ca, csr)
    old = _snapshot("v", "c", "1", x509.load_pem_x509_certificate(leaf.encode()).public_bytes(
        serialization.Encoding.DER), {}, True)
    csr_text = csr.public_bytes(PEM).decode()
    # AD CS returns bundles in any order: give the root first and the leaf last.
    ordered = verify_issued(chain[1], [chain[0], leaf], csr_text, old)
    assert [c.subject.rfc4514_string() for c in ordered] == [
        "CN=a.example", ca.chain[0].subject.rfc4514_string(), ca.chain[1].subject.rfc4514_string()]


def test_verify_refuses_a_certificate_for_another_key(ca: DevCA) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "a.example", [x509.DNSName("a.example")])
    other = make_csr(ec.generate_private_key(ec.SECP256R1()), "a.example", [x509.DNSName("a.example")])
    leaf, chain = issue(ca, other)
    with pytest.raises(TerminalError) as info:
        verify_issued(leaf, chain, csr.public_bytes(PEM).decode(), snapshot())
    assert info.value.reason == "PublicKeyMismatch"


def test_verify_refuses_lost_sans_wrong_subject_and_expired(ca: DevCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    snap = snapshot(sans=["DNS:a.example", "DNS:b.example"])
    csr = make_csr(key, "a.example", [x509.DNSName("a.example")])
    leaf, chain = issue(ca, csr)
    with pytest.raises(TerminalError, match="lacks SANs") as info:
        verify_issued(leaf, chain, csr.public_bytes(PEM).decode(), snap)
    assert info.value.reason == "SanMismatch"
    csr2 = make_csr(key, "z.example", [x509.DNSName("a.example")])
    leaf, chain = issue(ca, csr2)
    with pytest.raises(TerminalError) as info:
        verify_issued(leaf, chain, csr2.public_bytes(PEM).decode(), snapshot())
    assert info.value.reason == "SubjectMismatch"
    now = dt.datetime.now(dt.UTC)
    leaf, chain = issue(ca, csr, not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    with pytest.raises(TerminalError) as info:
        verify_issued(leaf, chain, csr.public_bytes(PEM).decode(), snapshot())
    assert info.value.reason == "IssuedExpired"
    leaf, chain = issue(ca, csr, not_before=now + dt.timedelta(hours=2), not_after=now + dt.timedelta(days=9))
    with pytest.raises(TerminalError) as info:
        verify_issued(leaf, chain, csr.public_bytes(PEM).decode(), snapshot())
    assert info.value.reason == "IssuedNotYetValid"


def test_verify_refuses_garbage_from_the_ca(tmp_path: Path) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "a.example", [])
    with pytest.raises(TerminalError) as info:
        verify_issued("<html>Disposition message: denied</html>", [], csr.public_bytes(PEM).decode(), snapshot())
    assert info.value.reason == "CertificateUnreadable"


def test_auto_renew_lifetime_actions_become_email_for_the_unknown_issuer() -> None:
    from azure.keyvault.certificates import CertificatePolicyAction, LifetimeAction

    from certlc.vault import _manual_issuer_actions

    actions = _manual_issuer_actions([LifetimeAction(CertificatePolicyAction.auto_renew, lifetime_percentage=80),
                                      LifetimeAction(CertificatePolicyAction.email_contacts, days_before_expiry=10)])
    assert [(a.action, a.lifetime_percentage, a.days_before_expiry) for a in actions] == [
        (CertificatePolicyAction.email_contacts, 80, None), (CertificatePolicyAction.email_contacts, None, 10)]


# --- which CA renews a certificate: the vault's profile or the CaProfile tag ---------------------
def _two_ca_settings() -> Settings:
    return Settings.model_validate({
        "vaults": [{"name": "v", "url": "https://v.vault.azure.net", "ca_profile": "adcs"}],
        "ca_profiles": {"adcs": {"kind": "devca"}, "public": {"kind": "templateless-test"}},
        "devca": {"allow_real_vaults": True},
    })


def test_the_ca_profile_tag_picks_another_ca_for_one_certificate() -> None:
    settings = _two_ca_settings()
    vault = settings.vault("v")
    assert ca_profile_name(snapshot(), vault, settings) == "adcs"
    assert ca_profile_name(snapshot(tags={"caprofile": " public "}), vault, settings) == "public"
    with pytest.raises(InvalidInput, match=r"CaProfile='nope'.*configured: adcs, public") as info:
        ca_profile_name(snapshot(tags={"CaProfile": "nope"}), vault, settings)
    assert info.value.reason == "CaProfileMissing"


class _NoTemplates:
    uses_templates = False
    profile = "public"


def test_a_ca_without_templates_needs_none_and_one_with_templates_refuses_without(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from certlc.ca import registry

    registry.known_kinds()
    monkeypatch.setitem(registry._FACTORIES, "templateless-test", lambda name, profile, settings: _NoTemplates())
    settings = _two_ca_settings()
    vault = settings.vault("v")
    assert choose_ca(snapshot(tags={"CaProfile": "public"}), vault, settings) == ("public", "")
    assert choose_ca(snapshot(template={"name": "WebServer"}), vault, settings) == ("adcs", "WebServer")
    with pytest.raises(InvalidInput) as info:
        choose_ca(snapshot(), vault, settings)
    assert info.value.reason == "TemplateMissing"
    assert resolve_template(snapshot(), CAProfile(kind="devca"), SETTINGS, required=False) == ""


# --- a denial is remembered per version, template and CA profile --------------------------------
def test_a_denial_holds_back_the_same_request_until_the_window_passes(tmp_path: Path) -> None:
    log = DenialLog(tmp_path / "denials")
    at = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    log.record(Denial(vault="v", name="c", version="abc", template="WebServer", ca_profile="adcs",
                      ca_request_id="42", message="0x80094012 CERTSRV_E_TEMPLATE_DENIED", at="2026-12-01T12:00:00Z"))
    window = dt.timedelta(hours=24)
    held = log.blocking("v", "C", "ABC", "WebServer", "adcs", window, now=at + dt.timedelta(hours=1))
    assert held is not None and held.ca_request_id == "42"  # certificate names and versions: any case
    assert "certlc renew --force" in denial_message(held, window) and "2026-12-02T12:00:00Z" in denial_message(held, window)
    assert log.blocking("v", "c", "abc", "WebServer", "adcs", window, now=at + dt.timedelta(hours=25)) is None
    # Another template, CA profile or version is a new question for the CA.
    assert log.blocking("v", "c", "abc", "Other", "adcs", window, now=at) is None
    assert log.blocking("v", "c", "abc", "WebServer", "public", window, now=at) is None
    assert log.blocking("v", "c", "def", "WebServer", "adcs", window, now=at) is None


def test_a_damaged_denial_record_does_not_block_renewal(tmp_path: Path) -> None:
    log = DenialLog(tmp_path)
    log.record(Denial(vault="v", name="c", version="1", template="T", ca_profile="p", ca_request_id="", message="",
                      at="2026-12-01T00:00:00Z"))
    next(tmp_path.glob("*.json")).write_text("{not json")
    assert log.blocking("v", "c", "1", "T", "p", dt.timedelta(days=1)) is None


def test_an_acme_subject_may_be_any_validated_name_but_nothing_else(ca: DevCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    snap = snapshot(subject="CN=a.example,O=Contoso", sans=["DNS:a.example", "DNS:b.example"])
    names = [x509.DNSName("a.example"), x509.DNSName("b.example")]
    csr = make_csr(key, "b.example", names)  # the CA put the other name in the CN
    leaf, chain = issue(ca, csr)
    with pytest.raises(TerminalError) as info:
        verify_issued(leaf, chain, csr.public_bytes(PEM).decode(), snap)
    assert info.value.reason == "SubjectMismatch"  # AD CS, cfssl: the subject must stay the same
    assert verify_issued(leaf, chain, csr.public_bytes(PEM).decode(), snap, subject_from_names=True)
    stranger = make_csr(key, "evil.example", names)
    leaf, chain = issue(ca, stranger)
    with pytest.raises(TerminalError, match="names more than") as info:
        verify_issued(leaf, chain, stranger.public_bytes(PEM).decode(), snap, subject_from_names=True)
    assert info.value.reason == "SubjectMismatch"
