"""The cfssl connector against a real ``cfssl serve`` (apt package golang-cfssl, installed by .ci/run)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certlc.ca import DispositionStatus, SigningRequest, connector_for
from certlc.ca.base import TemplateStatus
from certlc.ca.cfssl import CfsslConnector
from certlc.config import load_settings
from certlc.errors import TerminalError, TransientError
from certlc.stack import free_port

pytestmark = [
    pytest.mark.e2e,
    # CI runs as root and .ci/run installs cfssl, so there a missing binary must fail, not skip.
    pytest.mark.skipif(shutil.which("cfssl") is None and os.geteuid() != 0,
                       reason="cfssl is not installed (apt-get install golang-cfssl)"),
]

AUTH_KEY = "00112233445566778899aabbccddeeff"
WRONG_KEY = "ffeeddccbbaa99887766554433221100"


@dataclass
class Cfssl:
    url: str
    ca: x509.Certificate
    proc: subprocess.Popen[bytes]


def _ca(tmp: Path) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certlc cfssl Test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # cfssl 1.2 reads "EC PRIVATE KEY" reliably; PKCS#8 EC support came later.
    (tmp / "ca-key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    (tmp / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _config(tmp: Path) -> Path:
    # Only authenticated profiles and no authenticated default: an unknown profile is refused
    # ("no authentication provider") instead of being signed with the default policy.
    config = {
        "signing": {
            "profiles": {
                "WebServer": {"expiry": "2160h", "auth_key": "primary",
                              "usages": ["digital signature", "key encipherment", "server auth"]},
                "ClientOnly": {"expiry": "720h", "auth_key": "primary",
                               "usages": ["digital signature", "client auth"]},
                # No auth_key: authsign cannot use it (ca check says so).
                "Unauthenticated": {"expiry": "24h", "usages": ["digital signature"]},
            },
        },
        "auth_keys": {"primary": {"type": "standard", "key": AUTH_KEY}},
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    return path


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"cfssl serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.post(url + "/api/v1/cfssl/info", json={}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"cfssl serve did not become ready: {log.read_text()[-2000:]}")


def _start(tmp: Path) -> Cfssl:
    binary = shutil.which("cfssl")
    assert binary, "cfssl is missing: .ci/run installs it with apt-get install golang-cfssl"
    ca = _ca(tmp)
    port = free_port()
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "serve", "-address", "127.0.0.1", "-port", str(port), "-ca", str(tmp / "ca.pem"),
             "-ca-key", str(tmp / "ca-key.pem"), "-config", str(_config(tmp))],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
    except BaseException:
        _stop(proc)
        raise
    return Cfssl(url, ca, proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def cfssl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cfssl]:
    server = _start(tmp_path_factory.mktemp("cfssl"))
    yield server
    _stop(server.proc)


_OPEN: list[CfsslConnector] = []


@pytest.fixture(autouse=True)
def _close_connectors() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _connector(url: str, tmp_path: Path, key: str = AUTH_KEY, **profile: object) -> CfsslConnector:
    settings = load_settings(state_dir=str(tmp_path), ca_profiles={
        "cfssl": {"kind": "cfssl", "endpoint": url, "options": {"auth_key": key, "timeout_seconds": 5}, **profile},
    })
    connector = connector_for("cfssl", settings)
    assert isinstance(connector, CfsslConnector)
    _OPEN.append(connector)
    return connector


def _csr(name: str = "www.example.test") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM).decode()
    )


def _ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_issues_with_the_profile_and_the_chain_leads_to_the_ca(cfssl: Cfssl, tmp_path: Path) -> None:
    connector = _connector(cfssl.url, tmp_path)
    assert connector.check().ok
    result = connector.submit(SigningRequest(_csr("www.example.test"), "WebServer", vault="demo", certificate="www"))
    assert result.status is DispositionStatus.ISSUED, result
    leaf = x509.load_pem_x509_certificate(result.certificate_pem.encode())  # type: ignore[union-attr]
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in result.chain_pem]
    assert chain == [cfssl.ca]
    leaf.verify_directly_issued_by(cfssl.ca)
    assert _ekus(leaf) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["www.example.test"]
    assert result.request_id == format(leaf.serial_number, "x")


def test_template_map_picks_the_cfssl_profile(cfssl: Cfssl, tmp_path: Path) -> None:
    connector = _connector(cfssl.url, tmp_path, template_map={"ClientAuthTemplate": "ClientOnly"})
    result = connector.submit(SigningRequest(_csr("client.example.test"), "ClientAuthTemplate"))
    assert result.status is DispositionStatus.ISSUED, result
    leaf = x509.load_pem_x509_certificate(result.certificate_pem.encode())  # type: ignore[union-attr]
    leaf.verify_directly_issued_by(cfssl.ca)
    assert _ekus(leaf) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_an_unknown_profile_is_denied(cfssl: Cfssl, tmp_path: Path) -> None:
    result = _connector(cfssl.url, tmp_path).submit(SigningRequest(_csr(), "NoSuchProfile", request_key="k1"))
    assert result.status is DispositionStatus.DENIED
    assert result.reason == "TemplateNotSupported" and "'NoSuchProfile'" in result.message
    assert result.request_id == "k1"


def test_check_templates_against_the_real_server(cfssl: Cfssl, tmp_path: Path) -> None:
    results = _connector(cfssl.url, tmp_path, template_map={"Client": "ClientOnly"}).check_templates(
        ["WebServer", "Client", "NoSuchProfile", "Unauthenticated"])
    assert [r.status for r in results] == [TemplateStatus.OK, TemplateStatus.OK, TemplateStatus.UNKNOWN,
                                          TemplateStatus.NOT_ENROLLABLE]
    assert "no signing profile 'NoSuchProfile'" in results[2].detail
    [wrong] = _connector(cfssl.url, tmp_path, key=WRONG_KEY).check_templates(["WebServer"])
    assert wrong.status is TemplateStatus.NOT_ENROLLABLE and "auth key" in wrong.detail


def test_a_request_cfssl_cannot_read_is_denied(cfssl: Cfssl, tmp_path: Path) -> None:
    garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    result = _connector(cfssl.url, tmp_path).submit(SigningRequest(garbage, "WebServer"))
    assert result.status is DispositionStatus.DENIED and result.reason == "CsrRejected"
    assert "cfssl:" in result.message


def test_a_wrong_key_is_a_configuration_error_that_does_not_leak_the_key(
        cfssl: Cfssl, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    with pytest.raises(TerminalError) as caught:
        _connector(cfssl.url, tmp_path, key=WRONG_KEY).submit(SigningRequest(_csr(), "WebServer"))
    assert caught.value.reason == "CaAuthFailed"
    assert "auth key" in str(caught.value)
    for text in (str(caught.value), repr(caught.value.context), caplog.text):
        assert WRONG_KEY not in text and AUTH_KEY not in text


def test_a_stopped_cfssl_is_transient(tmp_path: Path) -> None:
    (tmp_path / "own").mkdir()
    server = _start(tmp_path / "own")
    try:
        connector = _connector(server.url, tmp_path)
        assert connector.submit(SigningRequest(_csr(), "WebServer")).issued
    finally:
        _stop(server.proc)
    with pytest.raises(TransientError) as caught:
        connector.submit(SigningRequest(_csr(), "WebServer"))
    assert caught.value.reason == "CAUnavailable"
    health = connector.check()  # asks cfssl again, even though the chain is cached
    assert not health.ok and "cannot be reached" in health.problems[0]
