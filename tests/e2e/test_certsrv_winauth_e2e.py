"""The adcs-web connector through Windows Authentication, over real HTTPS (uvicorn), as IIS asks for it.

* NTLM and Negotiate→NTLM against the certsrv simulator's pyspnego acceptor, with IIS "Extended
  Protection" (the TLS channel binding) required: the whole handshake must stay on one TCP
  connection, and one handshake serves the submit and both downloads (the connection stays
  authenticated).
* Kerberos against a real MIT KDC on loopback (certlc.localca.kdc): a throwaway realm, the
  service principal ``HTTP/localhost`` in the simulator's keytab, a user with a ticket from
  ``kinit``; the connector with ``auth = "kerberos"`` / ``"negotiate"`` and no password uses the
  ticket cache, as a domain-joined worker does. Needs krb5-kdc, krb5-admin-server, krb5-user and
  the ``kerberos`` extra: skipped without them unless running as root (CI), where it fails.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette

from certlc.ca.base import CAConnector, DispositionStatus, SigningRequest
from certlc.ca.certsrv_sim import approve, certsrv_app
from certlc.ca.devca import DevCA
from certlc.ca.registry import connector_for
from certlc.ca.winauth import WindowsAuth
from certlc.config import Settings, TemplateSpec
from certlc.errors import TerminalError
from certlc.localca.kdc import KDC, kdc_binaries, start_kdc
from certlc.localca.tls import LocalTls, localhost_tls
from certlc.stack import free_port

pytestmark = pytest.mark.e2e

USER = "CONTOSO\\svc-certlc"
PASSWORD = "s3cret-NTLM-Pa55word!"
PASSWORD_ENV = "CERTSRV_WINAUTH_PASSWORD"
KRB_USER, KRB_PASSWORD = "svc-certlc", "s3cret-Kerberos-Pa55!"
TEMPLATES = [TemplateSpec(name="WebServer"), TemplateSpec(name="WebServerApproval", approval="manager")]


@dataclass
class Site:
    app: Starlette
    ca: DevCA
    port: int
    tls: LocalTls
    server: uvicorn.Server
    thread: threading.Thread
    connectors: list[CAConnector] = field(default_factory=list)

    def stop(self) -> None:
        for connector in self.connectors:  # idle keep-alive connections would hold uvicorn's shutdown
            connector.close()  # type: ignore[attr-defined]
        self.server.should_exit = True
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def connector(self, monkeypatch: pytest.MonkeyPatch, password: str | None = None, **options: Any) -> CAConnector:
        if password is not None:
            monkeypatch.setenv(PASSWORD_ENV, password)
            options["password_env"] = PASSWORD_ENV
        settings = Settings.model_validate({"ca_profiles": {"adcs": {
            "kind": "adcs-web", "endpoint": f"https://localhost:{self.port}/certsrv",
            "options": {"ca_bundle": str(self.tls.ca_pem), "timeout_seconds": 10, **options}}}})
        connector = connector_for("adcs", settings)
        self.connectors.append(connector)
        return connector

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.tls.cert_pem.read_bytes())


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """``serve(**certsrv_app options)``: the simulator over HTTPS on a free port; stopped at teardown."""
    sites: list[Site] = []
    tls = localhost_tls(tmp_path / "tls", "certsrv winauth e2e")

    def start(**options: Any) -> Site:
        ca = DevCA(tmp_path / f"devca-{len(sites)}", TEMPLATES)
        if options.pop("bind_channel", False):
            options["channel_binding_certificate"] = x509.load_pem_x509_certificate(tls.cert_pem.read_bytes())
        app = certsrv_app(ca, **options)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               timeout_graceful_shutdown=2, ssl_certfile=str(tls.cert_pem),
                                               ssl_keyfile=str(tls.key_pem)))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        site = Site(app, ca, port, tls, server, thread)
        sites.append(site)
        return site

    yield start
    for site in sites:
        site.stop()


@pytest.fixture
def no_system_kerberos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NTLM tests stay off the machine's krb5.conf realm: Negotiate must not go looking for a KDC."""
    empty = tmp_path / "krb5-empty.conf"
    empty.write_text("[libdefaults]\n    dns_lookup_kdc = false\n")
    monkeypatch.setenv("KRB5_CONFIG", str(empty))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-ccache'}")


def _request(template: str = "WebServer") -> tuple[SigningRequest, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app.contoso.com")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("app.contoso.com")]), critical=False)
           .sign(key, hashes.SHA256()))
    return SigningRequest(csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(), template=template), key


def _spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return]


