"""The emulator as Event Grid: real deliveries to a webhook served by the test and to Azurite.

The webhook is a small Starlette app on uvicorn (plain http on loopback, which the settings
allow) that records every request and answers by path: ``/ok`` accepts, ``/status/<n>`` answers
``n``, ``/late`` refuses both handshakes until the test lets it consent. Certificates reach the
emulator through the official SDK (import, create + merge), the clock moves through the admin
endpoint, and every delivered body is read back with certlc's own parser.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from azure.keyvault.certificates import CertificatePolicy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from certlc.emulator import EmulatorHandle, get_event_stats, scan_events, set_clock_offset, set_events_enabled
from certlc.emulator.admin import admin_url
from certlc.events import KeyVaultEvent, ValidationEvent, decode_queue_message, parse_delivery
from certlc.stack import _stop, azurite_connection_string, start_azurite

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NEW_VERSION = "Microsoft.KeyVault.CertificateNewVersionCreated"
NEAR_EXPIRY = "Microsoft.KeyVault.CertificateNearExpiry"
EXPIRED = "Microsoft.KeyVault.CertificateExpired"
ALL_TYPES = [NEW_VERSION, NEAR_EXPIRY, EXPIRED]
EmulatorFactory = Callable[..., EmulatorHandle]
Connect = Callable[..., Any]


# The webhook the emulator delivers to ---------------------------------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def kind(self) -> str:
        return "options" if self.method == "OPTIONS" else self.headers.get("aeg-event-type", "")


@dataclass
class Webhook:
    base: str = ""
    requests: list[Seen] = field(default_factory=list)
    late_consent: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, key: str = "s3cr3t") -> str:
        return f"{self.base}{path}?key={key}"

    def seen(self, path: str, kind: str | None = None) -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if r.path == path and (kind is None or r.kind == kind)]

    def events(self, path: str) -> list[KeyVaultEvent]:
        found = []
        for request in self.seen(path, "Notification"):
            found += [e for e in parse_delivery(request.body) if isinstance(e, KeyVaultEvent)]
        return found


def _app(hook: Webhook) -> Starlette:
    async def record(request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        with hook.lock:
            hook.requests.append(Seen(request.method, path, request.url.query, dict(request.headers), body))
        consent = path != "/late" or hook.late_consent
        if request.method == "OPTIONS":
            if not consent:
                return Response(status_code=405)
            return Response(headers={"WebHook-Allowed-Origin": request.headers.get("webhook-request-origin", ""),
                                     "Allow": "POST"})
        if request.headers.get("aeg-event-type") == "SubscriptionValidation":
            if not consent:
                return Response(status_code=404)
            [event] = parse_delivery(body)
            assert isinstance(event, ValidationEvent)
            return JSONResponse({"validationResponse": event.validation_code})
        if path.startswith("/status/"):
            return Response(status_code=int(path.rsplit("/", 1)[1]))
        return Response(status_code=200)

    return Starlette(routes=[Route("/{rest:path}", record, methods=["GET", "POST", "OPTIONS"])])


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    hook.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(_app(hook), log_config=None, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the test webhook to start")
    yield hook
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, port = start_azurite(ROOT, tmp_path_factory.mktemp("azurite") / "azurite.log")
    yield azurite_connection_string(port)
    _stop(proc)


# Helpers ----------------------------------------------------------------------------------------------
def wait_for(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def pfx(cn: str, days_left: float) -> bytes:
    """A self-signed certificate and key (PKCS#12, no password) with ``days_left`` of validity."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days_left)).sign(key, hashes.SHA256())
    )
    return pkcs12.serialize_key_and_certificates(b"x", key, cert, None, serialization.NoEncryption())


def webhook_sub(name: str, endpoint: str, schema: str = "eventgrid", **kw: Any) -> dict[str, Any]:
    return {"name": name, "destination": "webhook", "endpoint": endpoint, "event_schema": schema,
            "dead_letter_delay_seconds": 0, **kw}


