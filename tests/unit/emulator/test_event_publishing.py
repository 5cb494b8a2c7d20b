"""Event Grid in the emulator, without servers: envelopes, the clock, what is due, the retry
schedule, dead-letter files, and a subscription worker driven by a fake sender and fake time."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certlc.config import EmulatorSettings, EventSubscriptionSettings
from certlc.emulator.clock import EmulatorClock, parse_offset
from certlc.emulator.deadletter import DeadLetter, dead_letter_path, dead_lettered_event, write_dead_letters
from certlc.emulator.delivery import Gate, SubscriptionWorker
from certlc.emulator.events import (
    EXPIRED,
    NEAR_EXPIRY,
    NEW_VERSION,
    EmulatorEvent,
    certificate_event,
    event_time,
    to_cloudevent,
    to_eventgrid,
)
from certlc.emulator.expiry import CurrentVersion, FiredSet, due_events
from certlc.emulator.outbox import Outbox, OutboxEntry
from certlc.emulator.publisher import EventPublisher
from certlc.emulator.retry import outcome_for_status, retry_delay, ttl_seconds
from certlc.emulator.senders import Attempt, display_endpoint
from certlc.emulator.store import Certificate, VaultState, Version
from certlc.events import KeyVaultEvent, decode_queue_message, encode_queue_message, parse_delivery, parse_event

DAY = 86400
T0 = 1_800_000_000.0  # a fixed "real" time
MOMENT = dt.datetime(2027, 1, 15, 9, 30, 5, 123456, tzinfo=dt.UTC)


def event(event_type: str = NEW_VERSION, name: str = "web01") -> EmulatorEvent:
    return certificate_event(event_type, "demo", "https://localhost:8443", name, "a" * 32, 1_700_000_000,
                             1_710_000_000, MOMENT)


# Envelopes --------------------------------------------------------------------------------------------
def test_both_envelopes_carry_key_vault_data_and_certlc_parses_them() -> None:
    e = event(NEAR_EXPIRY)
    eg, ce = to_eventgrid(e), to_cloudevent(e)
    topic = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/certlc-local/providers/Microsoft.KeyVault/vaults/demo"
    assert eg == {"id": e.id, "topic": topic, "subject": "web01", "eventType": NEAR_EXPIRY,
                  "eventTime": "2027-01-15T09:30:05.1234560Z", "data": e.data, "dataVersion": "1", "metadataVersion": "1"}
    assert ce == {"id": e.id, "source": topic, "subject": "web01", "type": NEAR_EXPIRY,
                  "time": "2027-01-15T09:30:05.1234560Z", "data": e.data, "specversion": "1.0"}
    assert e.data == {"Id": f"https://localhost:8443/certificates/web01/{'a' * 32}", "VaultName": "demo",
                      "ObjectType": "Certificate", "ObjectName": "web01", "Version": "a" * 32,
                      "NBF": 1_700_000_000, "EXP": 1_710_000_000}
    for envelope, schema in ((eg, "eventgrid"), (ce, "cloudevents")):
        parsed = parse_event(envelope)
        assert isinstance(parsed, KeyVaultEvent)
        assert (parsed.schema, parsed.vault_name, parsed.object_name, parsed.version) == (schema, "demo", "web01", "a" * 32)
        assert parsed.expires == dt.datetime.fromtimestamp(1_710_000_000, dt.UTC)
        for base64_encoded in (True, False):
            assert decode_queue_message(encode_queue_message(envelope, base64_encoded=base64_encoded)) == parsed
    [delivered] = parse_delivery(json.dumps([eg]).encode())
    assert isinstance(delivered, KeyVaultEvent) and delivered.id == e.id
    assert EmulatorEvent.from_json(json.loads(json.dumps(e.to_json()))) == e


def test_event_time_has_seven_fractional_digits_in_utc() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", event_time(dt.datetime.now(dt.UTC)))
    assert event_time(dt.datetime(2027, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == "2027-01-01T00:00:00.0000000Z"


def test_every_event_gets_its_own_id() -> None:
    assert event().id != event().id


def test_display_endpoint_never_shows_the_key() -> None:
    assert display_endpoint("https://user:pw@hook.example:8443/api/events?key=s3cret#x") == "https://hook.example:8443/api/events"


# The clock --------------------------------------------------------------------------------------------
def test_the_clock_adds_its_offset_and_tells_listeners() -> None:
    clock = EmulatorClock(parse_offset("25d"), real=lambda: T0)
    assert clock() == clock.now() == T0 + 25 * DAY
    seen: list[float] = []
    clock.on_change(seen.append)
    clock.set_offset(parse_offset("-1h"))
    assert clock.now() == T0 - 3600 and seen == [-3600]
    assert clock.now_datetime() == dt.datetime.fromtimestamp(T0 - 3600, dt.UTC)
    with pytest.raises(ValueError, match="soon"):
        parse_offset("soon")


# What is due --------------------------------------------------------------------------------------------
def version(exp: float, name: str = "web01") -> CurrentVersion:
    return CurrentVersion("Demo", name, "B" * 32, int(exp - 90 * DAY), int(exp))


def test_near_expiry_is_due_30_days_before_exp_and_expired_at_exp(tmp_path: Path) -> None:
    fired = FiredSet(tmp_path)
    v = version(T0 + 40 * DAY)
    assert due_events(v, T0, fired) == []
    assert due_events(v, T0 + 10 * DAY - 1, fired) == []
    assert due_events(v, T0 + 10 * DAY, fired) == [NEAR_EXPIRY]
    assert due_events(v, T0 + 40 * DAY, fired) == [NEAR_EXPIRY, EXPIRED]  # first seen already expired


def test_each_event_fires_once_per_version_even_after_a_restart(tmp_path: Path) -> None:
    fired = FiredSet(tmp_path)
    v = version(T0 + 20 * DAY)
    fired.add([(t, v.key) for t in due_events(v, T0, fired)], MOMENT)
    assert due_events(v, T0, fired) == []
    assert due_events(v, T0 + 20 * DAY, fired) == [EXPIRED]
    again = FiredSet(tmp_path)  # what a restarted emulator loads
    assert again.has(NEAR_EXPIRY, v.key) and due_events(v, T0 + 20 * DAY, again) == [EXPIRED]
    assert v.key == f"demo/web01/{'b' * 32}"  # names are case-insensitive
    assert stat.S_IMODE((tmp_path / "fired.json").stat().st_mode) == 0o600
    newer = CurrentVersion("Demo", "web01", "c" * 32, 0, int(T0 + 20 * DAY))
    assert due_events(newer, T0, again) == [NEAR_EXPIRY]  # a new version has its own events


# Retry schedule and outcomes ----------------------------------------------------------------------------
def test_the_retry_schedule_is_event_grids_scaled() -> None:
    assert [retry_delay(n) for n in range(1, 12)] == [
        10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, 43200]
    assert retry_delay(2, 0.01) == pytest.approx(0.3)
    assert ttl_seconds(1440, 0.5) == 1440 * 30
    with pytest.raises(ValueError):
        retry_delay(0)


@pytest.mark.parametrize(("status", "outcome"), [
    (200, "Success"), (204, "Success"), (400, "BadRequest"), (401, "Unauthorized"), (403, "Forbidden"),
    (404, "NotFound"), (408, "TimedOut"), (413, "PayloadTooLarge"), (503, "Busy"), (500, "GenericError"),
    (302, "GenericError"),
])
def test_outcome_names(status: int, outcome: str) -> None:
    assert outcome_for_status(status) == outcome


# Dead letters ---------------------------------------------------------------------------------------------
def test_dead_letter_paths_follow_event_grids_blob_layout(tmp_path: Path) -> None:
    moment = dt.datetime(2027, 3, 4, 5, 6, tzinfo=dt.UTC)
    path = dead_letter_path(tmp_path, "My-Sub", moment, "x")
    assert path == tmp_path / "MY-SUB" / "2027" / "3" / "4" / "5" / "x.json"
    assert dead_letter_path(tmp_path, "../evil", moment, "x").relative_to(tmp_path).parts[0] == "___EVIL"


def test_dead_lettered_events_get_the_properties_of_their_schema(tmp_path: Path) -> None:
    letter = DeadLetter("MaxDeliveryAttemptsExceeded", 30, "Busy", "p", "l")
    eg = dead_lettered_event(to_eventgrid(event()), "eventgrid", letter)
    assert {k: eg[k] for k in ("deadLetterReason", "deliveryAttempts", "lastDeliveryOutcome", "publishTime",
                               "lastDeliveryAttemptTime")} == {
        "deadLetterReason": "MaxDeliveryAttemptsExceeded", "deliveryAttempts": 30, "lastDeliveryOutcome": "Busy",
        "publishTime": "p", "lastDeliveryAttemptTime": "l"}
    ce = dead_lettered_event(to_cloudevent(event()), "cloudevents", letter)
    assert (ce["deadletterreason"], ce["deliveryattempts"], ce["lastdeliveryoutcome"], ce["publishtime"],
            ce["lastdeliveryattempttime"]) == ("MaxDeliveryAttemptsExceeded", 30, "Busy", "p", "l")
    assert isinstance(parse_event(ce), KeyVaultEvent)  # still an event to certlc
    path = write_dead_letters(tmp_path / "dl", "sub", [eg, eg], MOMENT)
    assert json.loads(path.read_text()) == [eg, eg]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.relative_to(tmp_path / "dl").parts[:5] == ("SUB", "2027", "1", "15", "9")


# A subscription worker with a fake sender and fake time -------------------------------------------------
@dataclass
class FakeSender:
    answers: list[Attempt]
    batch_size: int = 1
    needs_handshake: bool = True
    consent: bool = True
    handshakes: int = 0
    sent: list[tuple[list[str], int]] = field(default_factory=list)

    def handshake(self) -> str | None:
        self.handshakes += 1
        return None if self.consent else "no consent"

    def send(self, events: Sequence[EmulatorEvent], delivery_count: int) -> Attempt:
        self.sent.append(([e.id for e in events], delivery_count))
        return self.answers.pop(0) if self.answers else Attempt("Success", retry=False)

    def close(self) -> None:
        pass


class FakeTime:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def worker(tmp_path: Path, sender: FakeSender, real: FakeTime, **sub: Any) -> SubscriptionWorker:
    settings = EventSubscriptionSettings(**{"name": "hook", "destination": "webhook",
                                            "endpoint": "http://127.0.0.1:1/x?key=k", "dead_letter_delay_seconds": 0,
                                            **sub})
    return SubscriptionWorker(settings, Outbox(tmp_path / "outbox", "hook"), sender, EmulatorClock(real=real),
                              Gate(), tmp_path / "dl", retry_seconds=5, real_time=real)


def enqueue(w: SubscriptionWorker, real: FakeTime, *events: EmulatorEvent) -> None:
    w.outbox.add([OutboxEntry(event=e, published_at=real(), publish_time="p", next_attempt=real()) for e in events])


def letters(tmp_path: Path) -> list[dict[str, Any]]:
    return [item for p in sorted((tmp_path / "dl").rglob("*.json")) for item in json.loads(p.read_text())]


def test_nothing_is_sent_until_the_handshake_succeeds(tmp_path: Path) -> None:
    real, sender = FakeTime(), FakeSender([], consent=False)
    w = worker(tmp_path, sender, real)
    enqueue(w, real, event())
    assert w.step() == 5 and sender.sent == [] and not w.validated
    sender.consent = True
    w.step()
    assert w.validated and len(sender.sent) == 1 and w.stats()["delivered"] == 1
    w.step()
    assert sender.handshakes == 2  # once validated, no more handshakes


def test_failures_are_retried_on_schedule_until_max_attempts(tmp_path: Path) -> None:
    real = FakeTime()
    sender = FakeSender([Attempt("GenericError", retry=True)] * 3)
    w = worker(tmp_path, sender, real, max_delivery_attempts=3, retry_time_scale=0.5)
    e = event()
    enqueue(w, real, e)
    assert w.step() == 0
    assert w.step() == pytest.approx(5)  # 10 s scaled by 0.5
    real.now += 5
    w.step()
    assert w.step() == pytest.approx(15)
    real.now += 15
    w.step()
    w.step()  # the dead letter is written (no delay)
    assert [count for _, count in sender.sent] == [0, 1, 2]
    [letter] = letters(tmp_path)
    assert (letter["id"], letter["deadLetterReason"], letter["deliveryAttempts"], letter["lastDeliveryOutcome"]) == (
        e.id, "MaxDeliveryAttemptsExceeded", 3, "GenericError")
    stats = w.stats()
    assert (stats["retries"], stats["dead_lettered"], stats["pending"]) == (2, 1, 0)


def test_an_answer_not_retried_is_dead_lettered_after_the_delay(tmp_path: Path) -> None:
    real, sender = FakeTime(), FakeSender([Attempt("Unauthorized", retry=False)])
    w = worker(tmp_path, sender, real, dead_letter_delay_seconds=300, event_schema="cloudevents")
    enqueue(w, real, event())
    w.step()
    assert 0 < w.step() <= 300 and letters(tmp_path) == []
    assert w.stats()["dead_letter_waiting"] == 1
    real.now += 300
    w.step()
    [letter] = letters(tmp_path)
    assert (letter["deadletterreason"], letter["deliveryattempts"]) == ("Unauthorized", 1)
    assert len(sender.sent) == 1


def test_the_time_to_live_ends_retries_at_the_next_attempt(tmp_path: Path) -> None:
    real = FakeTime()
    sender = FakeSender([Attempt("Busy", retry=True)] * 10)
    w = worker(tmp_path, sender, real, event_ttl_minutes=1)
    enqueue(w, real, event())
    w.step()
    real.now += 61
    w.step()
    w.step()
    [letter] = letters(tmp_path)
    assert (letter["deadLetterReason"], letter["deliveryAttempts"], letter["lastDeliveryOutcome"]) == (
        "TimeToLiveExceeded", 1, "Busy")
    assert len(sender.sent) == 1


def test_batches_hold_up_to_max_events_and_pending_work_survives_a_restart(tmp_path: Path) -> None:
    real = FakeTime()
    sender = FakeSender([Attempt("Busy", retry=True)], batch_size=2)
    w = worker(tmp_path, sender, real, max_events_per_batch=2)
    events = [event(name=f"c{i}") for i in range(3)]
    enqueue(w, real, *events)
    w.step()  # the first batch of two fails
    assert [len(ids) for ids, _ in sender.sent] == [2]
    restarted = worker(tmp_path, sender, real, max_events_per_batch=2)
    assert restarted.stats()["pending"] == 3 and restarted.stats()["retries"] == 2
    restarted.validated = True
    restarted.step()  # the third, never tried, is due now
    real.now += 10
    restarted.step()
    assert [ids for ids, _ in sender.sent] == [[events[0].id, events[1].id], [events[2].id],
                                              [events[0].id, events[1].id]]
    assert [count for _, count in sender.sent] == [0, 0, 1]


def test_a_closed_gate_sends_nothing(tmp_path: Path) -> None:
    real, sender = FakeTime(), FakeSender([])
    w = worker(tmp_path, sender, real)
    w._gate.set(False)
    enqueue(w, real, event())
    w.step()
    assert sender.sent == [] and sender.handshakes == 0


# The publisher's scan over vaults, with a fake clock ------------------------------------------------------
class FakeStore:
    def __init__(self, state: VaultState) -> None:
        self.state = state

    @contextlib.contextmanager
    def read(self) -> Iterator[VaultState]:
        yield self.state


@dataclass
class FakeVault:
    name: str
    store: FakeStore


def cert(name: str, exp: float, enabled: bool = True, older: float | None = None) -> Certificate:
    def v(ver: str, when: float) -> Version:
        return Version(version=ver, created=0, updated=0, enabled=enabled, tags={}, content_type="", exportable=True,
                       cer=b"", chain=[], sealed_key="", nbf=int(when - 90 * DAY), exp=int(when))

    versions = ([v("0" * 32, older)] if older is not None else []) + [v(name[0] * 32, exp)]
    return Certificate(name=name, policy={}, policy_created=0, policy_updated=0, versions=versions)


def publisher(tmp_path: Path, clock: EmulatorClock, **sub: Any) -> tuple[EventPublisher, Outbox]:
    settings = EmulatorSettings(subscriptions=[{"name": "hook", "destination": "webhook",
                                                "endpoint": "http://127.0.0.1:1/x", **sub}])
    pub = EventPublisher(settings, tmp_path, clock, {"demo": "https://localhost:8443"})
    state = VaultState(certificates={
        "aaa": cert("aaa", T0 + 40 * DAY, older=T0 + 1 * DAY),  # the old version is not current: no events
        "bbb": cert("bbb", T0 + 10 * DAY, enabled=False),  # disabled: no events
        "ccc": cert("ccc", T0 + 200 * DAY),
    })
    pub._vaults = [FakeVault("demo", FakeStore(state))]  # type: ignore[list-item]
    return pub, pub.workers[0].outbox


def test_the_scan_fires_for_current_enabled_versions_once(tmp_path: Path) -> None:
    real = FakeTime()
    clock = EmulatorClock(real=real)
    pub, outbox = publisher(tmp_path, clock)
    assert pub.scan() == 0
    clock.set_offset(15 * DAY)  # the clock change scans at once
    [entry] = outbox.snapshot()[0]
    assert (entry.event.type, entry.event.subject, entry.event.data["Id"]) == (
        NEAR_EXPIRY, "aaa", f"https://localhost:8443/certificates/aaa/{'a' * 32}")
    assert pub.scan() == 0
    again, _ = publisher(tmp_path, clock)  # a restart on the same state
    assert again.scan() == 0
    clock.set_offset(41 * DAY)
    assert [e.event.type for e in outbox.snapshot()[0]] == [NEAR_EXPIRY, EXPIRED]


def test_events_found_while_paused_are_dropped_for_good(tmp_path: Path) -> None:
    clock = EmulatorClock(real=FakeTime())
    pub, outbox = publisher(tmp_path, clock)
    pub.set_enabled(False)
    clock.set_offset(15 * DAY)
    pub.version_created("demo", "new", "d" * 32, 0, 1)
    pub.set_enabled(True)
    assert pub.scan() == 0 and outbox.snapshot()[0] == []
    assert pub.stats()["fired"] == 1


def test_subscriptions_get_only_their_event_types(tmp_path: Path) -> None:
    clock = EmulatorClock(real=FakeTime())
    pub, outbox = publisher(tmp_path, clock, event_types=[NEAR_EXPIRY])
    pub.version_created("demo", "new", "d" * 32, 0, 1)
    assert outbox.snapshot()[0] == []
    clock.set_offset(15 * DAY)
    assert [e.event.type for e in outbox.snapshot()[0]] == [NEAR_EXPIRY]


def test_the_cli_printout_lists_subscriptions_without_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    from certlc.cli.emulator import _print_events

    settings = EmulatorSettings(subscriptions=[
        {"name": "hook", "destination": "webhook", "endpoint": "https://hook.example/api/events?key=s3cret"},
        {"name": "q", "destination": "storage_queue", "queue_name": "renewals",
         "queue_connection_string": "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=S3CRETKEY;"},
    ])
    _print_events(settings, 25 * DAY)
    out = capsys.readouterr().out
    assert "hook: webhook https://hook.example/api/events (eventgrid)" in out
    assert "q: storage queue renewals" in out and "+25 days" in out
    assert "s3cret" not in out and "S3CRETKEY" not in out