def _issued_to(result: Any, key: ec.EllipticCurvePrivateKey, site: Site) -> None:
    assert result.status is DispositionStatus.ISSUED and result.certificate_pem
    leaf = x509.load_pem_x509_certificate(result.certificate_pem.encode())
    assert _spki(leaf.public_key()) == _spki(key.public_key())
    assert [x509.load_pem_x509_certificate(p.encode()) for p in result.chain_pem] == site.ca.chain


# --- NTLM and Negotiate -> NTLM ----------------------------------------------------------------
@pytest.mark.usefixtures("no_system_kerberos")
@pytest.mark.parametrize(("site_auth", "auth"), [("ntlm", "ntlm"), ("negotiate", "negotiate")],
                         ids=["ntlm", "negotiate-falls-back-to-ntlm"])
def test_issued_through_ntlm_with_extended_protection(serve: Callable[..., Site], monkeypatch: pytest.MonkeyPatch,
                                                      site_auth: str, auth: str) -> None:
    site = serve(users={USER: PASSWORD}, auth=site_auth, bind_channel=True)
    request, key = _request()
    _issued_to(site.connector(monkeypatch, PASSWORD, auth=auth, username=USER).submit(request), key, site)
    # One handshake on one TCP connection served certfnsh.asp, certnew.cer and certnew.p7b.
    [(connection, _scheme, principal, protocol)] = site.app.state.logons
    assert connection[0] == "127.0.0.1" and principal == USER and protocol == "ntlm"


@pytest.mark.usefixtures("no_system_kerberos")
def test_pending_then_approved_through_ntlm(serve: Callable[..., Site], monkeypatch: pytest.MonkeyPatch) -> None:
    site = serve(users={USER: PASSWORD}, auth="ntlm", bind_channel=True)
    connector = site.connector(monkeypatch, PASSWORD, auth="ntlm", username=USER)
    request, key = _request("WebServerApproval")
    held = connector.submit(request)
    assert held.status is DispositionStatus.PENDING
    approve(site.ca, held.request_id)
    _issued_to(connector.retrieve(held.request_id), key, site)


@pytest.mark.usefixtures("no_system_kerberos")
@pytest.mark.parametrize("auth", ["ntlm", "negotiate"])
def test_wrong_password_is_auth_failed(serve: Callable[..., Site], monkeypatch: pytest.MonkeyPatch,
                                       auth: str) -> None:
    site = serve(users={USER: PASSWORD}, auth="negotiate")
    wrong = "not-the-Pa55word"
    connector = site.connector(monkeypatch, wrong, auth=auth, username=USER)
    with pytest.raises(TerminalError) as caught:
        connector.submit(_request()[0])
    error = caught.value
    assert error.reason == "CaAuthFailed" and "HTTP 401" in str(error) and USER in str(error)
    assert wrong not in f"{error} {error.context!r} {connector!r}" and site.app.state.logons == []
    assert not connector.check().ok


@pytest.mark.usefixtures("no_system_kerberos")
def test_channel_binding_of_another_certificate_is_refused(serve: Callable[..., Site], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The server expects the binding of a certificate other than the one the client sees: what a
    # TLS-intercepting proxy in between looks like to IIS Extended Protection.
    other = x509.load_pem_x509_certificate(localhost_tls(tmp_path / "other", "other").cert_pem.read_bytes())
    site = serve(users={USER: PASSWORD}, auth="ntlm", channel_binding_certificate=other)
    with pytest.raises(TerminalError) as caught:
        site.connector(monkeypatch, PASSWORD, auth="ntlm", username=USER).submit(_request()[0])
    assert caught.value.reason == "CaAuthFailed" and site.app.state.logons == []


# --- Kerberos against a real KDC ----------------------------------------------------------------
def _kerberos_missing() -> str | None:
    if kdc_binaries() is None:
        return "MIT Kerberos tools missing (apt-get install krb5-kdc krb5-admin-server krb5-user)"
    if not all(importlib.util.find_spec(m) for m in ("gssapi", "krb5")):
        return "the gssapi and krb5 packages are missing (pip install -e '.[kerberos]', needs libkrb5-dev)"
    return None


@pytest.fixture(scope="module")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KDC]:
    missing = _kerberos_missing()
    if missing:
        if os.geteuid() == 0:  # CI runs as root after .ci/run installed them: missing is a failure there
            pytest.fail(missing)
        pytest.skip(missing)
    work = tmp_path_factory.mktemp("kdc")
    with start_kdc(work) as running:
        running.add_user(KRB_USER, KRB_PASSWORD)
        running.add_service("HTTP/localhost", work / "http.keytab")
        yield running