def dead_letters(directory: Path, subscription: str) -> list[tuple[Path, list[dict[str, Any]]]]:
    return [(p, json.loads(p.read_text())) for p in sorted((directory / subscription.upper()).rglob("*.json"))]


def stats_of(handle: EmulatorHandle, name: str) -> dict[str, Any]:
    return next(s for s in get_event_stats(handle.state_dir)["subscriptions"] if s["name"] == name)


# Tests ---------------------------------------------------------------------------------------------------
def test_handshakes_come_first_and_every_destination_gets_new_version_created(
    emulator_factory: EmulatorFactory, emulator_connect: Connect, webhook: Webhook, azurite: str,
) -> None:
    handle = emulator_factory(subscriptions=[
        webhook_sub("eg-hook", webhook.url("/ok"), max_events_per_batch=5),
        webhook_sub("ce-hook", webhook.url("/ok-ce"), "cloudevents"),
        webhook_sub("ce-batch", webhook.url("/ok-ce-batch"), "cloudevents", max_events_per_batch=10),
        {"name": "queue-b64", "destination": "storage_queue", "queue_connection_string": azurite,
         "queue_name": "events-b64", "queue_message_ttl_seconds": 3600},
        {"name": "queue-plain", "destination": "storage_queue", "queue_connection_string": azurite,
         "queue_name": "events-plain", "queue_base64": False, "event_schema": "cloudevents"},
        webhook_sub("expiry-only", webhook.url("/ok-expiry"), event_types=[NEAR_EXPIRY]),
    ])
    certificates, _ = emulator_connect(handle.endpoints)
    imported = certificates.import_certificate("web01", pfx("web01", 200))
    vault_url = handle.endpoints.vault_urls["demo"]

    eg = wait_for(lambda: webhook.events("/ok"), "the Event Grid schema delivery")
    ce = wait_for(lambda: webhook.events("/ok-ce"), "the CloudEvents delivery")
    batch = wait_for(lambda: webhook.events("/ok-ce-batch"), "the CloudEvents batch delivery")
    [event] = eg
    assert event.type == NEW_VERSION and event.schema == "eventgrid"
    assert event.object_id == f"{vault_url}/certificates/web01/{imported.properties.version}"
    assert (event.vault_name, event.object_name, event.version) == ("demo", "web01", imported.properties.version)
    assert event.expires == imported.properties.expires_on and event.not_before == imported.properties.not_before
    assert event.topic == ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/certlc-local"
                           "/providers/Microsoft.KeyVault/vaults/demo")
    assert [e.id for e in ce] == [event.id] == [e.id for e in batch]  # one event, one id everywhere
    assert ce[0].schema == "cloudevents"

    # The handshake came before the first delivery, on each webhook, with Event Grid's headers.
    assert [r.kind for r in webhook.seen("/ok")] == ["SubscriptionValidation", "Notification"]
    assert [r.kind for r in webhook.seen("/ok-ce")] == ["options", "Notification"]
    [options] = webhook.seen("/ok-ce", "options")
    assert options.headers["webhook-request-origin"] == "eventgrid.azure.net"
    [post] = webhook.seen("/ok", "Notification")
    assert post.query == "key=s3cr3t"
    assert post.headers["content-type"] == "application/json; charset=utf-8"
    assert isinstance(json.loads(post.body), list)
    assert post.headers["aeg-subscription-name"] == "EG-HOOK" and post.headers["aeg-delivery-count"] == "0"
    assert post.headers["aeg-data-version"] == "1" and post.headers["aeg-metadata-version"] == "1"
    assert json.loads(post.body)[0]["data"] == {
        "Id": event.object_id, "VaultName": "demo", "ObjectType": "Certificate", "ObjectName": "web01",
        "Version": imported.properties.version, "NBF": int(event.not_before.timestamp()),
        "EXP": int(event.expires.timestamp())}
    [ce_post] = webhook.seen("/ok-ce", "Notification")
    assert ce_post.headers["content-type"] == "application/cloudevents+json; charset=utf-8"
    assert ce_post.headers["origin"] == "eventgrid.azure.net"
    assert json.loads(ce_post.body)["specversion"] == "1.0"  # one object, not an array
    [batch_post] = webhook.seen("/ok-ce-batch", "Notification")
    assert batch_post.headers["content-type"] == "application/cloudevents-batch+json; charset=utf-8"
    assert isinstance(json.loads(batch_post.body), list)
    assert webhook.seen("/ok-expiry", "Notification") == []  # filtered out by event_types

    # Storage queues: one event per message, base64 JSON by default, plain JSON when asked.
    from azure.storage.queue import QueueClient

    b64 = QueueClient.from_connection_string(azurite, "events-b64")
    plain = QueueClient.from_connection_string(azurite, "events-plain")
    [b64_message] = wait_for(lambda: list(b64.receive_messages()), "the base64 queue message")
    [plain_message] = wait_for(lambda: list(plain.receive_messages()), "the plain queue message")
    assert json.loads(base64.b64decode(b64_message.content))["eventType"] == NEW_VERSION
    assert plain_message.content.startswith("{") and json.loads(plain_message.content)["specversion"] == "1.0"
    for message in (b64_message, plain_message):
        decoded = decode_queue_message(message.content)
        assert isinstance(decoded, KeyVaultEvent) and decoded.id == event.id
    assert b64_message.expires_on - b64_message.inserted_on <= dt.timedelta(seconds=3600)

    # A merge creates a version too.
    operation = certificates.begin_create_certificate(
        "merged", CertificatePolicy(issuer_name="Unknown", subject="CN=merged", key_type="EC", key_curve_name="P-256")
    ).result()
    csr = x509.load_der_x509_csr(bytes(operation.csr))
    merged = certificates.merge_certificate("merged", [_sign(csr)])
    second = wait_for(lambda: [e for e in webhook.events("/ok") if e.object_name == "merged"], "the merge's event")
    assert [(e.type, e.version) for e in second] == [(NEW_VERSION, merged.properties.version)]
    # The create itself (pending, no certificate yet) published nothing.
    assert len(webhook.events("/ok")) == 2
    # A self-issued create has its version at once.
    issued = certificates.begin_create_certificate(
        "self-issued", CertificatePolicy(issuer_name="Self", subject="CN=self", key_type="EC", key_curve_name="P-256"),
        _polling_interval=0).result()
    third = wait_for(lambda: [e for e in webhook.events("/ok") if e.object_name == "self-issued"], "the create's event")
    assert [(e.type, e.version) for e in third] == [(NEW_VERSION, issued.properties.version)]
    stats = stats_of(handle, "eg-hook")
    assert stats["validated"] and stats["delivered"] == 3 and stats["pending"] == 0
    assert "s3cr3t" not in json.dumps(get_event_stats(handle.state_dir))


