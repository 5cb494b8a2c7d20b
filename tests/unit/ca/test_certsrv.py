"""The AD CS web enrollment connector against the certsrv simulator, and the corpus's real AD CS bytes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.testclient import TestClient

from certlc.ca import DispositionStatus, SigningRequest, connector_for
from certlc.ca.base import Health, TemplateStatus
from certlc.ca.certreq import _chain_after
from certlc.ca.certsrv import CertsrvConnector, is_home_page, parse_certificates, parse_page, parse_template_list
from certlc.ca.certsrv_sim import approve, certsrv_app
from certlc.ca.devca import DENIED_BY_POLICY, UNSUPPORTED_TEMPLATE, DevCA
from certlc.config import Settings, TemplateSpec, load_settings
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


# --- check(): is it AD CS web enrollment at all? -----------------------------------------------
NGINX = ("<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1>"
         '<p>For online documentation please refer to <a href="http://nginx.org/">nginx.org</a>.</p></body></html>')
IIS_DEFAULT = ('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"><html><head><title>IIS Windows Server'
               '</title></head><body><div id="container"><a href="https://go.microsoft.com/fwlink/?linkid=66138&amp;'
               'clcid=0x409"><img src="iisstart.png" alt="IIS" width="960" height="600" /></a></div></body></html>')
LOGIN_FORM = ('<html><head><title>Sign in</title></head><body><form action="/login" method="post">'
              '<input name="user"><input type="password" name="password"></form></body></html>')
# A German AD CS (title and link texts translated, the .asp names not), attribute case and quoting
# as real pages vary them, and the Windows Server 2003 enterprise variant (certrqad.asp).
GERMAN_HOME = ("<HTML><Head><Title>Microsoft Active Directory-Zertifikatdienste</Title></Head><Body>"
               "<P><B> Willkommen </B><Table><TR><TD><A HREF='certrqus.asp'>Ein Zertifikat anfordern</A></TD></TR>"
               "<TR><TD><a href=certckpn.asp>Status ausstehender Zertifikatanforderungen anzeigen</a></TD></TR>"
               '<TR><TD><A Href="certcarc.asp">Download eines Zertifizierungsstellenzertifikats, einer '
               "Zertifikatkette oder einer Sperrliste</A></TD></TR></Table></Body></HTML>")
ENTERPRISE_HOME = ('<A Href="certrqad.asp"><Font Face="Arial">Request a certificate</Font></A>'
                   '<A Href="/certsrv/certckpn.asp">View the status</A><A Href="certcarc.asp?x=1">Download</A>')


def _serving(status: int, body: str = "", **headers: str) -> CertsrvConnector:
    def serve(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/certsrv/"
        return httpx.Response(status, text=body, headers={"content-type": "text/html; charset=utf-8", **headers})

    return CertsrvConnector("adcs", ENDPOINT, transport=httpx.MockTransport(serve))


@pytest.mark.parametrize(("status", "body", "headers", "what"), [
    (200, NGINX, {}, "HTTP 200, a page titled 'Welcome to nginx!'"),
    (200, IIS_DEFAULT, {}, "HTTP 200, a page titled 'IIS Windows Server'"),
    (200, LOGIN_FORM, {}, "HTTP 200, a page titled 'Sign in'"),
    (200, "<html><body>It works!</body></html>", {}, "HTTP 200, a page without the certsrv links"),
    (200, '{"status": "up"}', {"content-type": "application/json"}, "HTTP 200, application/json"),
    (302, "", {"location": "https://login.contoso.com/sso?return=/certsrv/"},
     "HTTP 302, a redirect to 'https://login.contoso.com/sso?return=/certsrv/'"),
    # one certsrv link alone is not the home page
    (200, '<html><a href="certcarc.asp">CA certificate</a></html>', {}, "HTTP 200, a page without the certsrv links"),
], ids=["nginx", "iis-default-site", "login-form", "it-works", "json", "login-redirect", "one-link"])
def test_check_is_a_problem_for_a_server_that_is_not_certsrv(status: int, body: str, headers: dict[str, str],
                                                             what: str) -> None:
    health = _serving(status, body, **headers).check()
    assert not health.ok
    assert health.problems == [f"the web server at {ENDPOINT}/ answered, but not with AD CS web enrollment pages "
                               f"({what}); check the endpoint (it ends in /certsrv)"]


@pytest.mark.parametrize("page", [GERMAN_HOME, ENTERPRISE_HOME], ids=["german", "enterprise-2003"])
def test_check_knows_certsrv_by_its_links_in_any_language(page: str) -> None:
    assert is_home_page(page)
    assert _serving(200, page).check() == Health(ok=True)


def test_the_simulators_home_page_is_a_real_ones(client: TestClient) -> None:
    assert client.get("/certsrv/").status_code == 401
    page = client.get("/certsrv/", auth=("CONTOSO\\svc-certlc", "S3cret-Pa55")).text
    assert "<Title>Microsoft Active Directory Certificate Services</Title>" in page
    for link in ("certrqus.asp", "certckpn.asp", "certcarc.asp"):
        assert f'<A Href="{link}">' in page
    assert is_home_page(page) and _connector(client).check().ok


# --- profile: credentials and the endpoint's scheme ---------------------------------------------
def _settings(tmp_path: Path, endpoint: str = ENDPOINT, **options: object) -> Settings:
    return load_settings(state_dir=str(tmp_path / "state"), ca_profiles={"adcs": {
        "kind": "adcs-web", "endpoint": endpoint, "options": {"username": "CONTOSO\\svc-certlc", **options}}})


def test_basic_over_plain_http_is_refused_unless_on_loopback(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setenv("CERTSRV_PW", "S3cret-Pa55")
    with pytest.raises(ConfigError) as caught:
        connector_for("adcs", _settings(tmp_path, "http://ca01.contoso.com/certsrv", auth="basic",
                                        password_env="CERTSRV_PW"))
    message = str(caught.value)
    assert caught.value.reason == "CaProfileInvalid" and "S3cret" not in message
    assert "clear text" in message and "https://" in message
    for endpoint in ("http://127.0.0.1:8080/certsrv", "http://localhost/certsrv", "http://[::1]/certsrv",
                     "https://ca01.contoso.com/certsrv"):
        assert isinstance(connector_for("adcs", _settings(tmp_path, endpoint, auth="basic", password_env="CERTSRV_PW")),
                          CertsrvConnector)


def test_client_certificate_over_plain_http_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="client_certificate needs an https:// endpoint"):
        connector_for("adcs", _settings(tmp_path, "http://ca01.contoso.com/certsrv", auth="client_certificate",
                                        client_certificate=str(tmp_path / "c.pem")))


def test_windows_auth_over_plain_http_is_warned_about_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CERTSRV_PW", "S3cret-Pa55")
    settings = _settings(tmp_path, "http://ca02.contoso.com/certsrv", auth="ntlm", password_env="CERTSRV_PW")
    with caplog.at_level(logging.WARNING, logger="certlc.ca.certsrv"):
        assert isinstance(connector_for("adcs", settings), CertsrvConnector)
        assert isinstance(connector_for("adcs", settings), CertsrvConnector)
        connector_for("adcs", _settings(tmp_path, "https://ca02.contoso.com/certsrv", auth="ntlm",
                                        password_env="CERTSRV_PW"))
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "auth ntlm over plain http://" in warning and "https://" in warning and "relayed" in warning
    assert "S3cret" not in warning


@pytest.mark.parametrize(("endpoint", "words"), [
    ("ftp://ca01.contoso.com/certsrv", "uses ftp://, and certlc calls CAs over https:// or http:// only"),
    ("not a url", "is not a URL (it does not start with https:// or http://)"),
    ("ca01.contoso.com/certsrv", "is not a URL (it does not start with https:// or http://)"),
    ("https:///certsrv", "names no host"),
    ("https://ca01.contoso.com:44x/certsrv", "has a port that is not a number from 0 to 65535"),
], ids=["ftp", "words", "no-scheme", "no-host", "bad-port"])
def test_an_endpoint_that_is_not_an_http_url_says_what_is_wrong(tmp_path: Path, endpoint: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        connector_for("adcs", _settings(tmp_path, endpoint, auth="client_certificate"))
    assert str(caught.value) == (f"CA profile 'adcs' (adcs-web): endpoint {endpoint!r} {words}; it needs to be "
                                 "the certsrv URL, e.g. https://ca.contoso.com/certsrv")


def _secret(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "certsrv-password"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640])
def test_password_file_is_read_without_its_newline(client: TestClient, tmp_path: Path, mode: int) -> None:
    path = _secret(tmp_path, "S3cret-Pa55\n", mode)
    connector = connector_for("adcs", _settings(tmp_path, auth="basic", password_file=str(path)))
    assert isinstance(connector, CertsrvConnector) and "S3cret" not in repr(connector)
    connector._client = client  # the simulator, which knows this password
    assert connector.check().ok
    path.write_text("Wr0ng-Guess\r\n")
    wrong = connector_for("adcs", _settings(tmp_path, auth="basic", password_file=str(path)))
    wrong._client = client  # type: ignore[attr-defined]
    assert not wrong.check().ok


@pytest.mark.parametrize(("setup", "words"), [
    (lambda p: p.chmod(0o644), "is readable by every user on this machine (mode 0644); make it readable by "
                               "certlc's account only: chmod 600"),
    (lambda p: p.chmod(0o604), "is readable by every user on this machine (mode 0604)"),
    (lambda p: p.unlink(), "cannot be read: No such file or directory"),
    (lambda p: p.write_text("\n"), "is empty"),
    (lambda p: p.write_text("CONTOSO\\svc-certlc\nS3cret-Pa55\n"), "holds more than one line"),
    (lambda p: (p.unlink(), p.mkdir()), "is not a regular file"),
], ids=["world-readable", "others-only", "missing", "empty", "two-lines", "directory"])
def test_password_file_problems_are_said_in_plain_words(tmp_path: Path, setup: Any, words: str) -> None:
    path = _secret(tmp_path, "S3cret-Pa55\n")
    setup(path)
    with pytest.raises(ConfigError) as caught:
        connector_for("adcs", _settings(tmp_path, auth="basic", password_file=str(path)))
    assert str(caught.value).startswith(f"CA profile 'adcs': options.password_file {str(path)!r} ")
    assert words in str(caught.value) and "S3cret" not in str(caught.value)
    assert caught.value.reason == "CaProfileInvalid"


def test_password_env_and_password_file_are_one_or_the_other(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setenv("CERTSRV_PW", "S3cret-Pa55")
    path = _secret(tmp_path, "S3cret-Pa55\n")
    with pytest.raises(ConfigError, match=r"password_env and options\.password_file both name the password; keep one"):
        connector_for("adcs", _settings(tmp_path, auth="ntlm", password_env="CERTSRV_PW", password_file=str(path)))
    with pytest.raises(ConfigError, match=r"options\.password_env must name .* \(or options\.password_file"):
        connector_for("adcs", _settings(tmp_path, auth="basic"))


# --- transport: a scheme that does not match what the server speaks ----------------------------
@pytest.mark.parametrize(("endpoint", "error", "hint"), [
    ("https://ca.contoso.com/certsrv", httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"),
     "(the server answers plain HTTP: use http:// or the HTTPS port)"),
    ("http://ca.contoso.com/certsrv", httpx.RemoteProtocolError("Server disconnected without sending a response."),
     "(the server may expect HTTPS: use https://)"),
    ("http://ca.contoso.com/certsrv", httpx.ReadError("[Errno 104] Connection reset by peer"),
     "(the server may expect HTTPS: use https://)"),
], ids=["https-to-plain-http", "http-to-https-disconnect", "http-to-https-reset"])
def test_a_scheme_mismatch_gets_a_hint(endpoint: str, error: httpx.HTTPError, hint: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        error.request = request
        raise error

    connector = CertsrvConnector("adcs", endpoint, transport=httpx.MockTransport(fail))
    with pytest.raises(TransientError) as caught:
        connector.submit(SigningRequest(csr_pem=_csr(), template="WebServer"))
    assert caught.value.reason == "CAUnavailable"  # the reason code is the same as before
    assert str(caught.value).endswith(f"cannot be reached: {error} {hint}")
    assert connector.check().problems == [str(caught.value)]


@pytest.mark.parametrize(("endpoint", "error"), [
    ("http://ca.contoso.com/certsrv", httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number")),
    ("https://ca.contoso.com/certsrv", httpx.RemoteProtocolError("Server disconnected without sending a response.")),
    ("https://ca.contoso.com/certsrv", httpx.ConnectError("[Errno 111] Connection refused")),
], ids=["no-tls-on-http", "disconnect-on-https", "refused"])
def test_no_scheme_hint_where_the_scheme_is_not_the_matter(endpoint: str, error: httpx.HTTPError) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        error.request = request
        raise error

    health = CertsrvConnector("adcs", endpoint, transport=httpx.MockTransport(fail)).check()
    assert not health.ok and "use http" not in health.problems[0] and health.problems[0].endswith(str(error))
