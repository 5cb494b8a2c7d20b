"""Key Vault events in both envelopes, from webhooks and queues."""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certlc.config import Settings
from certlc.errors import InvalidInput
from certlc.events import (
    MAX_DELIVERY_BYTES,
    EventType,
    KeyVaultEvent,
    UnrecognizedEvent,
    ValidationEvent,
    decode_queue_message,
    encode_queue_message,
    parse_delivery,
    parse_event,
    vault_for,
)

VERSION = "4b4c39e1f0a84aa0a1e7b5b3c8f7e6d5"
EG_EVENT = {
    "id": "975b9cb2-1d7f-4c44-9d27-4f1a3f1b9a11",
    "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/contoso-certs",
    "subject": "web01",
    "eventType": "Microsoft.KeyVault.CertificateNearExpiry",
    "eventTime": "2026-11-23T15:53:16.3658314Z",
    "data": {"Id": f"https://contoso-certs.vault.azure.net/certificates/web01/{VERSION}",
             "VaultName": "contoso-certs", "ObjectType": "Certificate", "ObjectName": "web01",
             "Version": VERSION, "NBF": 1700753990, "EXP": 1701185990},
    "dataVersion": "1",
    "metadataVersion": "1",
}
CLOUD_EVENT = {
    "id": "a1", "source": EG_EVENT["topic"], "subject": "web01", "type": EG_EVENT["eventType"],
    "time": EG_EVENT["eventTime"], "data": EG_EVENT["data"], "specversion": "1.0",
}
SETTINGS = Settings.model_validate({"vaults": [
    {"name": "prod", "url": "https://contoso-certs.vault.azure.net", "ca_profile": "adcs"},
    {"name": "local", "url": "https://localhost:8443", "ca_profile": "adcs"},
], "ca_profiles": {"adcs": {"kind": "adcs-web"}}})


def test_an_event_grid_array_gives_one_key_vault_event() -> None:
    [event] = parse_delivery(json.dumps([EG_EVENT]).encode())
    assert isinstance(event, KeyVaultEvent)
    assert (event.type, event.schema, event.vault_name, event.object_name, event.version) == (
        EventType.NEAR_EXPIRY, "eventgrid", "contoso-certs", "web01", VERSION)
    assert event.expires == dt.datetime(2023, 11, 28, 15, 39, 50, tzinfo=dt.UTC)
    assert event.renewal_key == f"contoso-certs/web01/{VERSION}"


def test_a_single_cloud_event_and_a_cloud_event_batch() -> None:
    [single] = parse_delivery(json.dumps(CLOUD_EVENT).encode())
    assert isinstance(single, KeyVaultEvent) and single.schema == "cloudevents"
    batch = parse_delivery(json.dumps([CLOUD_EVENT, {**CLOUD_EVENT, "id": "a2"}]).encode())
    assert [e.id for e in batch] == ["a1", "a2"]


def test_data_keys_are_matched_loosely_and_timestamps_may_be_strings() -> None:
    # The documentation's sample: camelCase-ish keys, a trailing space, string timestamps.
    event = copy.deepcopy(EG_EVENT)
    event["data"] = {"id": EG_EVENT["data"]["Id"], "vaultName": "contoso-certs", "objectType": "Certificate",
                     "ObjectName ": "web01", "version": VERSION, "nbf": "1700753990", "exp": "1701185990"}
    parsed = parse_event(event)
    assert isinstance(parsed, KeyVaultEvent) and parsed.object_name == "web01"
    assert parsed.not_before == dt.datetime.fromtimestamp(1700753990, dt.UTC)