def _sign(csr: x509.CertificateSigningRequest) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    cert = (
        x509.CertificateBuilder().subject_name(csr.subject).issuer_name(issuer).public_key(csr.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=90)).sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_shifting_the_clock_fires_near_expiry_once_then_expired_once(
    emulator_factory: EmulatorFactory, emulator_connect: Connect, webhook: Webhook, tmp_path: Path,
) -> None:
    options: dict[str, Any] = {"event_scan_seconds": 0.1, "subscriptions": [
        webhook_sub("clock", webhook.url("/clock"), event_types=[NEAR_EXPIRY, EXPIRED])]}
    state = tmp_path / "state"
    handle = emulator_factory(state_dir=state, **options)
    certificates, _ = emulator_connect(handle.endpoints)
    version = certificates.import_certificate("soon", pfx("soon", 40)).properties.version
    certificates.import_certificate("later", pfx("later", 300))

    time.sleep(0.4)  # several scans: 40 days left is outside the 30-day window
    assert webhook.events("/clock") == []
    clock = set_clock_offset(handle.state_dir, "15d")
    assert clock["offset_seconds"] == 15 * 86400
    [near] = wait_for(lambda: webhook.events("/clock"), "NearExpiry after the clock shift")
    assert (near.type, near.object_name, near.version) == (NEAR_EXPIRY, "soon", version)
    assert near.time.startswith((dt.datetime.now(dt.UTC) + dt.timedelta(days=15)).strftime("%Y-%m-%d"))

    time.sleep(0.4)  # more scans fire nothing again
    assert scan_events(handle.state_dir) == 0
    handle.stop()
    restarted = emulator_factory(state_dir=state, clock_offset="15d", **options)
    time.sleep(0.4)
    assert scan_events(restarted.state_dir) == 0  # remembered across the restart
    assert len(webhook.events("/clock")) == 1

    set_clock_offset(restarted.state_dir, "41d")
    expired = wait_for(lambda: [e for e in webhook.events("/clock") if e.type == EXPIRED], "Expired")
    assert [(e.object_name, e.version) for e in expired] == [("soon", version)]
    time.sleep(0.3)
    assert [e.type for e in webhook.events("/clock")] == [NEAR_EXPIRY, EXPIRED]


