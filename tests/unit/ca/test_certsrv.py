"""The AD CS web enrollment connector against the certsrv simulator, and the corpus's real AD CS bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.testclient import TestClient

from certlc.ca import DispositionStatus, SigningRequest, connector_for
from certlc.ca.base import TemplateStatus
from certlc.ca.certreq import _chain_after
from certlc.ca.certsrv import CertsrvConnector, parse_certificates, parse_page, parse_template_list
from certlc.ca.certsrv_sim import approve, certsrv_app
from certlc.ca.devca import DENIED_BY_POLICY, UNSUPPORTED_TEMPLATE, DevCA
from certlc.config import TemplateSpec, load_settings
from certlc.errors import ConfigError, TerminalError, TransientError
from certlc.x509.chain import is_issued_by

ENDPOINT = "https://ca.contoso.com/certsrv"
USERS = {"CONTOSO\\svc-certlc": "S3cret-Pa55"}
CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "corpus"
V2_OID = "1.3.6.1.4.1.311.21.8.1.2.3"
TEMPLATES = [
    TemplateSpec(name="WebServer"),
    TemplateSpec(name="WebServerApproval", approval="manager"),
    TemplateSpec(name="WebServerDeny", approval="deny"),
    TemplateSpec(name="WebServerShort", oid=V2_OID, major=100, minor=4),
]


def _thumb(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - EXPECTED.json's thumbprints


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.contoso.com")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def ca(tmp_path: Path) -> DevCA:
    return DevCA(tmp_path / "ca", TEMPLATES)


@pytest.fixture
def app(ca: DevCA):  # type: ignore[no-untyped-def]
    return certsrv_app(ca, users=USERS)


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url="https://ca.contoso.com", raise_server_exceptions=False) as c:
        yield c


def _connector(client: TestClient, password: str = USERS["CONTOSO\\svc-certlc"]) -> CertsrvConnector:
    return CertsrvConnector("adcs", ENDPOINT, auth=("CONTOSO\\svc-certlc", password), client=client)


def test_issued_with_chain_leaf_to_root(client: TestClient, ca: DevCA) -> None:
    csr = _csr()
    result = _connector(client).submit(SigningRequest(csr_pem=csr, template="WebServer"))
    assert result.status is DispositionStatus.ISSUED and result.request_id.isdigit()
    leaf = x509.load_pem_x509_certificate(result.certificate_pem.encode())  # type: ignore[union-attr]
    csr_key = x509.load_pem_x509_csr(csr.encode()).public_key()
    assert leaf.public_key() == csr_key
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in result.chain_pem]
    assert chain == ca.chain  # issuing CA, then root, though the PKCS#7 SET holds root first
    assert is_issued_by(leaf, chain[0])


def test_sim_downloads_look_like_ad_cs(client: TestClient) -> None:
    page = client.post("/certsrv/certfnsh.asp", auth=("CONTOSO\\svc-certlc", "S3cret-Pa55"), data={
        "Mode": "newreq", "CertRequest": _csr(), "CertAttrib": "CertificateTemplate:WebServer",
        "TargetStoreFlags": "0", "SaveCert": "yes"})
    assert "certnew.cer?ReqID=" in page.text and "&amp;Enc=b64" in page.text
    rid = parse_page(page.text).request_id  # type: ignore[union-attr]
    p7b = client.get(f"/certsrv/certnew.p7b?ReqID={rid}&Enc=b64", auth=("CONTOSO\\svc-certlc", "S3cret-Pa55"))
    assert p7b.content.startswith(b"-----BEGIN CERTIFICATE-----\r\n") and b"\r\n" in p7b.content
    with pytest.raises(ValueError):
        x509.load_pem_x509_certificate(p7b.content)  # PKCS#7 in certificate armor, as AD CS sends it
    assert len(parse_certificates(p7b.content, "p7b")) == 3
    cer = client.get(f"/certsrv/certnew.cer?ReqID={rid}&Enc=bin", auth=("CONTOSO\\svc-certlc", "S3cret-Pa55"))
    assert cer.headers["content-type"] == "application/pkix-cert"
    x509.load_der_x509_certificate(cer.content)


def test_pending_then_approved_then_retrieved(client: TestClient, ca: DevCA) -> None:
    connector = _connector(client)
    held = connector.submit(SigningRequest(csr_pem=_csr(), template="WebServerApproval"))
    assert held.status is DispositionStatus.PENDING and held.request_id.isdigit()
    assert connector.retrieve(held.request_id).status is DispositionStatus.PENDING
    approve(ca, held.request_id)
    issued = connector.retrieve(held.request_id)
    assert issued.status is DispositionStatus.ISSUED and issued.request_id == held.request_id
    assert [x509.load_pem_x509_certificate(p.encode()) for p in issued.chain_pem] == ca.chain


def test_denied_by_policy(client: TestClient, ca: DevCA) -> None:
    connector = _connector(client)
    result = connector.submit(SigningRequest(csr_pem=_csr(), template="WebServerDeny"))
    assert result.status is DispositionStatus.DENIED
    assert result.message == DENIED_BY_POLICY and "0x80094012" in result.message
    assert result.reason == "TemplateDenied"
    again = connector.retrieve(result.request_id)
    assert again.status is DispositionStatus.DENIED and "0x80094012" in again.message


def test_unsupported_template(client: TestClient) -> None:
    result = _connector(client).submit(SigningRequest(csr_pem=_csr(), template="NoSuchTemplate"))
    assert result.status is DispositionStatus.DENIED
    assert result.reason == "TemplateNotSupported" and result.message == UNSUPPORTED_TEMPLATE


def test_unknown_request_id_is_terminal(client: TestClient) -> None:
    with pytest.raises(TerminalError, match="CERTSRV_E_NO_REQUEST"):
        _connector(client).retrieve("99999")


def test_wrong_password_is_auth_failure_without_the_password(client: TestClient) -> None:
    with pytest.raises(TerminalError) as caught:
        _connector(client, password="Wr0ng-Guess").submit(SigningRequest(csr_pem=_csr(), template="WebServer"))
    assert caught.value.reason == "CaAuthFailed"
    assert "Wr0ng-Guess" not in str(caught.value) and "S3cret" not in str(caught.value)
    assert "Basic" in str(caught.value)
    health = _connector(client, password="Wr0ng-Guess").check()
    assert not health.ok and "credentials" in health.problems[0]
    assert _connector(client).check().ok


def test_server_error_is_transient(client: TestClient, app) -> None:  # type: ignore[no-untyped-def]
    app.state.fault = 500
    with pytest.raises(TransientError):
        _connector(client).submit(SigningRequest(csr_pem=_csr(), template="WebServer"))
    app.state.fault = 503
    with pytest.raises(TransientError):
        _connector(client).retrieve("1001")


def test_network_error_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    connector = CertsrvConnector("adcs", ENDPOINT, transport=httpx.MockTransport(refuse))
    with pytest.raises(TransientError):
        connector.submit(SigningRequest(csr_pem=_csr(), template="WebServer"))


def test_garbage_html_is_terminal() -> None:
    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, html="<html><body>Welcome to the proxy login page</body></html>")

    connector = CertsrvConnector("adcs", ENDPOINT, transport=httpx.MockTransport(garbage))
    with pytest.raises(TerminalError, match="cannot read") as caught:
        connector.submit(SigningRequest(csr_pem=_csr(), template="WebServer"))
    assert caught.value.reason == "CaResponseInvalid"
    with pytest.raises(TerminalError, match="cannot read"):
        connector.retrieve("12")


def test_profile_and_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CERTSRV_PW", "S3cret-Pa55")
    settings = load_settings(state_dir=str(tmp_path), ca_profiles={
        "adcs": {"kind": "adcs-web", "endpoint": ENDPOINT,
                 "options": {"auth": "basic", "username": "svc", "password_env": "CERTSRV_PW"}},
        "ntlm": {"kind": "adcs-web", "endpoint": ENDPOINT,
                 "options": {"auth": "ntlm", "username": "svc", "password_env": "CERTSRV_PW"}},
        "nopw": {"kind": "adcs-web", "endpoint": ENDPOINT,
                 "options": {"auth": "basic", "username": "svc", "password_env": "UNSET_CERTSRV_PW"}},
    })
    connector = connector_for("adcs", settings)
    assert isinstance(connector, CertsrvConnector) and "S3cret" not in repr(connector)
    ntlm = connector_for("ntlm", settings)  # pyspnego's NTLM (tests/unit/ca/test_winauth.py)
    assert isinstance(ntlm, CertsrvConnector) and "S3cret" not in repr(ntlm) and "S3cret" not in repr(ntlm._auth)
    with pytest.raises(ConfigError, match="UNSET_CERTSRV_PW") as caught:
        connector_for("nopw", settings)
    assert "S3cret" not in str(caught.value)


# --- the corpus: bytes real AD CS sent ---------------------------------------------------------
@pytest.mark.skipif(not CORPUS.is_dir(), reason="field corpus not present")
@pytest.mark.parametrize("name", ["adcs-devops-subca-certnew-der.p7b",
                                  "derived-adcs-devops-certnew-b64-in-certificate-armor-crlf.p7b"])
def test_corpus_certnew_p7b(name: str) -> None:
    certs = parse_certificates((CORPUS / name).read_bytes(), "certnew.p7b")
    subca = parse_certificates((CORPUS / "adcs-devops-subca-der.cer").read_bytes(), "certnew.cer")[0]
    thumbs = {_thumb(c) for c in certs}
    assert thumbs == {"3E3406ED61C615FA71F125810AD250E676BC7FB7", "00BA416479CE2B308C5D02319E134FF507952F43"}
    chain = _chain_after(subca, certs)
    assert [_thumb(c) for c in chain] == ["00BA416479CE2B308C5D02319E134FF507952F43"]


@pytest.mark.skipif(not CORPUS.is_dir(), reason="field corpus not present")
def test_corpus_issued_through_connector() -> None:
    """A connector fed the corpus's real certnew.cer / certnew.p7b picks the issued certificate by key."""
    p7b = (CORPUS / "derived-adcs-devops-certnew-b64-in-certificate-armor-crlf.p7b").read_bytes()
    cer = (CORPUS / "derived-adcs-devops-subca-bom-crlf.cer").read_bytes()

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("certnew.p7b"):
            return httpx.Response(200, content=p7b, headers={"content-type": "application/x-pkcs7-certificates"})
        return httpx.Response(200, content=cer, headers={"content-type": "application/pkix-cert"})

    result = CertsrvConnector("adcs", ENDPOINT, transport=httpx.MockTransport(serve)).retrieve("2")
    assert result.status is DispositionStatus.ISSUED
    leaf = x509.load_pem_x509_certificate(result.certificate_pem.encode())  # type: ignore[union-attr]
    assert _thumb(leaf) == "3E3406ED61C615FA71F125810AD250E676BC7FB7"
    assert len(result.chain_pem) == 1


