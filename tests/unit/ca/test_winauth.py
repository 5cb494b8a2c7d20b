"""Windows Authentication (RFC 4559 on pyspnego) for the adcs-web connector, in process.

NTLM runs for real against the certsrv simulator's pyspnego acceptor. In-process transports have
no TCP connection: Starlette's TestClient reports one fixed client address per client, which the
simulator takes as the connection, so a second TestClient with another ``client=`` is "another
connection". Kerberos is covered here at the token level (a fake pyspnego context); the real
thing runs against a local KDC in tests/e2e/test_certsrv_kerberos_e2e.py.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import spnego
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.testclient import TestClient

from certlc.ca import DispositionStatus, SigningRequest, connector_for, winauth
from certlc.ca import certsrv as certsrv_module
from certlc.ca.certsrv import CertsrvConnector
from certlc.ca.certsrv_sim import certsrv_app
from certlc.ca.devca import DevCA
from certlc.ca.winauth import WindowsAuth, channel_bindings, offered, split_spn, tls_server_end_point
from certlc.config import TemplateSpec, load_settings
from certlc.errors import ConfigError, TerminalError

ENDPOINT = "https://ca.contoso.com/certsrv"
USER = "CONTOSO\\svc-certlc"
PASSWORD = "S3cret-NTLM-Pa55"
WRONG = "not-the-Pa55word"
# The certsrv home page's task links: what check() recognises AD CS web enrollment by.
HOME = ('<html><a href="certrqus.asp">Request a certificate</a> <a href="certckpn.asp">Pending</a> '
        '<a href="certcarc.asp">CA certificate</a></html>')


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.contoso.com")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca.contoso.com")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))


@pytest.fixture
def ca(tmp_path: Path) -> DevCA:
    return DevCA(tmp_path / "ca", [TemplateSpec(name="WebServer")])


@pytest.fixture
def site(ca: DevCA) -> Callable[..., Starlette]:
    def make(**kwargs: Any) -> Starlette:
        return certsrv_app(ca, users={USER: PASSWORD}, **kwargs)
    return make


@pytest.fixture
def clients() -> Iterator[Callable[..., TestClient]]:
    """TestClients, each its own "connection" (client address) to the simulator."""
    opened: list[TestClient] = []

    def make(app: Starlette, port: int = 50001) -> TestClient:
        client = TestClient(app, base_url="https://ca.contoso.com", client=("10.0.0.7", port),
                            raise_server_exceptions=False)
        opened.append(client.__enter__())
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _connector(client: httpx.Client, protocol: str = "ntlm", password: str = PASSWORD,
               username: str = USER) -> CertsrvConnector:
    return CertsrvConnector("adcs", ENDPOINT, client=client, account=username,
                            auth=WindowsAuth(protocol, username=username, password=password))  # type: ignore[arg-type]


# --- NTLM for real against the simulator's acceptor --------------------------------------------
@pytest.mark.parametrize(("site_auth", "protocol"), [
    ("ntlm", "ntlm"),            # IIS with the NTLM provider only
    ("negotiate", "negotiate"),  # IIS's default providers; no Kerberos here, so SPNEGO picks NTLM
    ("negotiate", "ntlm"),       # a raw NTLM handshake under the NTLM scheme IIS also offers
], ids=["ntlm-site-ntlm-client", "negotiate-site-negotiate-client", "negotiate-site-ntlm-client"])
def test_right_password_is_issued(site: Callable[..., Starlette], clients: Callable[..., TestClient],
                                  site_auth: str, protocol: str) -> None:
    app = site(auth=site_auth)
    result = _connector(clients(app), protocol).submit(SigningRequest(csr_pem=_csr(), template="WebServer"))
    assert result.status is DispositionStatus.ISSUED and result.certificate_pem
    [(connection, _scheme, principal, negotiated)] = app.state.logons  # one handshake, then the connection is in
    assert connection == ("10.0.0.7", 50001) and principal == USER and negotiated == "ntlm"


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_wrong_password_is_auth_failed_without_the_password(site: Callable[..., Starlette],
                                                            clients: Callable[..., TestClient],
                                                            protocol: str) -> None:
    app = site(auth="negotiate")
    connector = _connector(clients(app), protocol, password=WRONG)
    with pytest.raises(TerminalError) as caught:
        connector.submit(SigningRequest(csr_pem=_csr(), template="WebServer"))
    error = caught.value
    assert error.reason == "CaAuthFailed" and error.context["profile"] == "adcs"
    text = f"{error} {error!r} {error.context!r} {connector!r} {connector._auth!r}"
    assert "HTTP 401" in str(error) and "Negotiate, NTLM" in str(error) and USER in str(error)
    assert WRONG not in text and PASSWORD not in text
    assert app.state.logons == []


def test_simulator_answers_like_iis(site: Callable[..., Starlette], clients: Callable[..., TestClient]) -> None:
    client = clients(site(auth="negotiate"))
    bare = client.get("/certsrv/")
    assert bare.status_code == 401 and bare.headers.get_list("www-authenticate") == ["Negotiate", "NTLM"]
    ntlm_only = clients(site(auth="ntlm"), 50002).get("/certsrv/")
    assert ntlm_only.headers.get_list("www-authenticate") == ["NTLM"]
    # The first leg gets the NTLM CHALLENGE under the scheme it came in; garbage is refused bare.
    context = spnego.client(USER, PASSWORD, protocol="ntlm")
    first = client.get("/certsrv/", headers={"Authorization": f"NTLM {base64.b64encode(context.step()).decode()}"})
    assert first.status_code == 401 and offered(first)["NTLM"][:8] == b"NTLMSSP\x00"  # type: ignore[index]
    junk = client.get("/certsrv/", headers={"Authorization": "NTLM !!!"})
    assert junk.status_code == 401 and offered(junk) == {"Negotiate": None, "NTLM": None}


def _legs(first: TestClient, second: TestClient, password: str = PASSWORD,
          bindings: Any = None) -> httpx.Response:
    """NTLM NEGOTIATE on ``first``, AUTHENTICATE on ``second``: what arrives on the second."""
    context = spnego.client(USER, password, protocol="ntlm", channel_bindings=bindings)
    challenge = first.get("/certsrv/", headers={"Authorization": f"NTLM {base64.b64encode(context.step()).decode()}"})
    token = context.step(offered(challenge)["NTLM"])
    assert token is not None
    return second.get("/certsrv/", headers={"Authorization": f"NTLM {base64.b64encode(token).decode()}"})


def test_ntlm_is_bound_to_its_connection(site: Callable[..., Starlette], clients: Callable[..., TestClient]) -> None:
    app = site(auth="ntlm")
    one, other = clients(app, 50001), clients(app, 50002)
    assert _legs(one, other).status_code == 401  # the challenge lives with the first connection
    assert _legs(one, one).status_code == 200
    assert one.get("/certsrv/").status_code == 200  # the connection stays authenticated (IIS default)
    assert other.get("/certsrv/").status_code == 401  # another connection does not


def test_channel_binding_required_by_the_simulator(site: Callable[..., Starlette],
                                                   clients: Callable[..., TestClient]) -> None:
    served = _certificate()
    der = served.public_bytes(serialization.Encoding.DER)
    other = _certificate().public_bytes(serialization.Encoding.DER)
    client = clients(site(auth="ntlm", channel_binding_certificate=served))
    assert _legs(client, client, bindings=channel_bindings(der)).status_code == 200
    fresh = clients(client.app, 50002)  # type: ignore[arg-type]
    assert _legs(fresh, fresh, bindings=channel_bindings(other)).status_code == 401  # another server's certificate
    fresh = clients(client.app, 50003)  # type: ignore[arg-type]
    assert _legs(fresh, fresh, bindings=None).status_code == 401  # no binding at all
    # In process there is no TLS, so the connector has no certificate to bind: refused like IIS would.
    with pytest.raises(TerminalError) as caught:
        _connector(clients(client.app, 50004)).submit(SigningRequest(csr_pem=_csr(), template="WebServer"))  # type: ignore[arg-type]
    assert caught.value.reason == "CaAuthFailed"


@pytest.mark.parametrize(("signed_with", "expected"), [
    (hashes.SHA256(), hashes.SHA256()),
    (hashes.SHA384(), hashes.SHA384()),
    (hashes.SHA1(), hashes.SHA256()),  # noqa: S303 - RFC 5929 §4.1: MD5 and SHA-1 become SHA-256
    (None, hashes.SHA256()),  # Ed25519: no separate hash
], ids=["sha256", "sha384-kept", "sha1-becomes-sha256", "ed25519"])
def test_tls_server_end_point_hash(monkeypatch: pytest.MonkeyPatch, signed_with: hashes.HashAlgorithm | None,
                                   expected: hashes.HashAlgorithm) -> None:
    der = _certificate().public_bytes(serialization.Encoding.DER)
    # This OpenSSL refuses to sign with SHA-1: claim the signature's hash instead of making one.
    real = x509.load_der_x509_certificate(der)
    stub = type("Stub", (), {"signature_hash_algorithm": signed_with})()
    monkeypatch.setattr(winauth.x509, "load_der_x509_certificate", lambda data: stub if data == der else real)
    digest = hashes.Hash(expected)
    digest.update(der)
    assert tls_server_end_point(der) == b"tls-server-end-point:" + digest.finalize()


def test_www_authenticate_parsing() -> None:
    token = base64.b64encode(b"\x60\x01tok").decode()
    response = httpx.Response(401, headers=[("WWW-Authenticate", 'Basic realm="a, b"'),
                                            ("WWW-Authenticate", f"Negotiate {token}, NTLM"),
                                            ("WWW-Authenticate", "Bearer")])
    assert offered(response) == {"Negotiate": b"\x60\x01tok", "NTLM": None}
    assert offered(httpx.Response(401, headers={"WWW-Authenticate": "negotiate"})) == {"Negotiate": None}


@pytest.mark.parametrize(("spn", "expected"), [
    ("HTTP/ca01.contoso.com", ("HTTP", "ca01.contoso.com")),
    ("HTTP/ca01.contoso.com@CONTOSO.COM", ("HTTP", "ca01.contoso.com")),
    ("HTTP@ca01.contoso.com", ("HTTP", "ca01.contoso.com")),
])
def test_spn_forms(spn: str, expected: tuple[str, str]) -> None:
    assert split_spn(spn) == expected
    assert WindowsAuth("kerberos", spn=spn).service_principal("other.host") == expected
    assert WindowsAuth("kerberos").service_principal("ca02.contoso.com") == ("HTTP", "ca02.contoso.com")


# --- Kerberos at the token level (a fake pyspnego context) -------------------------------------
class FakeContext:
    """Stands for pyspnego's Kerberos context: one AP-REQ out, one AP-REP in."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.complete = False
        self.steps: list[bytes | None] = []

    def step(self, token: bytes | None = None) -> bytes | None:
        self.steps.append(token)
        if self.fail is not None:
            raise self.fail
        if token is None:
            return b"\x60AP-REQ"
        if token != b"\xa1AP-REP":
            raise spnego.exceptions.InvalidTokenError(context_msg="Invalid mutual authentication token")
        self.complete = True
        return None