def test_the_validation_handshake_event() -> None:
    handshake = {"id": "v1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "subject": "",
                 "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                          "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/x"},
                 "dataVersion": "1", "eventTime": "2026-01-01T00:00:00Z", "topic": "t"}
    [event] = parse_delivery(json.dumps([handshake]).encode())
    assert event == ValidationEvent("v1", "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                                    "https://rp-eastus2.eventgrid.azure.net:553/x")


def test_an_event_type_certlc_does_not_handle_is_unrecognized_not_an_error() -> None:
    event = parse_event({**EG_EVENT, "eventType": "Microsoft.KeyVault.SecretNearExpiry"})
    assert event == UnrecognizedEvent(EG_EVENT["id"], "Microsoft.KeyVault.SecretNearExpiry")


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        pytest.param(lambda e: e.pop("id"), "id", id="no id"),
        pytest.param(lambda e: e.update(data="x"), "no data object", id="data not an object"),
        pytest.param(lambda e: e["data"].update(Id="http://contoso-certs.vault.azure.net/certificates/web01/x"),
                     "not a Key Vault certificate URL", id="plain http Id"),
        pytest.param(lambda e: e["data"].update(Id="https://v.vault.azure.net/secrets/web01/x"),
                     "not a Key Vault certificate URL", id="a secret, not a certificate"),
        pytest.param(lambda e: e["data"].update(ObjectName="other"), "its Id is for 'web01'", id="name and Id disagree"),
        pytest.param(lambda e: e["data"].update(ObjectType="Key"), "not a certificate", id="a key event"),
        pytest.param(lambda e: e["data"].update(EXP="soon"), "EXP is not a Unix timestamp", id="bad EXP"),
        pytest.param(lambda e: e["data"].update(EXP=1e300), "EXP is out of range", id="huge EXP"),
        pytest.param(lambda e: e["data"].update(Version="../../x"), "not a Key Vault version id", id="odd version"),
    ],
)
def test_malformed_events_are_refused_with_the_reason(mutate: Any, fragment: str) -> None:
    event = copy.deepcopy(EG_EVENT)
    mutate(event)
    with pytest.raises(InvalidInput) as info:
        parse_event(event)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(b"", "not valid JSON", id="empty"),
        pytest.param(b"{not json", "not valid JSON", id="broken JSON"),
        pytest.param(b"[]", "no events", id="empty array"),
        pytest.param(b"[1]", "must be a JSON object", id="array of numbers"),
        pytest.param(b"\xff\xfe", "not valid JSON", id="not UTF-8"),
        pytest.param(b"[" + b" " * MAX_DELIVERY_BYTES + b"]", "exceeds", id="oversized"),
    ],
)
def test_malformed_deliveries_are_refused(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        parse_delivery(body)


def test_queue_messages_in_base64_and_plain_json_round_trip() -> None:
    for encoded in (True, False):
        text = encode_queue_message(EG_EVENT, base64_encoded=encoded)
        assert text.startswith("{") is not encoded
        assert decode_queue_message(text) == parse_event(EG_EVENT)
    as_array = base64.b64encode(json.dumps([EG_EVENT]).encode()).decode()
    assert decode_queue_message(as_array) == parse_event(EG_EVENT)


@pytest.mark.parametrize("content", ["", "!!!not base64!!!", base64.b64encode(b"not json").decode(),
                                     base64.b64encode(json.dumps([EG_EVENT, EG_EVENT]).encode()).decode(),
                                     "A" * (64 * 1024 + 4)])
def test_poison_queue_messages_are_refused(content: str) -> None:
    with pytest.raises(InvalidInput):
        decode_queue_message(content)


def test_events_map_to_configured_vaults_only_by_their_url() -> None:
    event = parse_event(EG_EVENT)
    assert vault_for(event, SETTINGS).name == "prod"
    local = parse_event({**EG_EVENT, "data": {**EG_EVENT["data"], "Id": f"https://localhost:8443/certificates/web01/{VERSION}"}})
    assert vault_for(local, SETTINGS).name == "local"
    # The right vault name on another host is another vault: refused, never contacted.
    spoof = parse_event({**EG_EVENT, "data": {**EG_EVENT["data"],
                                              "Id": f"https://attacker.example/certificates/web01/{VERSION}"}})
    with pytest.raises(InvalidInput) as info:
        vault_for(spoof, SETTINGS)
    assert info.value.reason == "VaultNotManaged" and "attacker.example" in str(info.value)
    other_port = parse_event({**EG_EVENT, "data": {**EG_EVENT["data"], "Id": f"https://localhost:9/certificates/web01/{VERSION}"}})
    with pytest.raises(InvalidInput):
        vault_for(other_port, SETTINGS)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                           max_leaves=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bodies_only_ever_raise_invalid_input(body: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        parse_delivery(body)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["id", "eventType", "type", "specversion", "data", "subject", "topic"]),
                       json_values, max_size=7), st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_random_event_shapes_only_ever_raise_invalid_input(envelope: dict, data: dict) -> None:
    for candidate in (envelope, {**envelope, "data": data}, {**EG_EVENT, "data": {**EG_EVENT["data"], **data}}):
        with contextlib.suppress(InvalidInput):
            parse_event(candidate)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_queue_messages_only_ever_raise_invalid_input(content: str) -> None:
    with contextlib.suppress(InvalidInput):
        decode_queue_message(content)
