"""The Event Grid receiver's HTTP contract (the sink is a recorder here; the queue and Prefect
sink is tested against Azurite and a Prefect server end to end)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence

import pytest
from starlette.testclient import TestClient

from certlc.config import Settings
from certlc.errors import TransientError
from certlc.webhook import AcceptedEvent, create_app

KEY = "s3cr3t-webhook-key"
VERSION = "4b4c39e1f0a84aa0a1e7b5b3c8f7e6d5"
EVENT = {
    "id": "e-1", "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/contoso-certs",
    "subject": "web01", "eventType": "Microsoft.KeyVault.CertificateNearExpiry", "eventTime": "2026-11-23T15:53:16Z",
    "data": {"Id": f"https://contoso-certs.vault.azure.net/certificates/web01/{VERSION}", "VaultName": "contoso-certs",
             "ObjectType": "Certificate", "ObjectName": "web01", "Version": VERSION, "NBF": 1700753990, "EXP": 1701185990},
    "dataVersion": "1", "metadataVersion": "1",
}
CLOUD = {"id": "c-1", "source": EVENT["topic"], "subject": "web01", "type": EVENT["eventType"],
         "time": EVENT["eventTime"], "data": EVENT["data"], "specversion": "1.0"}


class Recorder:
    def __init__(self) -> None:
        self.accepted: list[AcceptedEvent] = []
        self.fail: Exception | None = None

    def accept(self, events: Sequence[AcceptedEvent]) -> None:
        if self.fail:
            raise self.fail
        self.accepted.extend(events)


@pytest.fixture
def sink() -> Recorder:
    return Recorder()


@pytest.fixture
def client(sink: Recorder) -> TestClient:
    settings = Settings.model_validate({"vaults": [{"name": "prod", "url": "https://contoso-certs.vault.azure.net", "ca_profile": "adcs"}],
                                        "ca_profiles": {"adcs": {"kind": "adcs-web"}},
                                        "webhook": {"shared_key": KEY, "max_body_bytes": 4096}})
    return TestClient(create_app(settings, sink))


def post(client: TestClient, body: object, *, key: str | None = KEY, content_type: str = "application/json",
         raw: bytes | None = None):
    url = "/api/events" + (f"?key={key}" if key is not None else "")
    return client.post(url, content=raw if raw is not None else json.dumps(body).encode(),
                       headers={"content-type": content_type, "aeg-event-type": "Notification"})


def test_a_near_expiry_event_is_handed_on_with_its_vault(client: TestClient, sink: Recorder) -> None:
    response = post(client, [EVENT])
    assert response.status_code == 200 and response.json() == {"accepted": ["e-1"]}
    [accepted] = sink.accepted
    assert accepted.vault.name == "prod" and accepted.event.object_name == "web01"


def test_cloud_events_single_and_batched_and_the_key_in_a_header(client: TestClient, sink: Recorder) -> None:
    assert post(client, CLOUD, content_type="application/cloudevents+json").status_code == 200
    batch = [CLOUD, {**CLOUD, "id": "c-2"}]
    response = client.post("/api/events", content=json.dumps(batch),
                           headers={"content-type": "application/cloudevents-batch+json", "x-certlc-key": KEY})
    assert response.status_code == 200
    assert [a.event.id for a in sink.accepted] == ["c-1", "c-1", "c-2"]


def test_the_event_grid_validation_handshake(client: TestClient, sink: Recorder) -> None:
    handshake = [{"id": "v", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "subject": "",
                  "data": {"validationCode": "code-123", "validationUrl": "https://x:553/v"}, "eventTime": "t",
                  "dataVersion": "1", "topic": "t"}]
    response = post(client, handshake)
    assert response.status_code == 200 and response.json() == {"validationResponse": "code-123"}
    assert sink.accepted == []


def test_the_cloud_events_options_handshake(client: TestClient) -> None:
    ok = client.options(f"/api/events?key={KEY}", headers={"WebHook-Request-Origin": "eventgrid.azure.net",
                                                             "WebHook-Request-Rate": "120"})
    assert ok.status_code == 200 and ok.headers["webhook-allowed-origin"] == "eventgrid.azure.net"
    assert ok.headers["webhook-allowed-rate"] == "120" and "POST" in ok.headers["allow"]
    assert client.options(f"/api/events?key={KEY}", headers={"WebHook-Request-Origin": "evil.example"}).status_code == 403
    assert client.options("/api/events", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}).status_code == 401


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        pytest.param({"key": None}, 401, "Unauthorized", id="no key"),
        pytest.param({"key": "wrong"}, 401, "Unauthorized", id="wrong key"),
        pytest.param({"content_type": "text/plain"}, 415, "UnsupportedMediaType", id="not JSON content type"),
        pytest.param({"raw": b"{not json"}, 400, "EventInvalid", id="malformed JSON"),
        pytest.param({"raw": b"[" + b" " * 5000 + b"]"}, 413, "PayloadTooLarge", id="oversized body"),
    ],
)
def test_bad_deliveries_get_the_right_4xx_and_nothing_is_handed_on(
        client: TestClient, sink: Recorder, caplog: pytest.LogCaptureFixture, kwargs: dict, status: int,
        reason: str) -> None:
    with caplog.at_level(logging.WARNING, logger="certlc.webhook"):
        response = post(client, [EVENT], **kwargs)
    assert response.status_code == status and response.json()["error"]["code"] == reason
    assert sink.accepted == []
    assert any(reason in r.getMessage() for r in caplog.records)  # a log line says why
    assert KEY not in caplog.text and KEY not in response.text


def test_an_unmanaged_vault_refuses_the_whole_batch(client: TestClient, sink: Recorder) -> None:
    foreign = copy.deepcopy(EVENT)
    foreign["id"] = "e-2"
    foreign["data"]["Id"] = f"https://other.vault.azure.net/certificates/web01/{VERSION}"
    response = post(client, [EVENT, foreign])
    assert response.status_code == 400 and response.json()["error"]["code"] == "VaultNotManaged"
    assert sink.accepted == []  # checked whole before anything is handed on


def test_an_unhandled_event_type_is_refused_by_name(client: TestClient, sink: Recorder) -> None:
    response = post(client, [{**EVENT, "eventType": "Microsoft.KeyVault.SecretNearExpiry"}])
    assert response.status_code == 400 and "SecretNearExpiry" in response.json()["error"]["message"]


def test_a_new_version_event_is_acknowledged_without_a_renewal(client: TestClient, sink: Recorder) -> None:
    response = post(client, [{**EVENT, "eventType": "Microsoft.KeyVault.CertificateNewVersionCreated"}])
    assert response.status_code == 200 and response.json() == {"accepted": []} and sink.accepted == []


@pytest.mark.parametrize("failure", [TransientError("queue down"), RuntimeError("boom")])
def test_a_sink_failure_is_a_503_so_event_grid_delivers_again(client: TestClient, sink: Recorder,
                                                              failure: Exception) -> None:
    sink.fail = failure
    response = post(client, [EVENT])
    assert response.status_code == 503 and "boom" not in response.text


def test_without_a_configured_key_every_delivery_is_refused(sink: Recorder) -> None:
    settings = Settings.model_validate({"vaults": [{"name": "prod", "url": "https://contoso-certs.vault.azure.net", "ca_profile": "adcs"}],
                                        "ca_profiles": {"adcs": {"kind": "adcs-web"}}})
    client = TestClient(create_app(settings, sink))
    assert post(client, [EVENT], key=None).status_code == 401
    assert post(client, [EVENT], key="anything").status_code == 401
    assert sink.accepted == []


@pytest.mark.parametrize(("case", "status"), [
    ("nested arrays", 400), ("nested objects", 400), ("port out of range", 400), ("port not a number", 400),
    ("newline in id", 400), ("id of 300 characters", 400), ("event too big for a queue message", 413),
    ("handshake mixed with an event", 400),
])
def test_hostile_deliveries_get_a_4xx_and_reach_nothing(client: TestClient, sink: Recorder, case: str,
                                                       status: int, caplog: pytest.LogCaptureFixture) -> None:
    event = copy.deepcopy(EVENT)
    raw = None
    if case == "nested arrays":
        raw = b"[" * 100_000 + b"]" * 100_000
    elif case == "nested objects":
        raw = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    elif case.startswith("port"):
        port = "99999" if case == "port out of range" else "abc"
        event["data"]["Id"] = f"https://contoso-certs.vault.azure.net:{port}/certificates/web01/{VERSION}"
    elif case == "newline in id":
        event["id"] = "e-1\n2026-12-03 INFO certlc.webhook: webhook: accepted forged"
    elif case == "id of 300 characters":
        event["id"] = "x" * 300
    elif case == "event too big for a queue message":
        event["data"]["Padding"] = "p" * 60_000
    else:
        handshake = {"id": "v-1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "subject": "",
                     "data": {"validationCode": "CODE"}, "dataVersion": "1", "eventTime": "2026-11-23T15:53:16Z"}
        raw = json.dumps([handshake, event]).encode()
    settings = Settings.model_validate({"vaults": [{"name": "prod", "url": "https://contoso-certs.vault.azure.net", "ca_profile": "adcs"}],
                                        "ca_profiles": {"adcs": {"kind": "adcs-web"}},
                                        "webhook": {"shared_key": KEY}})
    big_client = TestClient(create_app(settings, sink))
    with caplog.at_level(logging.INFO, logger="certlc.webhook"):
        response = post(big_client, [event], raw=raw)
    assert response.status_code == status, response.text
    assert sink.accepted == []
    assert "accepted forged" not in "\n".join(r.getMessage() for r in caplog.records if "refused" not in r.getMessage())


def test_an_event_the_sink_can_never_hand_on_is_refused_not_retried(client: TestClient, sink: Recorder) -> None:
    from certlc.errors import InvalidInput

    sink.fail = InvalidInput("event does not fit", reason="EventTooLarge")
    response = post(client, [EVENT])
    assert response.status_code == 400 and response.json()["error"]["code"] == "EventTooLarge"