@pytest.mark.parametrize(("status", "schema", "outcome"), [
    (400, "eventgrid", "BadRequest"), (401, "cloudevents", "Unauthorized"), (413, "eventgrid", "PayloadTooLarge"),
])
def test_an_answer_event_grid_does_not_retry_is_dead_lettered_at_once(
    emulator_factory: EmulatorFactory, emulator_connect: Connect, webhook: Webhook, tmp_path: Path,
    status: int, schema: str, outcome: str,
) -> None:
    path, name = f"/status/{status}", f"refused-{status}"
    handle = emulator_factory(subscriptions=[webhook_sub(name, webhook.url(path), schema)])
    certificates, _ = emulator_connect(handle.endpoints)
    certificates.import_certificate("refused", pfx("refused", 200))

    directory = handle.state_dir / "deadletter"
    [(file, letters)] = wait_for(lambda: dead_letters(directory, name), "the dead-letter file")
    now = dt.datetime.now(dt.UTC)
    assert file.relative_to(directory).parts[:-1] == (
        name.upper(), str(now.year), str(now.month), str(now.day), str(now.hour))
    assert file.stat().st_mode & 0o777 == 0o600
    [letter] = letters
    if schema == "eventgrid":
        assert letter["eventType"] == NEW_VERSION
        assert (letter["deadLetterReason"], letter["lastDeliveryOutcome"], letter["deliveryAttempts"]) == (
            outcome, outcome, 1)
        assert letter["publishTime"] and letter["lastDeliveryAttemptTime"]
    else:
        assert letter["type"] == NEW_VERSION
        assert (letter["deadletterreason"], letter["lastdeliveryoutcome"], letter["deliveryattempts"]) == (
            outcome, outcome, 1)
        assert letter["publishtime"] and letter["lastdeliveryattempttime"]
    assert len(webhook.seen(path, "Notification")) == 1  # not retried
    stats = stats_of(handle, name)
    assert (stats["dead_lettered"], stats["retries"], stats["pending"], stats["last_outcome"]) == (1, 0, 0, outcome)


