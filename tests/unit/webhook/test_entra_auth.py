"""Entra ID bearer tokens on Event Grid deliveries: real RSA keys, a real JWKS server on 127.0.0.1,
tokens minted with PyJWT, checked through the receiver's HTTP contract and the verifier itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from certlc.config import EntraSettings, Settings
from certlc.webhook import AcceptedEvent, create_app
from certlc.webhook.auth import BearerVerifier, KeysUnavailable, TokenRejected

KEY = "s3cr3t-webhook-key"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
AUDIENCE = "api://certlc-webhook"
ISSUER = f"https://sts.windows.net/{TENANT}/"
ROLE = "AzureEventGridSecureWebhookSubscriber"
KID = "kid-1"
VERSION = "4b4c39e1f0a84aa0a1e7b5b3c8f7e6d5"
EVENT = {
    "id": "e-1", "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/contoso-certs",
    "subject": "web01", "eventType": "Microsoft.KeyVault.CertificateNearExpiry", "eventTime": "2026-11-23T15:53:16Z",
    "data": {"Id": f"https://contoso-certs.vault.azure.net/certificates/web01/{VERSION}", "VaultName": "contoso-certs",
             "ObjectType": "Certificate", "ObjectName": "web01", "Version": VERSION, "NBF": 1700753990, "EXP": 1701185990},
    "dataVersion": "1", "metadataVersion": "1",
}

SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(private_key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    return {**data, "kid": kid, "use": "sig"}


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/{TENANT}/discovery/v2.0/keys"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer([jwk(SIGNING_KEY, KID)])
    yield server
    server.stop()


class Recorder:
    def __init__(self) -> None:
        self.accepted: list[AcceptedEvent] = []

    def accept(self, events: Sequence[AcceptedEvent]) -> None:
        self.accepted.extend(events)


@pytest.fixture
def sink() -> Recorder:
    return Recorder()


def entra(url: str, **overrides: Any) -> dict[str, Any]:
    return {"tenant_id": TENANT, "audience": AUDIENCE, "jwks_url": url, **overrides}


def app_for(url: str, sink: Recorder, **overrides: Any) -> TestClient:
    settings = Settings.model_validate({"vaults": [{"name": "prod", "url": "https://contoso-certs.vault.azure.net", "ca_profile": "adcs"}],
                                        "ca_profiles": {"adcs": {"kind": "adcs-web"}},
                                        "webhook": {"shared_key": KEY, "entra": entra(url, **overrides)}})
    return TestClient(create_app(settings, sink))


@pytest.fixture
def client(jwks: JwksServer, sink: Recorder) -> TestClient:
    return app_for(jwks.url, sink)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"aud": AUDIENCE, "iss": ISSUER, "iat": now - 10, "nbf": now - 10, "exp": now + 600,
            "appid": "4962773b-9cdb-44cf-a8bf-237846a00ab7", "roles": [ROLE], "sub": "eventgrid"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(key: rsa.RSAPrivateKey = SIGNING_KEY, kid: str = KID, alg: str = "RS256", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_the_public_key() -> str:
    """Algorithm confusion: an HMAC 'signature' keyed with the public key's PEM (PyJWT refuses to mint it)."""
    pem = SIGNING_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': KID}).encode())}." \
                    f"{b64(json.dumps(claims()).encode())}"
    return f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"


def unsigned() -> str:
    return jwt.encode(claims(), None, algorithm="none", headers={"kid": KID})


def post(client: TestClient, bearer: str | None, *, key: str = KEY):
    headers = {"content-type": "application/json", "aeg-event-type": "Notification"}
    if bearer is not None:
        headers["authorization"] = f"Bearer {bearer}"
    return client.post(f"/api/events?key={key}", content=json.dumps([EVENT]).encode(), headers=headers)


def test_a_valid_token_and_key_deliver_the_events(client: TestClient, sink: Recorder, jwks: JwksServer,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    good = token()
    with caplog.at_level(logging.DEBUG):
        response = post(client, good)
    assert response.status_code == 200 and response.json() == {"accepted": ["e-1"]}
    assert [a.event.id for a in sink.accepted] == ["e-1"]
    assert post(client, token()).status_code == 200
    assert jwks.requests == 1  # keys are cached
    assert good not in caplog.text


def test_the_v2_issuer_and_ps256_are_accepted_too(client: TestClient, sink: Recorder) -> None:
    assert post(client, token(iss=f"https://login.microsoftonline.com/{TENANT}/v2.0")).status_code == 200
    assert post(client, token(alg="PS256")).status_code == 200
    assert len(sink.accepted) == 2


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda: None, "missing bearer token", id="missing"),
        pytest.param(lambda: token(exp=int(time.time()) - 3600), "token expired", id="expired"),
        pytest.param(lambda: token(nbf=int(time.time()) + 3600), "token not yet valid", id="not yet valid"),
        pytest.param(lambda: token(aud="api://someone-else"), "wrong audience", id="wrong aud"),
        pytest.param(lambda: token(aud=None), "wrong audience", id="no aud"),
        pytest.param(lambda: token(iss="https://sts.windows.net/evil-tenant/"), "untrusted issuer", id="wrong iss"),
        pytest.param(lambda: token(key=OTHER_KEY), "bad signature", id="another key"),
        pytest.param(lambda: token(key=OTHER_KEY, kid="kid-unknown"), "signing key unknown", id="unknown kid"),
        pytest.param(unsigned, "bad signature", id="alg none"),
        pytest.param(hs256_with_the_public_key, "bad signature", id="HS256 with the public key"),
        pytest.param(lambda: token(roles=["SomethingElse"]), "role missing", id="wrong role"),
        pytest.param(lambda: token(roles=None), "role missing", id="no roles"),
        pytest.param(lambda: "not.a.jwt", "malformed token", id="garbage"),
    ],
)
def test_bad_tokens_are_401_with_a_reason_and_nothing_is_handed_on(
        client: TestClient, sink: Recorder, caplog: pytest.LogCaptureFixture, make: Any, reason: str) -> None:
    bearer = make()
    with caplog.at_level(logging.DEBUG):
        response = post(client, bearer)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "Unauthorized"
    assert sink.accepted == []
    assert any(reason in r.getMessage() for r in caplog.records if r.name == "certlc.webhook")
    if bearer:
        assert bearer not in caplog.text and bearer not in response.text
        signature = bearer.split(".")[-1]
        assert not signature or signature not in caplog.text  # not even the signature part


