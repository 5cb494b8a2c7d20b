"""The adcs-web connector against the certsrv simulator served for real by uvicorn over HTTPS."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certlc.ca.base import CAConnector, DispositionStatus, SigningRequest, TemplateStatus
from certlc.ca.certsrv_sim import approve, certsrv_app
from certlc.ca.devca import DevCA
from certlc.ca.registry import connector_for
from certlc.config import Settings, TemplateSpec
from certlc.errors import TerminalError, TransientError
from certlc.stack import free_port

pytestmark = pytest.mark.e2e

USER = "CONTOSO\\svc-certlc"
PASSWORD = "s3cret-Pa55word!"
PASSWORD_ENV = "CERTSRV_TEST_PASSWORD"
TEMPLATES = [
    TemplateSpec(name="WebServer"),
    TemplateSpec(name="WebServerApproval", approval="manager"),
    TemplateSpec(name="WebServerDenied", approval="deny"),
]


@dataclass
class Site:
    ca: DevCA
    port: int
    tls_ca: Path
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[CAConnector] = field(default_factory=list)

    def stop(self) -> None:
        for client in self.clients:  # idle keep-alive connections would hold uvicorn's shutdown
            client.close()  # type: ignore[attr-defined]
        self.server.should_exit = True
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "uvicorn did not stop"


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        assert issuer is not None
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key()), critical=False)  # type: ignore[arg-type]
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    path.write_bytes(out)
    return path


def _tls_ca(tmp: Path, label: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(f"certsrv e2e TLS CA {label}", key, None, key, ca=True)
    return cert, key, _pem(tmp / f"tls-ca-{label}.pem", cert)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca_cert, ca_key, ca_pem = _tls_ca(tmp_path, "good")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _cert("localhost", server_key, ca_cert, ca_key, ca=False)
    devca = DevCA(tmp_path / "devca", TEMPLATES)
    port = free_port()
    config = uvicorn.Config(
        certsrv_app(devca, users={USER: PASSWORD}), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2,
        ssl_certfile=str(_pem(tmp_path / "server.pem", server_cert)),
        ssl_keyfile=str(_pem(tmp_path / "server.key", server_key)),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    running = Site(devca, port, ca_pem, server, thread)
    yield running
    running.stop()


def _connector(site: Site, monkeypatch: pytest.MonkeyPatch, *, password: str = PASSWORD,
               ca_bundle: Path | None = None, endpoint: str | None = None) -> CAConnector:
    monkeypatch.setenv(PASSWORD_ENV, password)
    settings = Settings.model_validate({"ca_profiles": {"adcs": {
        "kind": "adcs-web",
        "endpoint": endpoint or f"https://localhost:{site.port}/certsrv",
        "options": {"auth": "basic", "username": USER, "password_env": PASSWORD_ENV,
                    "ca_bundle": str(ca_bundle or site.tls_ca), "timeout_seconds": 5},
    }}})
    connector = connector_for("adcs", settings)
    site.clients.append(connector)
    return connector


def _request(template: str) -> tuple[SigningRequest, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app.contoso.com")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("app.contoso.com")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return SigningRequest(csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(), template=template), key


def _spki(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def test_issued_over_https_with_ordered_chain(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    request, key = _request("WebServer")
    result = _connector(site, monkeypatch).submit(request)
    assert result.status is DispositionStatus.ISSUED and result.request_id.isdigit()
    assert result.certificate_pem
    leaf = x509.load_pem_x509_certificate(result.certificate_pem.encode())
    assert _spki(leaf.public_key()) == _spki(key.public_key())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["app.contoso.com"]
    chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in result.chain_pem]
    issuing, root = site.ca.chain
    assert chain == [issuing, root]
    assert leaf.issuer == issuing.subject


def test_pending_then_approved(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    connector = _connector(site, monkeypatch)
    request, key = _request("WebServerApproval")
    held = connector.submit(request)
    assert held.status is DispositionStatus.PENDING and held.request_id.isdigit()
    assert connector.retrieve(held.request_id).status is DispositionStatus.PENDING
    approve(site.ca, held.request_id)
    issued = connector.retrieve(held.request_id)
    assert issued.status is DispositionStatus.ISSUED and issued.certificate_pem
    leaf = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert _spki(leaf.public_key()) == _spki(key.public_key())
    assert [x509.load_pem_x509_certificate(p.encode()) for p in issued.chain_pem] == site.ca.chain


def test_denied_carries_hresult(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _connector(site, monkeypatch).submit(_request("WebServerDenied")[0])
    assert result.status is DispositionStatus.DENIED
    assert "0x80094012" in result.message and "CERTSRV_E_TEMPLATE_DENIED" in result.message


def test_check_templates_over_https(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    listed, denied = _connector(site, monkeypatch).check_templates(["WebServer", "WebServerDenied"])  # type: ignore[attr-defined]
    assert listed.status is TemplateStatus.OK
    assert denied.status is TemplateStatus.NOT_ENROLLABLE
    assert denied.detail == f"not offered to {USER}: it does not exist on this CA or the account lacks Enroll permission"


def test_wrong_password_is_terminal_without_secret(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "not-the-Pa55word"
    with pytest.raises(TerminalError) as caught:
        _connector(site, monkeypatch, password=wrong).submit(_request("WebServer")[0])
    assert caught.value.reason == "CaAuthFailed"
    text = str(caught.value)
    assert "401" in text and wrong not in text and PASSWORD not in text
    assert wrong not in repr(caught.value.context)


def test_untrusted_server_certificate(site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    other = _tls_ca(tmp_path, "other")[2]
    connector = _connector(site, monkeypatch, ca_bundle=other)
    with pytest.raises(TerminalError) as caught:  # configuration: retrying cannot make it trusted
        connector.submit(_request("WebServer")[0])
    message = str(caught.value)
    assert caught.value.reason == "CaTlsUntrusted"
    assert "\n" not in message and f"localhost:{site.port}" in message
    assert "TLS certificate" in message and "not trusted" in message and "ca_bundle" in message
    assert not connector.check().ok


def test_check_healthy_then_unhealthy_after_stop(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    connector = _connector(site, monkeypatch)
    assert connector.check().ok
    site.clients.remove(connector)  # keep its pooled connection: the server goes away under it
    site.stop()
    try:
        health = connector.check()
    except TransientError:
        return
    finally:
        connector.close()  # type: ignore[attr-defined]
    assert not health.ok and health.problems


def test_http_to_the_https_site_hints_at_https(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    connector = _connector(site, monkeypatch, endpoint=f"http://localhost:{site.port}/certsrv")
    with pytest.raises(TransientError) as caught:
        connector.submit(_request("WebServer")[0])
    assert caught.value.reason == "CAUnavailable"
    assert str(caught.value).endswith("(the server may expect HTTPS: use https://)"), str(caught.value)
    [problem] = connector.check().problems
    assert problem.endswith("(the server may expect HTTPS: use https://)")


class _Quiet(http.server.BaseHTTPRequestHandler):
    """A plain HTTP server: it answers a TLS ClientHello with "HTTP/1.0 400 Bad request"."""

    def log_message(self, *args: object) -> None:
        pass


def test_https_to_a_plain_http_server_hints_at_http(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        connector = _connector(site, monkeypatch, endpoint=f"https://localhost:{server.server_address[1]}/certsrv")
        [problem] = connector.check().problems
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert "cannot be reached" in problem and "WRONG_VERSION_NUMBER" in problem
    assert problem.endswith("(the server answers plain HTTP: use http:// or the HTTPS port)"), problem
