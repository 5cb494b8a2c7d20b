"""Event-driven renewal without servers: Key Vault's event as a due verdict, the webhook sink's
queue-then-run contract, and what the queue drain does with each outcome."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from certlc.config import Settings
from certlc.drain import retry_delay, verdict_for_error, verdict_for_outcome
from certlc.errors import ConfigError, InvalidInput, TerminalError, TransientError
from certlc.events import parse_event, vault_for
from certlc.renewal import Trigger, due_status
from certlc.vault import CertificateSnapshot
from certlc.webhook.receiver import AcceptedEvent
from certlc.webhook.sink import DeploymentStarter, RenewalSink, renewal_parameters

SETTINGS = Settings.model_validate({"vaults": [{"name": "prod", "url": "https://contoso-certs.vault.azure.net",
                                               "ca_profile": "adcs"}],
                                    "ca_profiles": {"adcs": {"kind": "adcs-web"}}})
NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
VERSION = "4b4c39e1f0a84aa0a1e7b5b3c8f7e6d5"
EXP = NOW + dt.timedelta(days=40)  # 40 of 90 days left: certlc's own window (30 days) says not yet


def snapshot(**kw: Any) -> CertificateSnapshot:
    base: dict[str, Any] = dict(vault="prod", name="web01", version=VERSION, thumbprint="AA", subject="CN=a",
                                sans=[], key={"type": "EC"}, ekus=[], template=None, tags={},
                                not_before=(EXP - dt.timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                not_after=EXP.strftime("%Y-%m-%dT%H:%M:%SZ"))
    base.update(kw)
    return CertificateSnapshot(**base)


def trigger(**kw: Any) -> Trigger:
    base: dict[str, Any] = dict(event_id="e-1", event_type="Microsoft.KeyVault.CertificateNearExpiry",
                                version=VERSION, expires=EXP.strftime("%Y-%m-%dT%H:%M:%SZ"))
    base.update(kw)
    return Trigger(**base)


class TestDueByEvent:
    def test_not_due_by_certlcs_window_alone(self) -> None:
        assert due_status(snapshot(), SETTINGS, now=NOW) == (False, "NotDue")

    def test_key_vaults_near_expiry_for_the_current_version_makes_it_due(self) -> None:
        assert due_status(snapshot(), SETTINGS, now=NOW, trigger=trigger()) == (True, "KeyVaultNearExpiry")

    def test_expired_event(self) -> None:
        t = trigger(event_type="Microsoft.KeyVault.CertificateExpired")
        assert due_status(snapshot(), SETTINGS, now=NOW, trigger=t) == (True, "KeyVaultExpired")

    def test_event_for_an_older_version_means_already_renewed(self) -> None:
        assert due_status(snapshot(version="ffff"), SETTINGS, now=NOW, trigger=trigger()) == (False, "NotDue")

    def test_event_whose_expiry_is_not_the_certificates_is_ignored(self) -> None:
        t = trigger(expires=(EXP + dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        assert due_status(snapshot(), SETTINGS, now=NOW, trigger=t) == (False, "NotDue")

    def test_new_version_event_does_not_make_anything_due(self) -> None:
        t = trigger(event_type="Microsoft.KeyVault.CertificateNewVersionCreated")
        assert due_status(snapshot(), SETTINGS, now=NOW, trigger=t) == (False, "NotDue")

    def test_disabled_certificate_stays_alone(self) -> None:
        assert due_status(snapshot(enabled=False), SETTINGS, now=NOW, trigger=trigger())[0] is False

    def test_policy_due_wins_without_event(self) -> None:
        assert due_status(snapshot(), SETTINGS, now=EXP - dt.timedelta(days=5)) == (True, "InRenewalWindow")

    @pytest.mark.parametrize("bad", [
        None, "x", {}, {"event_id": "e"}, {"event_id": "", "event_type": "t", "version": "v"},
        {"event_id": "e", "event_type": "t", "version": "v", "expires": "yesterday"},
        {"event_id": "e", "event_type": "t", "version": "v", "extra": 1},
        {"event_id": 5, "event_type": "t", "version": "v"},
    ])
    def test_malformed_trigger_is_refused(self, bad: Any) -> None:
        with pytest.raises(InvalidInput):
            Trigger.from_dict(bad)

    def test_trigger_round_trips(self) -> None:
        assert Trigger.from_dict(trigger().to_dict()) == trigger()


EVENT = {
    "id": "e-1", "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/contoso-certs",
    "subject": "web01", "eventType": "Microsoft.KeyVault.CertificateNearExpiry", "eventTime": "2026-11-23T15:53:16Z",
    "data": {"Id": f"https://contoso-certs.vault.azure.net/certificates/web01/{VERSION}", "VaultName": "contoso-certs",
             "ObjectType": "Certificate", "ObjectName": "web01", "Version": VERSION, "NBF": 1700753990,
             "EXP": int(EXP.timestamp())},
    "dataVersion": "1", "metadataVersion": "1",
}


def accepted(raw: dict[str, Any] = EVENT) -> AcceptedEvent:
    event = parse_event(raw)
    return AcceptedEvent(event, vault_for(event, SETTINGS))  # type: ignore[arg-type]


class Queue:
    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    def send(self, event: dict[str, Any], *, base64_encoded: bool = True) -> None:
        if self.fail:
            raise self.fail
        self.sent.append(event)


class Runs:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.fail = fail

    def __call__(self, name: str, **kw: Any) -> Any:
        if self.fail:
            raise self.fail
        self.calls.append((name, kw["parameters"], kw))
        return type("FlowRun", (), {"id": f"run-{kw['idempotency_key']}"})()


class TestSink:
    def test_parameters_name_the_configured_vault_and_carry_the_event(self) -> None:
        params = renewal_parameters(accepted())
        assert params == {"vault": "prod", "name": "web01", "event_id": "e-1",
                          "event": trigger().to_dict()}

    def test_queues_the_original_envelope_then_starts_the_run_keyed_by_event_id(self) -> None:
        queue, runs = Queue(), Runs()
        RenewalSink(DeploymentStarter("renew-certificate/renew-certificate", run=runs), queue).accept([accepted()])
        assert queue.sent == [EVENT]
        name, params, kw = runs.calls[0]
        assert name == "renew-certificate/renew-certificate"
        assert kw["timeout"] == 0 and kw["idempotency_key"] == "e-1" and params["event"]["version"] == VERSION

    def test_queue_failure_starts_no_run(self) -> None:
        runs = Runs()
        sink = RenewalSink(DeploymentStarter("d/d", run=runs), Queue(fail=TransientError("down")))
        with pytest.raises(TransientError):
            sink.accept([accepted()])
        assert runs.calls == []

    def test_prefect_failure_is_transient_and_names_no_secret(self) -> None:
        sink = RenewalSink(DeploymentStarter("d/d", run=Runs(fail=RuntimeError("connect refused"))), Queue())
        with pytest.raises(TransientError, match="could not start d/d"):
            sink.accept([accepted()])


class TestDrainVerdicts:
    @pytest.mark.parametrize("outcome", ["Renewed", "AlreadyRenewed", "NotDue", "Denied"])
    def test_done_outcomes_delete_the_message(self, outcome: str) -> None:
        assert verdict_for_outcome({"outcome": outcome, "reason": "r"}, 1, 1800).action == "complete"

    def test_pending_approval_is_postponed_not_counted(self) -> None:
        verdict = verdict_for_outcome({"outcome": "Pending", "reason": "Pending"}, 3, 1800)
        assert verdict.action == "postpone" and verdict.delay_seconds > 0

    def test_transient_failure_is_released_with_growing_delay(self) -> None:
        delays = [verdict_for_error(TransientError("busy"), n, 1800).delay_seconds for n in (1, 2, 3, 10)]
        assert delays == [120, 240, 480, 1800]
        assert verdict_for_error(RuntimeError("bug"), 1, 1800).action == "release"

    @pytest.mark.parametrize("exc", [InvalidInput("no template"), ConfigError("vault gone"), TerminalError("CA said no")])
    def test_definitive_refusal_is_dead_lettered(self, exc: Exception) -> None:
        assert verdict_for_error(exc, 1, 1800).action == "dead_letter"

    def test_retry_delay_never_exceeds_cap(self) -> None:
        assert retry_delay(40, 300) == 300


class TestSinkDuplicates:
    def test_concurrent_copies_of_one_event_queue_once_and_start_once(self) -> None:
        import threading
        import time as _time

        queue = Queue()
        calls: list[str] = []

        def slow_run(name: str, **kw: Any) -> Any:
            calls.append(kw["idempotency_key"])
            _time.sleep(0.2)  # Prefect is busy: the copies arrive meanwhile
            return type("FlowRun", (), {"id": "run-1"})()

        sink = RenewalSink(DeploymentStarter("d/d", run=slow_run), queue)
        threads = [threading.Thread(target=sink.accept, args=([accepted()],)) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert calls == ["e-1"] and len(queue.sent) == 1

    def test_a_failed_first_copy_is_not_remembered(self) -> None:
        queue, runs = Queue(), Runs(fail=RuntimeError("down"))
        sink = RenewalSink(DeploymentStarter("d/d", run=runs), queue)
        with pytest.raises(TransientError):
            sink.accept([accepted()])
        runs.fail = None
        sink.accept([accepted()])
        assert len(runs.calls) == 1 and len(queue.sent) == 2  # the retry did the whole job again

    def test_memory_is_bounded(self) -> None:
        runs = Runs()
        sink = RenewalSink(DeploymentStarter("d/d", run=runs), None, remember=3)
        for i in range(5):
            sink.accept([accepted({**EVENT, "id": f"e-{i}"})])
        sink.accept([accepted({**EVENT, "id": "e-0"})])  # forgotten: handed on again (Prefect dedupes)
        assert [c[2]["idempotency_key"] for c in runs.calls] == ["e-0", "e-1", "e-2", "e-3", "e-4", "e-0"]


def test_an_event_id_reused_for_another_certificate_is_refused() -> None:
    from certlc.errors import InvalidInput

    runs = Runs()
    sink = RenewalSink(DeploymentStarter("d/d", run=runs), Queue())
    sink.accept([accepted()])
    other = {**EVENT, "data": {**EVENT["data"], "Id": EVENT["data"]["Id"].replace("web01", "web02"),
                               "ObjectName": "web02"}, "subject": "web02"}
    with pytest.raises(InvalidInput, match="already used"):
        sink.accept([accepted(other)])
    assert len(runs.calls) == 1