class FakeKerberos:
    """``spnego.client`` replaced: records its arguments, hands out FakeContexts (failing if told)."""

    def __init__(self) -> None:
        self.made: list[tuple[dict[str, Any], FakeContext]] = []
        self.fail: Exception | None = None

    def client(self, username: Any = None, password: Any = None, **kwargs: Any) -> FakeContext:
        context = FakeContext(self.fail)
        self.made.append(({"username": username, "password": password, **kwargs}, context))
        return context


@pytest.fixture
def fake_kerberos(monkeypatch: pytest.MonkeyPatch) -> FakeKerberos:
    fake = FakeKerberos()
    monkeypatch.setattr(spnego, "client", fake.client)
    monkeypatch.setattr(certsrv_module, "_kerberos_available", lambda: True)
    return fake


AP_REQ = "Negotiate " + base64.b64encode(b"\x60AP-REQ").decode()


def _kerberos_server(final: str | None, seen: list[str]) -> httpx.MockTransport:
    """A Windows server to Kerberos: 401 offers, then 200 (with ``final`` as its token) for the AP-REQ.
    ``seen`` gets each request's Authorization header (httpx reuses one request object across legs)."""
    def handler(request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization", "")
        seen.append(header)
        if header != AP_REQ:
            return httpx.Response(401, headers=[("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")])
        headers = {"WWW-Authenticate": f"Negotiate {final}"} if final else {}
        return httpx.Response(200, headers=headers, html=HOME)
    return httpx.MockTransport(handler)


@pytest.mark.parametrize("auth_kind", ["kerberos", "negotiate"])
def test_kerberos_from_the_ticket_cache_with_mutual_auth(fake_kerberos: FakeKerberos,
                                                         tmp_path: Path, auth_kind: str) -> None:
    settings = load_settings(state_dir=str(tmp_path), ca_profiles={"adcs": {
        "kind": "adcs-web", "endpoint": ENDPOINT, "options": {"auth": auth_kind, "spn": "HTTP/ca01.contoso.com"}}})
    connector = connector_for("adcs", settings)
    assert isinstance(connector, CertsrvConnector) and connector.account == "the worker's Kerberos account"
    seen: list[str] = []
    connector._client = httpx.Client(transport=_kerberos_server(base64.b64encode(b"\xa1AP-REP").decode(), seen))
    assert connector.check().ok
    [(arguments, context)] = fake_kerberos.made
    assert arguments["username"] is None and arguments["password"] is None  # the cache: no credentials of ours
    assert arguments["hostname"] == "ca01.contoso.com" and arguments["service"] == "HTTP"
    assert arguments["protocol"] == auth_kind and arguments["channel_bindings"] is None  # no TLS in process
    assert context.complete and context.steps == [None, b"\xa1AP-REP"]  # the server's AP-REP was verified
    assert [header[:9] for header in seen] == ["", "Negotiate"]


def test_a_server_failing_mutual_auth_is_refused(fake_kerberos: FakeKerberos) -> None:
    seen: list[str] = []
    connector = CertsrvConnector("adcs", ENDPOINT, auth=WindowsAuth("kerberos"),
                                 transport=_kerberos_server(base64.b64encode(b"\xa1forged").decode(), seen))
    with pytest.raises(TerminalError) as caught:
        connector.submit(SigningRequest(csr_pem=_csr(), template="WebServer"))
    assert caught.value.reason == "MutualAuthFailed" and "mutual authentication" in str(caught.value)
    assert caught.value.context["profile"] == "adcs"


def test_a_final_answer_without_token_is_accepted(fake_kerberos: FakeKerberos) -> None:
    connector = CertsrvConnector("adcs", ENDPOINT, auth=WindowsAuth("kerberos"), transport=_kerberos_server(None, []))
    assert connector.check().ok


@pytest.mark.parametrize(("minor", "reason", "words"), [
    ("No Kerberos credentials available (default cache: FILE:/tmp/krb5cc_0)", "KerberosNoCredentials",
     ["kinit", "keytab", "KRB5_CLIENT_KTNAME"]),
    ("Cannot contact any KDC for realm 'CONTOSO.COM'", "KerberosKdcUnreachable", ["krb5.conf", "port 88"]),
    ("Server HTTP/ca01.contoso.com@CONTOSO.COM not found in Kerberos database", "KerberosSpnUnknown",
     ["setspn -S HTTP/ca01.contoso.com", "options.spn"]),
], ids=["no-ticket", "no-kdc", "unknown-spn"])
def test_kerberos_setup_problems_name_the_fix(fake_kerberos: FakeKerberos, minor: str, reason: str, words: list[str]) -> None:
    fake_kerberos.fail = spnego.exceptions.SpnegoError(spnego.exceptions.ErrorCode.failure, context_msg=f"Minor (2529639053): {minor}")
    connector = CertsrvConnector("adcs", "https://ca01.contoso.com/certsrv", auth=WindowsAuth("kerberos"),
                                 transport=_kerberos_server(None, []))
    with pytest.raises(TerminalError) as caught:
        connector.submit(SigningRequest(csr_pem=_csr(), template="WebServer"))
    assert caught.value.reason == reason and caught.value.context["profile"] == "adcs"
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_a_leg_that_lands_on_another_connection_starts_over(
        fake_kerberos: FakeKerberos) -> None:
    # Connection A answers the first 401; the token leg comes back on connection B (A was closed),
    # where a Windows server holds no context: the flow starts again once, on B.
    streams = {1: "A", 2: "B"}
    handled: list[httpx.Request] = []

    class Stream:
        def __init__(self, name: str) -> None:
            self.name = name

        def get_extra_info(self, info: str) -> None:
            return None

    objects = {name: Stream(name) for name in "AB"}

    def handler(request: httpx.Request) -> httpx.Response:
        handled.append(request)
        stream = objects[streams.get(len(handled), "B")]
        token_leg = request.headers.get("authorization", "").startswith("Negotiate ")
        if token_leg and len(handled) > 2:
            return httpx.Response(200, html=HOME, extensions={"network_stream": stream})
        return httpx.Response(401, headers={"WWW-Authenticate": "Negotiate"}, extensions={"network_stream": stream})

    connector = CertsrvConnector("adcs", ENDPOINT, auth=WindowsAuth("kerberos"), transport=httpx.MockTransport(handler))
    assert connector.check().ok
    assert len(fake_kerberos.made) == 2 and len(handled) == 3  # bare, token (moved: 401), token again -> 200


def test_a_refusal_after_the_token_is_auth_failed(fake_kerberos: FakeKerberos) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers=[("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")])

    connector = CertsrvConnector("adcs", ENDPOINT, auth=WindowsAuth("kerberos"), account="the worker's Kerberos account",
                                 transport=httpx.MockTransport(handler))
    with pytest.raises(TerminalError) as caught:
        connector.submit(SigningRequest(csr_pem=_csr(), template="WebServer"))
    assert caught.value.reason == "CaAuthFailed" and "klist" in str(caught.value)