def test_the_shared_key_is_still_required_with_a_valid_token(client: TestClient, sink: Recorder,
                                                             jwks: JwksServer) -> None:
    assert post(client, token(), key="wrong").status_code == 401
    assert sink.accepted == [] and jwks.requests == 0  # no key, no JWKS fetch


def test_the_options_handshake_needs_the_token_too(client: TestClient) -> None:
    headers = {"WebHook-Request-Origin": "eventgrid.azure.net"}
    refused = client.options(f"/api/events?key={KEY}", headers=headers)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    ok = client.options(f"/api/events?key={KEY}", headers={**headers, "Authorization": f"Bearer {token()}"})
    assert ok.status_code == 200 and ok.headers["webhook-allowed-origin"] == "eventgrid.azure.net"


def test_no_role_required_when_configured_empty(jwks: JwksServer, sink: Recorder) -> None:
    client = app_for(jwks.url, sink, required_role="")
    assert post(client, token(roles=None)).status_code == 200


def test_an_unreachable_jwks_endpoint_is_a_503(sink: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    server = JwksServer([jwk(SIGNING_KEY, KID)])
    server.stop()
    client = app_for(server.url, sink)
    bearer = token()
    with caplog.at_level(logging.DEBUG):
        response = post(client, bearer)
    assert response.status_code == 503 and sink.accepted == []
    assert "JWKS unreachable" in caplog.text and bearer not in caplog.text


def test_a_flood_of_unknown_kids_does_not_hammer_the_jwks_endpoint(client: TestClient, sink: Recorder,
                                                                    jwks: JwksServer) -> None:
    assert post(client, token()).status_code == 200
    for _ in range(50):
        assert post(client, token(key=OTHER_KEY, kid=str(uuid.uuid4()))).status_code == 401
    assert jwks.requests <= 2
    assert len(sink.accepted) == 1


# -- the verifier itself --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(url: str, clock: Clock, **kw: Any) -> BearerVerifier:
    return BearerVerifier(EntraSettings.model_validate(entra(url)), clock=clock, timeout=2, **kw)


def test_a_rotated_key_is_fetched_once_the_refresh_interval_has_passed(jwks: JwksServer) -> None:
    clock = Clock()
    v = verifier(jwks.url, clock, min_refresh_seconds=30)
    assert v.verify(token())["aud"] == AUDIENCE
    jwks.keys = [jwk(SIGNING_KEY, KID), jwk(OTHER_KEY, "kid-2")]
    rotated = token(key=OTHER_KEY, kid="kid-2")
    with pytest.raises(TokenRejected, match="signing key unknown"):
        v.verify(rotated)  # within the interval: no refetch
    assert jwks.requests == 1
    clock.now += 31
    assert v.verify(rotated)["iss"] == ISSUER
    for _ in range(20):
        with pytest.raises(TokenRejected, match="signing key unknown"):
            v.verify(token(key=OTHER_KEY, kid=str(uuid.uuid4())))
    assert jwks.requests == 2


def test_cached_keys_outlive_an_outage_and_unknown_keys_then_are_503(jwks: JwksServer) -> None:
    clock = Clock()
    v = verifier(jwks.url, clock, cache_seconds=60, min_refresh_seconds=30)
    v.verify(token())
    jwks.stop()
    clock.now += 120  # cache expired; the refetch fails
    assert v.verify(token())["aud"] == AUDIENCE
    with pytest.raises(KeysUnavailable):
        v.verify(token(key=OTHER_KEY, kid="kid-new"))  # maybe rotated: let Event Grid try again


def test_concurrent_first_deliveries_fetch_the_keys_once(jwks: JwksServer) -> None:
    v = BearerVerifier(EntraSettings.model_validate(entra(jwks.url)))
    tokens = [token() for _ in range(16)]
    barrier = threading.Barrier(len(tokens))
    results: list[object] = []

    def check(t: str) -> None:
        barrier.wait()
        results.append(v.verify(t)["aud"])

    threads = [threading.Thread(target=check, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [AUDIENCE] * len(tokens) and jwks.requests == 1


def test_the_verifier_takes_only_a_bearer_header(jwks: JwksServer) -> None:
    v = BearerVerifier(EntraSettings.model_validate(entra(jwks.url)))
    for header in (None, "", "Basic abc", "Bearer ", "Bearer"):
        with pytest.raises(TokenRejected, match="missing bearer token"):
            v.verify_header(header)
    assert v.verify_header(f"bearer {token()}")["aud"] == AUDIENCE


def test_exp_and_nbf_have_the_configured_leeway(jwks: JwksServer) -> None:
    v = BearerVerifier(EntraSettings.model_validate(entra(jwks.url, leeway_seconds=60)))
    now = int(time.time())
    assert v.verify(token(exp=now - 30))["aud"] == AUDIENCE
    assert v.verify(token(nbf=now + 30))["aud"] == AUDIENCE
    with pytest.raises(TokenRejected, match="token expired"):
        v.verify(token(exp=now - 120))