def test_a_server_error_is_retried_then_dead_lettered(
    emulator_factory: EmulatorFactory, emulator_connect: Connect, webhook: Webhook, tmp_path: Path,
) -> None:
    directory = tmp_path / "letters"
    handle = emulator_factory(subscriptions=[webhook_sub(
        "flaky", webhook.url("/status/500"), max_delivery_attempts=3, retry_time_scale=0.01,
        dead_letter_dir=str(directory))])
    certificates, _ = emulator_connect(handle.endpoints)
    certificates.import_certificate("flaky", pfx("flaky", 200))

    [(_, [letter])] = wait_for(lambda: dead_letters(directory, "flaky"), "the dead letter after three attempts")
    assert letter["deadLetterReason"] == "MaxDeliveryAttemptsExceeded"
    assert letter["lastDeliveryOutcome"] == "GenericError" and letter["deliveryAttempts"] == 3
    attempts = webhook.seen("/status/500", "Notification")
    assert [r.headers["aeg-delivery-count"] for r in attempts] == ["0", "1", "2"]
    stats = stats_of(handle, "flaky")
    assert (stats["retries"], stats["dead_lettered"], stats["delivered"]) == (2, 1, 0)


def test_events_are_held_until_the_handshake_succeeds(
    emulator_factory: EmulatorFactory, emulator_connect: Connect, webhook: Webhook,
) -> None:
    handle = emulator_factory(event_scan_seconds=0.1, subscriptions=[webhook_sub("late", webhook.url("/late"))])
    certificates, _ = emulator_connect(handle.endpoints)
    certificates.import_certificate("held", pfx("held", 200))
    wait_for(lambda: len(webhook.seen("/late", "SubscriptionValidation")) >= 2, "handshake retries")
    stats = stats_of(handle, "late")
    assert not stats["validated"] and stats["pending"] == 1
    assert webhook.seen("/late", "Notification") == []

    webhook.late_consent = True
    [event] = wait_for(lambda: webhook.events("/late"), "the held event")
    assert event.object_name == "held"
    kinds = [r.kind for r in webhook.seen("/late")]
    assert kinds[-1] == "Notification" and set(kinds[:-1]) == {"SubscriptionValidation"}


def test_paused_delivery_sends_nothing_and_drops_what_happened_meanwhile(
    emulator_factory: EmulatorFactory, emulator_connect: Connect, webhook: Webhook,
) -> None:
    handle = emulator_factory(event_scan_seconds=0.1, subscriptions=[webhook_sub("paused", webhook.url("/paused"))])
    certificates, _ = emulator_connect(handle.endpoints)
    assert set_events_enabled(handle.state_dir, False)["enabled"] is False
    certificates.import_certificate("quiet", pfx("quiet", 20))  # NewVersionCreated and NearExpiry, both dropped
    set_clock_offset(handle.state_dir, "30d")  # and Expired
    time.sleep(0.4)
    assert webhook.seen("/paused", "Notification") == []

    set_events_enabled(handle.state_dir, True)
    time.sleep(0.4)
    assert webhook.seen("/paused", "Notification") == []  # not published later
    certificates.import_certificate("loud", pfx("loud", 200))
    [event] = wait_for(lambda: webhook.events("/paused"), "an event after resuming")
    assert (event.type, event.object_name) == (NEW_VERSION, "loud")


def test_the_admin_endpoint_needs_the_identity_header_and_a_valid_offset(emulator_factory: EmulatorFactory) -> None:
    handle = emulator_factory()
    endpoints = handle.endpoints
    url = admin_url(endpoints, "clock")
    assert httpx.get(url).status_code == 401
    assert httpx.put(url, json={"offset": "1d"}, headers={"X-IDENTITY-HEADER": "guess"}).status_code == 401
    good = {"X-IDENTITY-HEADER": endpoints.identity_header}
    bad = httpx.put(url, json={"offset": "soon"}, headers=good)
    assert bad.status_code == 400 and "soon" in bad.json()["message"]
    assert httpx.put(url, json={}, headers=good).status_code == 400
    assert httpx.put(admin_url(endpoints, "events"), json={"enabled": "no"}, headers=good).status_code == 400
    assert httpx.put(url, json={"offset": 3600}, headers=good).json()["offset_seconds"] == 3600
    assert handle.clock.offset_seconds == 3600
    assert get_event_stats(handle.state_dir)["subscriptions"] == []
