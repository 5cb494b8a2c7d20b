"""The cfssl connector: authsign request signing and the mapping of cfssl's answers."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certlc.ca import DispositionStatus, SigningRequest, connector_for
from certlc.ca.base import TemplateStatus
from certlc.ca.cfssl import AUTHSIGN_PATH, INFO_PATH, CfsslConnector
from certlc.config import load_settings
from certlc.errors import ConfigError, TerminalError, TransientError

KEY_HEX = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
ENDPOINT = "https://cfssl.example:8888"
PEM = serialization.Encoding.PEM


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


CA_KEY = ec.generate_private_key(ec.SECP256R1())
NOW = dt.datetime.now(dt.UTC)
CA_CERT = (
    x509.CertificateBuilder().subject_name(_name("Unit CA")).issuer_name(_name("Unit CA"))
    .public_key(CA_KEY.public_key()).serial_number(1)
    .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(CA_KEY, hashes.SHA256())
)
CA_PEM = CA_CERT.public_bytes(PEM).decode()


def _csr(key: ec.EllipticCurvePrivateKey | None = None) -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name("a.example")).sign(key, hashes.SHA256())
    return csr.public_bytes(PEM).decode(), key


def _leaf(key: ec.EllipticCurvePrivateKey, serial: int = 0xABC) -> str:
    cert = (
        x509.CertificateBuilder().subject_name(_name("a.example")).issuer_name(CA_CERT.subject)
        .public_key(key.public_key()).serial_number(serial)
        .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
        .sign(CA_KEY, hashes.SHA256())
    )
    return cert.public_bytes(PEM).decode()


def _error(code: int, message: str, status: int = 400) -> httpx.Response:
    return httpx.Response(status, json={"success": False, "result": None,
                                        "errors": [{"code": code, "message": message}], "messages": []})


Handler = Callable[[httpx.Request], httpx.Response]


class FakeCfssl:
    """Records requests; answers authsign with ``sign`` and info with the unit CA."""

    def __init__(self, sign: Handler) -> None:
        self.sign = sign
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == INFO_PATH:
            return httpx.Response(200, json={"success": True, "result": {"certificate": CA_PEM}})
        assert request.url.path == AUTHSIGN_PATH
        return self.sign(request)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


def _connector(handler: Handler, **kw: object) -> CfsslConnector:
    return CfsslConnector("cfssl", ENDPOINT + "/", bytes.fromhex(KEY_HEX),
                          transport=httpx.MockTransport(handler), **kw)  # type: ignore[arg-type]


def _issuing(request: httpx.Request) -> httpx.Response:
    inner = json.loads(base64.b64decode(json.loads(request.content)["request"]))
    csr = x509.load_pem_x509_csr(inner["certificate_request"].encode())
    cert = (
        x509.CertificateBuilder().subject_name(csr.subject).issuer_name(CA_CERT.subject)
        .public_key(csr.public_key()).serial_number(0xC0FFEE)
        .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
        .sign(CA_KEY, hashes.SHA256())
    )
    return httpx.Response(200, json={"success": True, "result": {"certificate": cert.public_bytes(PEM).decode()}})


# --- request signing --------------------------------------------------------------------------
def test_token_is_the_hmac_of_exactly_the_request_bytes_sent() -> None:
    fake = FakeCfssl(_issuing)
    csr, _ = _csr()
    _connector(fake, label="root2").submit(SigningRequest(csr, "WebServer"))
    sign = next(r for r in fake.requests if r.url.path == AUTHSIGN_PATH)
    assert str(sign.url) == ENDPOINT + AUTHSIGN_PATH and sign.method == "POST"
    envelope = json.loads(sign.content)
    assert set(envelope) == {"token", "request"}
    raw = base64.b64decode(envelope["request"])
    assert base64.b64decode(envelope["token"]) == hmac.new(bytes.fromhex(KEY_HEX), raw, hashlib.sha256).digest()
    assert json.loads(raw) == {"certificate_request": csr, "profile": "WebServer", "label": "root2"}


def test_no_label_means_no_label_field_and_template_map_names_the_profile() -> None:
    fake = FakeCfssl(_issuing)
    connector = _connector(fake, template_map={"1.3.6.1.4.1.311.21.8.9": "webserver", "Web Server": "webserver"})
    connector.submit(SigningRequest(_csr()[0], "Web Server"))
    connector.submit(SigningRequest(_csr()[0], "Unmapped"))
    inners = [json.loads(base64.b64decode(json.loads(r.content)["request"]))
              for r in fake.requests if r.url.path == AUTHSIGN_PATH]
    assert [i["profile"] for i in inners] == ["webserver", "Unmapped"]
    assert all("label" not in i for i in inners)


# --- answers ----------------------------------------------------------------------------------
def test_success_is_issued_with_the_ca_as_chain_fetched_once() -> None:
    fake = FakeCfssl(_issuing)
    connector = _connector(fake)
    first = connector.submit(SigningRequest(_csr()[0], "WebServer"))
    second = connector.submit(SigningRequest(_csr()[0], "WebServer"))
    for result in (first, second):
        assert result.status is DispositionStatus.ISSUED and result.reason == "Issued"
        assert result.request_id == "c0ffee"
        assert x509.load_pem_x509_certificate(result.chain_pem[0].encode()) == CA_CERT
        x509.load_pem_x509_certificate(result.certificate_pem.encode()).verify_directly_issued_by(CA_CERT)  # type: ignore[union-attr]
    assert fake.paths() == [AUTHSIGN_PATH, INFO_PATH, AUTHSIGN_PATH]
    info = next(r for r in fake.requests if r.url.path == INFO_PATH)
    assert json.loads(info.content) == {"label": "", "profile": "WebServer"}


def test_a_certificate_for_another_key_is_refused() -> None:
    other = _leaf(ec.generate_private_key(ec.SECP256R1()))
    connector = _connector(FakeCfssl(lambda r: httpx.Response(200, json={"success": True,
                                                                         "result": {"certificate": other}})))
    with pytest.raises(TerminalError, match="another key") as caught:
        connector.submit(SigningRequest(_csr()[0], "WebServer"))
    assert caught.value.reason == "CaResponseInvalid"


def test_success_without_a_certificate_is_refused() -> None:
    connector = _connector(FakeCfssl(lambda r: httpx.Response(200, json={"success": True, "result": {}})))
    with pytest.raises(TerminalError) as caught:
        connector.submit(SigningRequest(_csr()[0], "WebServer"))
    assert caught.value.reason == "CaResponseInvalid"


@pytest.mark.parametrize(("code", "message", "reason"), [
    (400, "no authentication provider", "TemplateNotSupported"),
    (5200, "Invalid or unknown policy", "Denied"),
    (5300, "Policy violation request", "Denied"),
    (9002, "CSR Decode failed", "CsrRejected"),
    (9003, "CSR signature verification failed", "CsrRejected"),
])
def test_refusals_of_the_request_are_denials_with_cfssls_words(code: int, message: str, reason: str) -> None:
    connector = _connector(FakeCfssl(lambda r: _error(code, message)))
    result = connector.submit(SigningRequest(_csr()[0], "WebServer", request_key="vault/cert/v1"))
    assert result.status is DispositionStatus.DENIED
    assert result.reason == reason and message in result.message and result.request_id == "vault/cert/v1"


def test_unknown_profile_denial_names_the_profile() -> None:
    connector = _connector(FakeCfssl(lambda r: _error(400, "no authentication provider")), template_map={"W": "web"})
    assert "'web'" in connector.submit(SigningRequest(_csr()[0], "W")).message


def test_a_wrong_key_is_a_terminal_configuration_error_without_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    connector = _connector(FakeCfssl(lambda r: _error(400, "invalid token")))
    with pytest.raises(TerminalError) as caught:
        connector.submit(SigningRequest(_csr()[0], "WebServer"))
    assert caught.value.reason == "CaAuthFailed" and "auth key" in caught.value.message
    for text in (str(caught.value), repr(caught.value.context), caplog.text, repr(connector)):
        assert KEY_HEX not in text.lower()
        assert base64.b64encode(bytes.fromhex(KEY_HEX)).decode() not in text


def test_other_refusals_are_terminal() -> None:
    connector = _connector(FakeCfssl(lambda r: _error(400, "Unable to parse authenticated sign request")))
    with pytest.raises(TerminalError, match="Unable to parse") as caught:
        connector.submit(SigningRequest(_csr()[0], "WebServer"))
    assert caught.value.reason == "CaError" and caught.value.context["ca_code"] == 400


@pytest.mark.parametrize("status", [200, 400, 404])
def test_an_answer_that_is_not_cfssl_json_is_terminal(status: int) -> None:
    connector = _connector(FakeCfssl(lambda r: httpx.Response(status, text="404 page not found")))
    with pytest.raises(TerminalError, match="endpoint") as caught:
        connector.submit(SigningRequest(_csr()[0], "WebServer"))
    assert caught.value.reason == "CaResponseInvalid"


def test_json_that_is_not_a_cfssl_answer_is_terminal() -> None:
    connector = _connector(FakeCfssl(lambda r: httpx.Response(200, json=["not", "an", "object"])))
    with pytest.raises(TerminalError):
        connector.submit(SigningRequest(_csr()[0], "WebServer"))


@pytest.mark.parametrize("response", [
    httpx.Response(500, json={"success": False, "errors": [{"code": 500, "message": "boom"}]}),
    httpx.Response(502, text="<html>bad gateway</html>"),
    httpx.Response(503, text=""),
    httpx.Response(429, text="slow down"),
])
def test_server_trouble_is_transient(response: httpx.Response) -> None:
    connector = _connector(FakeCfssl(lambda r: response))
    with pytest.raises(TransientError, match=f"HTTP {response.status_code}") as caught:
        connector.submit(SigningRequest(_csr()[0], "WebServer"))
    assert caught.value.reason == "CAUnavailable"


@pytest.mark.parametrize(("exc", "words"), [
    (httpx.ReadTimeout("timed out"), "did not answer in time"),
    (httpx.ConnectTimeout("timed out"), "did not answer in time"),
    (httpx.ConnectError("connection refused"), "cannot be reached"),
])
def test_network_failures_are_transient(exc: httpx.HTTPError, words: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(TransientError, match=words):
        _connector(fail).submit(SigningRequest(_csr()[0], "WebServer"))


def test_retrieve_says_cfssl_holds_nothing() -> None:
    with pytest.raises(TerminalError, match="never holds") as caught:
        _connector(FakeCfssl(_issuing)).retrieve("abc")
    assert caught.value.reason == "RequestUnknown"


def test_check_asks_cfssl_every_time() -> None:
    up = {"ok": True}

    def handler(request: httpx.Request) -> httpx.Response:
        if not up["ok"]:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"success": True, "result": {"certificate": CA_PEM}})

    connector = _connector(handler)
    assert connector.check().ok
    up["ok"] = False
    health = connector.check()
    assert not health.ok and "cannot be reached" in health.problems[0] and ENDPOINT in health.problems[0]


def test_check_reports_an_info_refusal() -> None:
    connector = _connector(lambda r: _error(400, "bad label"))
    health = connector.check()
    assert not health.ok and "bad label" in health.problems[0]


# --- configuration ----------------------------------------------------------------------------
def _settings(tmp_path: Path, **profile: object):
    return load_settings(state_dir=str(tmp_path), ca_profiles={"cf": {"kind": "cfssl", "endpoint": ENDPOINT,
                                                                        **profile}})


def test_registered_as_kind_cfssl(tmp_path: Path) -> None:
    connector = connector_for("cf", _settings(tmp_path, template_map={"A": "b"},
                                              options={"auth_key": KEY_HEX, "label": "L", "timeout_seconds": 3}))
    assert isinstance(connector, CfsslConnector)
    assert connector.profile == "cf" and connector.label == "L" and connector.cfssl_profile("A") == "b"
    assert KEY_HEX not in repr(connector)


def test_auth_key_env_reads_the_key_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFSSL_TEST_KEY", KEY_HEX)
    connector = connector_for("cf", _settings(tmp_path, options={"auth_key_env": "CFSSL_TEST_KEY"}))
    fake = FakeCfssl(_issuing)
    connector._client = httpx.Client(transport=httpx.MockTransport(fake))  # type: ignore[attr-defined]
    assert connector.submit(SigningRequest(_csr()[0], "WebServer")).issued
    envelope = json.loads(fake.requests[0].content)
    raw = base64.b64decode(envelope["request"])
    assert base64.b64decode(envelope["token"]) == hmac.new(bytes.fromhex(KEY_HEX), raw, hashlib.sha256).digest()


@pytest.mark.parametrize(("options", "words"), [
    ({}, "needs options.auth_key or options.auth_key_env"),
    ({"auth_key_env": "CFSSL_TEST_UNSET"}, "CFSSL_TEST_UNSET (auth_key_env) is not set"),
    ({"auth_key": KEY_HEX, "auth_key_env": "X"}, "not both"),
    ({"auth_key": "secret-not-hex"}, "options.auth_key is not a hex key"),
    ({"auth_key": KEY_HEX, "timeout_seconds": 0}, "timeout_seconds"),
    ({"auth_key": KEY_HEX, "tls": True}, "unknown option"),
    ({"auth_key": KEY_HEX, "ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle"),
])
def test_bad_options_are_config_errors_that_never_echo_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, object], words: str) -> None:
    monkeypatch.delenv("CFSSL_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")) as caught:
        connector_for("cf", _settings(tmp_path, options=options))
    assert "secret-not-hex" not in str(caught.value) and KEY_HEX not in str(caught.value)


def test_an_endpoint_is_required(tmp_path: Path) -> None:
    settings = load_settings(state_dir=str(tmp_path), ca_profiles={"cf": {"kind": "cfssl",
                                                                          "options": {"auth_key": KEY_HEX}}})
    with pytest.raises(ConfigError, match="endpoint"):
        connector_for("cf", settings)


def test_ca_bundle_is_used_for_tls(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text(CA_PEM)
    connector = connector_for("cf", _settings(tmp_path, options={"auth_key": KEY_HEX, "ca_bundle": str(bundle)}))
    assert isinstance(connector, CfsslConnector)


# --- check_templates: answers recorded from a real `cfssl serve` 1.2.0 -------------------------
# Its configuration: profiles WebServer (auth_key "primary") and NoAuth (no auth_key), no
# authenticated default. /info for an unknown profile answers the default policy.
DEFAULT_POLICY = {"certificate": CA_PEM, "usages": ["signing", "key encipherment", "server auth", "client auth"],
                  "expiry": "8760h"}
POLICIES = {
    "": DEFAULT_POLICY,
    "WebServer": {"certificate": CA_PEM, "usages": ["digital signature", "server auth"], "expiry": "2160h"},
    "NoAuth": {"certificate": CA_PEM, "usages": ["digital signature", "client auth"], "expiry": "720h"},
}
CSR_ERROR = ("asn1: structure error: tags don't match (16 vs {class:0 tag:0 length:0 isCompound:false}) "
             "{optional:false explicit:false application:false private:false defaultValue:<nil> tag:<nil> "
             "stringType:0 timeType:0 set:false omitEmpty:false} certificateRequest @2")


class RecordedCfssl:
    """Answers /info and authsign as the real server did; ``default_auth`` plays a cfssl whose
    signing.default has an auth_key (then unknown profiles pass the token check)."""

    def __init__(self, key_hex: str = KEY_HEX, default_auth: bool = False) -> None:
        self.key = bytes.fromhex(key_hex)
        self.default_auth = default_auth
        self.probes: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == INFO_PATH:
            return httpx.Response(200, json={"success": True, "result": POLICIES.get(body.get("profile"), DEFAULT_POLICY),
                                             "errors": [], "messages": []})
        raw = base64.b64decode(body["request"])
        inner = json.loads(raw)
        self.probes.append(inner)
        authenticated = inner["profile"] == "WebServer" or (self.default_auth and inner["profile"] not in POLICIES)
        if not authenticated:
            return _error(400, "no authentication provider")
        if base64.b64decode(body["token"]) != hmac.new(self.key, raw, hashlib.sha256).digest():
            return _error(400, "invalid token")
        return _error(9003, CSR_ERROR)


def test_check_templates_tells_known_unknown_and_unauthenticated_profiles() -> None:
    fake = RecordedCfssl()
    connector = _connector(fake, template_map={"Web Server": "WebServer"}, label="root2")
    ok, mapped, unknown, no_auth = connector.check_templates(["WebServer", "Web Server", "NoSuchProfile", "NoAuth"])
    assert ok.ok and "accepts certlc's auth key" in ok.detail
    assert mapped.ok and (mapped.template, mapped.ca_name) == ("Web Server", "WebServer")
    assert unknown.status is TemplateStatus.UNKNOWN and "no signing profile 'NoSuchProfile'" in unknown.detail
    assert no_auth.status is TemplateStatus.NOT_ENROLLABLE and "takes no authenticated requests" in no_auth.detail
    assert "auth_key" in no_auth.action
    # The probe can never be signed: its request is no DER, whatever cfssl's policy.
    for inner in fake.probes:
        assert inner["label"] == "root2"
        with pytest.raises(ValueError):
            x509.load_pem_x509_csr(inner["certificate_request"].encode())


def test_check_templates_with_another_key_is_not_enrollable_without_leaking_it() -> None:
    connector = _connector(RecordedCfssl(key_hex="ffeeddccbbaa99887766554433221100"))
    [result] = connector.check_templates(["WebServer"])
    assert result.status is TemplateStatus.NOT_ENROLLABLE and "refuses certlc's auth key" in result.detail
    assert KEY_HEX not in repr(result)


def test_check_templates_under_an_authenticated_default_calls_unknown_profiles_unknown() -> None:
    ok, unknown = _connector(RecordedCfssl(default_auth=True)).check_templates(["WebServer", "NoSuchProfile"])
    assert ok.ok
    assert unknown.status is TemplateStatus.UNKNOWN and "default policy would sign" in unknown.detail
    assert "signing.default" in unknown.action


def test_check_templates_other_answers_are_unverifiable_and_outages_raise() -> None:
    def odd(request: httpx.Request) -> httpx.Response:
        if request.url.path == INFO_PATH:
            return httpx.Response(200, json={"success": True, "result": DEFAULT_POLICY})
        return _error(1000, "something new")

    [result] = _connector(odd).check_templates(["WebServer"])
    assert result.status is TemplateStatus.UNVERIFIABLE and "something new" in result.detail

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(TransientError):
        _connector(down).check_templates(["WebServer"])
