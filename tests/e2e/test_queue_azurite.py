"""The renewal queue against a real Azurite: Event Grid's encodings, visibility, duplicates and
the dead-letter queue."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from certlc.config import Settings
from certlc.queue import RenewalQueue, queue_clients
from certlc.stack import _stop, azurite_connection_string, start_azurite

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
VERSION = "4b4c39e1f0a84aa0a1e7b5b3c8f7e6d5"


def event(event_id: str, name: str = "web01", version: str = VERSION) -> dict:
    return {"id": event_id, "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v",
            "subject": name, "eventType": "Microsoft.KeyVault.CertificateNearExpiry", "eventTime": "2026-11-23T15:53:16Z",
            "data": {"Id": f"https://v.vault.azure.net/certificates/{name}/{version}", "VaultName": "v",
                     "ObjectType": "Certificate", "ObjectName": name, "Version": version, "NBF": 1, "EXP": 2},
            "dataVersion": "1", "metadataVersion": "1"}


@pytest.fixture(scope="module")
def azurite_port(tmp_path_factory: pytest.TempPathFactory):
    proc, port = start_azurite(ROOT, tmp_path_factory.mktemp("azurite") / "azurite.log")
    yield port
    _stop(proc)


@pytest.fixture
def queue(azurite_port: int, request: pytest.FixtureRequest) -> RenewalQueue:
    name = "q" + str(abs(hash(request.node.name)))[:12]
    settings = Settings.model_validate({"queue": {
        "connection_string": azurite_connection_string(azurite_port), "name": name,
        "dead_letter_name": name + "-poison", "visibility_timeout_seconds": 30, "max_dequeues": 2}})
    q = RenewalQueue(*queue_clients(settings), settings.queue)
    q.ensure()
    q.ensure()  # idempotent
    return q


def test_base64_and_plain_json_messages_are_both_read(queue: RenewalQueue) -> None:
    queue.send(event("a"), base64_encoded=True)
    queue.send(event("b", name="api"), base64_encoded=False)
    events, poison = queue.receive()
    assert poison == []
    assert sorted(e.event.id for e in events) == ["a", "b"]
    for item in events:
        queue.complete(item)
    assert queue.depth() == 0


def test_a_received_message_stays_hidden_until_completed_or_released(queue: RenewalQueue) -> None:
    queue.send(event("a"))
    [item], _ = queue.receive()
    assert queue.receive() == ([], [])  # hidden while its renewal runs
    queue.release(item)  # the renewal failed: visible again at once
    [again], _ = queue.receive()
    assert again.message_id == item.message_id and again.dequeue_count == 2
    queue.complete(again)
    assert queue.depth() == 0


def test_duplicates_of_one_certificate_version_collapse_to_one(queue: RenewalQueue) -> None:
    for i in range(5):
        queue.send(event(f"dup-{i}"), base64_encoded=i % 2 == 0)
    queue.send(event("other", version="0" * 32))
    events, poison = queue.receive()
    assert poison == [] and len(events) == 2
    assert queue.depth() == 2  # the three extra copies were completed at once


def test_poison_messages_go_to_the_dead_letter_queue(queue: RenewalQueue) -> None:
    queue.queue.send_message("this is not an event")
    queue.send(event("retried"))
    events, poison = queue.receive()
    assert [p.reason for p in poison] == ["queue message is neither JSON nor base64 of JSON"]
    queue.dead_letter(poison[0])
    # The readable one fails twice (released each time); the third receive exceeds max_dequeues=2.
    for _ in range(2):
        queue.release(events[0])
        events, poison = queue.receive()
    assert events == [] and len(poison) == 1 and "received 3 times" in poison[0].reason
    queue.dead_letter(poison[0])
    assert queue.depth() == 0
    dead = list(queue.dead_letter_queue.receive_messages(max_messages=10))
    contents = sorted(m.content for m in dead)
    assert "this is not an event" in contents
    assert any(json.loads(base64.b64decode(c))["id"] == "retried" for c in contents if c != "this is not an event")


def test_completing_with_an_expired_receipt_says_so_and_the_message_survives(queue: RenewalQueue) -> None:
    import time

    queue.send(event("stale-1"))
    first = list(queue.queue.receive_messages(visibility_timeout=1))
    assert len(first) == 1
    time.sleep(1.5)  # the renewal outlived the visibility timeout: someone else receives it
    events, _ = queue.receive()
    assert [e.event.id for e in events] == ["stale-1"]
    stale = type(events[0])(first[0].id, first[0].pop_receipt, 1, events[0].event, events[0].content)
    assert queue.complete(stale) is False
    assert queue.complete(events[0]) is True
    assert queue.depth() == 0