def test_parse_pages_of_real_shape() -> None:
    pending = ('<P ID=locPageTitle> <B> Certificate Pending </B>\r\n<P> Your certificate request has been '
               "received.</P>\r\n<P>Your Request Id is 42. </P>")
    assert parse_page(pending).status is DispositionStatus.PENDING  # type: ignore[union-attr]
    denied = ('Your certificate request was denied.<br>Your Request Id is 7.<br>The disposition message is '
              '"Denied by Policy Module  0x80094800, The request was for a certificate template that is not '
              'supported by the Active Directory Certificate Services policy: WebServer. ".')
    result = parse_page(denied)
    assert result is not None and result.status is DispositionStatus.DENIED and result.request_id == "7"
    assert result.reason == "TemplateNotSupported"
    issued = '<A Href="certnew.cer?ReqID=12&amp;Enc=b64">Download certificate</A>'
    assert parse_page(issued).request_id == "12"  # type: ignore[union-attr]


# --- templates: certrqxt.asp's list -------------------------------------------------------------
def test_sim_lists_the_templates_the_account_may_enrol_on(client: TestClient) -> None:
    assert client.get("/certsrv/certrqxt.asp").status_code == 401  # the same authentication as every page
    page = client.get("/certsrv/certrqxt.asp", auth=("CONTOSO\\svc-certlc", "S3cret-Pa55")).text
    assert "<Select Name=lbCertTemplate ID=lbCertTemplateID>" in page
    assert '<Option Value="E;WebServer;' in page and ">Web Server</Option>" in page
    listing = parse_template_list(page)
    assert [(t.name, t.oid, t.display) for t in listing.templates] == [
        ("WebServer", "", "Web Server"), ("WebServerApproval", "", "Web Server Approval"),
        ("WebServerShort", V2_OID, "Web Server Short")]  # WebServerDeny: no Enroll, so not offered