# --- profile options --------------------------------------------------------------------------
def _profile(tmp_path: Path, **options: Any) -> dict[str, Any]:
    return {"kind": "adcs-web", "endpoint": ENDPOINT, "options": options}


def test_profile_auth_kinds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CERTSRV_PW", PASSWORD)
    settings = load_settings(state_dir=str(tmp_path), ca_profiles={
        "ntlm": _profile(tmp_path, auth="ntlm", username=USER, password_env="CERTSRV_PW"),
        "neg": _profile(tmp_path, auth="Negotiate", username="svc-certlc@CONTOSO.COM", password_env="CERTSRV_PW"),
        "ntlm-nopw": _profile(tmp_path, auth="ntlm", username=USER),
        "pw-nouser": _profile(tmp_path, auth="negotiate", password_env="CERTSRV_PW"),
        "bad-spn": _profile(tmp_path, auth="kerberos", spn="ca01.contoso.com"),
        "basic-spn": _profile(tmp_path, auth="basic", username=USER, password_env="CERTSRV_PW", spn="HTTP/ca01"),
    })
    ntlm = connector_for("ntlm", settings)
    assert isinstance(ntlm, CertsrvConnector) and isinstance(ntlm._auth, WindowsAuth)
    assert ntlm._auth.protocol == "ntlm" and ntlm.account == USER
    assert PASSWORD not in repr(ntlm) and PASSWORD not in repr(ntlm._auth)
    neg = connector_for("neg", settings)
    assert isinstance(neg, CertsrvConnector) and isinstance(neg._auth, WindowsAuth) and neg._auth.protocol == "negotiate"
    with pytest.raises(ConfigError, match="password_env"):
        connector_for("ntlm-nopw", settings)
    with pytest.raises(ConfigError, match=r"needs options\.username"):
        connector_for("pw-nouser", settings)
    with pytest.raises(ConfigError, match="not a service principal name"):
        connector_for("bad-spn", settings)
    with pytest.raises(ConfigError, match="negotiate, ntlm or kerberos only"):
        connector_for("basic-spn", settings)