@dataclass
class Realm:
    kdc: KDC
    ccache: Path
    principal: str


@pytest.fixture
def realm(kdc: KDC, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Realm:
    """Client and acceptor pointed at the KDC; the user has a ticket in this test's own cache."""
    for name, value in kdc.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KRB5_KTNAME", f"FILE:{kdc.workdir / 'http.keytab'}")  # the simulator's (IIS's) key
    principal = f"{KRB_USER}@{kdc.realm}"
    ccache = kdc.kinit(principal, KRB_PASSWORD, tmp_path / "ccache")
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{ccache}")
    return Realm(kdc, ccache, principal)


@pytest.fixture
def mutual(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each verified mutual-authentication token (the server's AP-REP)."""
    verified: list[str] = []
    original = WindowsAuth._mutual

    def spy(self: WindowsAuth, context: Any, token: bytes, host: str) -> None:
        original(self, context, token, host)
        verified.append(host)

    monkeypatch.setattr(WindowsAuth, "_mutual", spy)
    return verified


@pytest.mark.parametrize("auth", ["kerberos", "negotiate"])
def test_kerberos_from_the_workers_ticket_cache(serve: Callable[..., Site], realm: Realm, mutual: list[str],
                                                monkeypatch: pytest.MonkeyPatch, auth: str) -> None:
    site = serve(auth="negotiate", bind_channel=True)
    connector = site.connector(monkeypatch, auth=auth)  # no username, no password: the ticket cache
    request, key = _request()
    _issued_to(connector.submit(request), key, site)
    [(_connection, scheme, principal, protocol)] = site.app.state.logons
    assert (scheme, principal, protocol) == ("Negotiate", realm.principal, "kerberos")
    assert mutual == ["localhost"]  # the server proved it holds HTTP/localhost's key


def test_negotiate_with_a_password_gets_its_own_kerberos_ticket(serve: Callable[..., Site], realm: Realm,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'empty-ccache'}")  # no ticket: the password must do
    site = serve(auth="negotiate", bind_channel=True)
    connector = site.connector(monkeypatch, KRB_PASSWORD, auth="negotiate", username=realm.principal)
    request, key = _request()
    _issued_to(connector.submit(request), key, site)
    assert [(p, proto) for _c, _s, p, proto in site.app.state.logons] == [(realm.principal, "kerberos")]


def test_kerberos_without_a_ticket_says_kinit(serve: Callable[..., Site], realm: Realm, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-ticket'}")
    site = serve(auth="negotiate")
    with pytest.raises(TerminalError) as caught:
        site.connector(monkeypatch, auth="kerberos").submit(_request()[0])
    assert caught.value.reason == "KerberosNoCredentials" and "kinit" in str(caught.value)
    assert caught.value.context["profile"] == "adcs"


def test_kerberos_with_an_unknown_spn_says_setspn(serve: Callable[..., Site], realm: Realm,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    site = serve(auth="negotiate")
    with pytest.raises(TerminalError) as caught:
        site.connector(monkeypatch, auth="kerberos", spn="HTTP/ca01.nowhere.test").submit(_request()[0])
    assert caught.value.reason == "KerberosSpnUnknown" and "setspn -S HTTP/ca01.nowhere.test" in str(caught.value)


def test_kerberos_password_with_no_kdc_answering(serve: Callable[..., Site], realm: Realm, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    dead = tmp_path / "krb5-dead.conf"
    dead.write_text(realm.kdc.krb5_conf.read_text().replace(f"127.0.0.1:{realm.kdc.port}",
                                                            f"127.0.0.1:{free_port()}"))
    site = serve(auth="negotiate")
    connector = site.connector(monkeypatch, KRB_PASSWORD, auth="kerberos", username=realm.principal)
    monkeypatch.setenv("KRB5_CONFIG", str(dead))
    with pytest.raises(TerminalError) as caught:
        connector.submit(_request()[0])
    assert caught.value.reason == "KerberosKdcUnreachable" and "krb5.conf" in str(caught.value)
    assert KRB_PASSWORD not in str(caught.value)


def test_kerberos_channel_binding_of_another_certificate_is_refused(serve: Callable[..., Site], realm: Realm,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    other = x509.load_pem_x509_certificate(localhost_tls(tmp_path / "other", "other").cert_pem.read_bytes())
    site = serve(auth="negotiate", channel_binding_certificate=other)
    with pytest.raises(TerminalError) as caught:
        site.connector(monkeypatch, auth="kerberos").submit(_request()[0])
    assert caught.value.reason == "CaAuthFailed" and site.app.state.logons == []