def test_check_templates_offered_not_offered_and_display_names(client: TestClient) -> None:
    connector = CertsrvConnector("adcs", ENDPOINT, auth=("CONTOSO\\svc-certlc", "S3cret-Pa55"), client=client,
                                 template_map={V2_OID: "WebServerShort", "Short": V2_OID})
    ok, mapped, by_oid, denied, unknown, display = connector.check_templates(
        ["WebServer", V2_OID, "Short", "WebServerDeny", "NoSuchTemplate", "Web Server"])
    assert ok.ok and "offered to CONTOSO\\svc-certlc" in ok.detail
    assert mapped.ok and mapped.ca_name == "WebServerShort"
    assert by_oid.ok and by_oid.ca_name == V2_OID  # AD CS takes the OID as well: matched on the option's OID field
    for result in (denied, unknown):  # the page cannot tell these two apart
        assert result.status is TemplateStatus.NOT_ENROLLABLE
        assert result.detail == ("not offered to CONTOSO\\svc-certlc: it does not exist on this CA or the account "
                                 "lacks Enroll permission")
        assert "grant Enroll on the template to CONTOSO\\svc-certlc" in result.action
    assert display.status is TemplateStatus.UNKNOWN and "'WebServer'" in display.action
    assert "common name, not the display name" in display.action