def test_kerberos_without_the_gssapi_packages_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setattr(certsrv_module, "_kerberos_available", lambda: False)
    monkeypatch.setenv("CERTSRV_PW", PASSWORD)
    settings = load_settings(state_dir=str(tmp_path), ca_profiles={
        "krb": _profile(tmp_path, auth="kerberos"),
        "neg-cache": _profile(tmp_path, auth="negotiate"),
        "neg-ntlm": _profile(tmp_path, auth="negotiate", username=USER, password_env="CERTSRV_PW"),
    })
    for name in ("krb", "neg-cache"):
        with pytest.raises(ConfigError, match=r"certlc\[kerberos\]"):
            connector_for(name, settings)
    assert isinstance(connector_for("neg-ntlm", settings), CertsrvConnector)  # Negotiate still has NTLM


def test_kerberos_password_refused_by_the_kdc_is_auth_failed(fake_kerberos: FakeKerberos) -> None:
    fake_kerberos.fail = RuntimeError("Preauthentication failed -1765328360")
    auth = WindowsAuth("kerberos", username="svc-certlc@CONTOSO.COM", password=PASSWORD)
    connector = CertsrvConnector("adcs", ENDPOINT, auth=auth, transport=_kerberos_server(None, []))
    with pytest.raises(TerminalError) as caught:
        connector.submit(SigningRequest(csr_pem=_csr(), template="WebServer"))
    assert caught.value.reason == "CaAuthFailed" and "svc-certlc@CONTOSO.COM" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_module_exports() -> None:
    assert set(winauth.__all__) <= set(dir(winauth))


def test_ntlm_with_the_password_in_a_file(site: Callable[..., Starlette], clients: Callable[..., TestClient],
                                          tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o400)  # as systemd's LoadCredential= leaves it
    settings = load_settings(state_dir=str(tmp_path), ca_profiles={
        "ntlm": _profile(tmp_path, auth="ntlm", username=USER, password_file=str(secret))})
    connector = connector_for("ntlm", settings)
    assert isinstance(connector, CertsrvConnector) and isinstance(connector._auth, WindowsAuth)
    assert PASSWORD not in repr(connector) and PASSWORD not in repr(connector._auth)
    app = site(auth="ntlm")
    connector._client = clients(app)
    assert connector.check().ok
    [(_connection, _scheme, principal, _negotiated)] = app.state.logons
    assert principal == USER