def test_check_templates_with_refused_credentials_raises_once(client: TestClient) -> None:
    with pytest.raises(TerminalError) as caught:
        _connector(client, password="Wr0ng-Guess").check_templates(["WebServer", "Other"])
    assert caught.value.reason == "CaAuthFailed" and "Wr0ng-Guess" not in str(caught.value)


# Real pages differ from the simulator's: tag and attribute case, attribute order, quotes,
# character references, a missing </Option>, and other <select>s (the CSP list) on the page.
REAL_WORLD = """<html><body><form name=UIForm>
<select name="lbCSP"><option value="1">Microsoft Enhanced Cryptographic Provider v1.0</select>
<TD><SELECT id='lbCertTemplateID' NAME='lbCertTemplate' OnChange="handleTemplateChange();">
  <option selected value='E;WebServer;1;0;0;16;1;0;Microsoft RSA SChannel Cryptographic Provider;;;;;Web Server'>Web Server
  <OPTION VALUE="O;Smith&amp;Sons;2;0;0;0;0;0;;1.3.6.1.4.1.311.21.8.9.9;100;1;2;Smith &amp; Sons TLS">Smith &amp; Sons TLS</OPTION>
  <Option Value=E&#59;Bare&#59;1>Bare</Option>
  <option value="JustAName">Just A Name</option>
</SELECT></TD></form></body></html>"""


def test_template_list_parsing_is_robust_to_real_world_html() -> None:
    listing = parse_template_list(REAL_WORLD)
    assert listing.found and not listing.error
    assert [(t.name, t.oid, t.display) for t in listing.templates] == [
        ("WebServer", "", "Web Server"),
        ("Smith&Sons", "1.3.6.1.4.1.311.21.8.9.9", "Smith & Sons TLS"),
        ("Bare", "", "Bare"),
        ("JustAName", "", "Just A Name"),
    ]


@pytest.mark.parametrize(("page", "found", "names", "error"), [
    ('<Select Name=lbCertTemplate ID=lbCertTemplateID>\r\n\t\t\t<Option Value="X">(No templates found!)</Option>\r\n'
     "\t\t</Select>", True, [], ""),
    ('<Select Name=lbCertTemplate><Option Value="X">(Unexpected Error 0x80070005)</Option></Select>', True, [],
     "(Unexpected Error 0x80070005)"),
    ("<html><body>Welcome to the proxy login page</body></html>", False, [], ""),
])
def test_template_list_placeholders_and_pages_without_a_list(page: str, found: bool, names: list[str],
                                                             error: str) -> None:
    listing = parse_template_list(page)
    assert (listing.found, [t.name for t in listing.templates], listing.error) == (found, names, error)


def test_check_templates_when_the_page_cannot_tell() -> None:
    pages = iter(['<Select Name=lbCertTemplate><Option Value="X">(Unexpected Error 0x8007054B)</Option></Select>',
                  "<html><body>Standalone CA</body></html>",
                  '<Select Name=lbCertTemplate><Option Value="X">(No templates found!)</Option></Select>'])

    def serve(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/certsrv/certrqxt.asp"
        return httpx.Response(200, html=next(pages))

    connector = CertsrvConnector("adcs", ENDPOINT, transport=httpx.MockTransport(serve), account="svc")
    [error] = connector.check_templates(["WebServer"])
    assert error.status is TemplateStatus.UNVERIFIABLE and "0x8007054B" in error.detail
    [standalone] = connector.check_templates(["WebServer"])
    assert standalone.status is TemplateStatus.UNVERIFIABLE and "no certificate template list" in standalone.detail
    [nothing] = connector.check_templates(["WebServer"])
    assert nothing.status is TemplateStatus.NOT_ENROLLABLE and "not offered to svc" in nothing.detail


def test_profile_names_the_account_for_advice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CERTSRV_PW", "S3cret-Pa55")
    settings = load_settings(state_dir=str(tmp_path), ca_profiles={"adcs": {
        "kind": "adcs-web", "endpoint": ENDPOINT,
        "options": {"auth": "basic", "username": "CONTOSO\\svc-certlc", "password_env": "CERTSRV_PW"}}})
    connector = connector_for("adcs", settings)
    assert isinstance(connector, CertsrvConnector) and connector.account == "CONTOSO\\svc-certlc"
