"""Event-driven renewal on the whole local stack, as `certlc up` starts it.

Azurite, the Key Vault emulator delivering Event Grid events to the webhook and to the queue,
a Prefect server with prefect.yaml deployed, a process worker, `certlc webhook` and an SMTP
sink, each in its own process. The emulator's clock is shifted so certificates enter Key
Vault's 30-day near-expiry window; each path must renew them: the webhook, the queue drain with
the webhook stopped, and the sweep with event delivery off. Duplicates by the hundred give one
version; poison messages end in the dead-letter queue with an alert; a run failed at the CA
step and retried the way the Prefect UI retries resumes there.

One stack for the module (starting it costs about 25 s). Tests run in file order and each
uses its own certificates.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.identity import DefaultAzureCredential
from azure.keyvault.certificates import CertificateClient

from certlc.ca.devca import OFFLINE_FILE, DevCA
from certlc.config import Settings, load_settings
from certlc.demo import DemoCertificate, issue
from certlc.emulator.admin import get_event_stats, set_clock_offset, set_events_enabled
from certlc.queue import RenewalQueue, queue_clients
from certlc.stack import start_webhook, stop_process
from certlc.up import StackInfo, stop_all, up

pytestmark = pytest.mark.e2e

RENEW_DEPLOYMENT = "renew-certificate/renew-certificate"


class LocalStack:
    def __init__(self, info: StackInfo, procs: list[Any]) -> None:
        self.info, self.procs = info, procs
        self.root = Path(info.root)
        self.settings: Settings = load_settings(info.config)
        self.ca = DevCA(self.settings.devca_path, self.settings.devca.templates)
        cred = DefaultAzureCredential(managed_identity_client_id="00000000-0000-0000-0000-00000000a001")
        self.client = CertificateClient(self.settings.vaults[0].url, cred,
                                        connection_verify=str(self.settings.azure.ca_bundle),
                                        verify_challenge_resource=False)
        self.queue = RenewalQueue(*queue_clients(self.settings), self.settings.queue)
        self.emulator_state = self.root / "emulator"

    def proc(self, name: str) -> Any:
        return self.procs[[p.name for p in self.info.parts].index(name)]

    def issue(self, name: str, remaining_days: float, lifetime_days: int = 90) -> None:
        spec = DemoCertificate(name, f"CN={name}.contoso.com", {"dns_names": [f"{name}.contoso.com"]}, ("EC", "P-256"),
                               "WebServerShort", lifetime_days, remaining_days, "owners@contoso.com", "test")
        issue(self.client, self.ca, spec, dt.datetime.now(dt.UTC))

    def versions(self, name: str) -> int:
        return sum(1 for v in self.client.list_properties_of_certificate_versions(name) if v.x509_thumbprint)

    def wait_renewed(self, name: str, timeout: float, versions: int = 2) -> float:
        """Seconds until ``name`` has ``versions`` issued versions (fails after ``timeout``)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.versions(name) >= versions:
                return time.monotonic() - start
            time.sleep(0.5)
        pytest.fail(f"{name} was not renewed within {timeout:.0f} s; logs in {self.root / 'logs'}")

    def prefect(self) -> httpx.Client:
        return httpx.Client(base_url=self.info.api, timeout=30)

    def flow_runs(self, flow_name: str, **params: Any) -> list[dict[str, Any]]:
        with self.prefect() as api:
            runs = api.post("/flow_runs/filter", json={"flows": {"name": {"any_": [flow_name]}},
                                                       "limit": 200}).json()
        return [r for r in runs if all(r["parameters"].get(k) == v for k, v in params.items())]

    def wait_flow_runs_final(self, flow_name: str, timeout: float = 120, **params: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.flow_runs(flow_name, **params)
            if runs and all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
                return runs
            time.sleep(1)
        pytest.fail(f"{flow_name} runs {params} did not finish within {timeout:.0f} s")

    def webhook_post(self, body: Any, *, key: str | None = "configured", content_type: str = "application/json",
                     raw: bytes | None = None) -> httpx.Response:
        secret = self.settings.webhook.shared_key.get_secret_value() if key == "configured" else key
        url = self.info.webhook_url + (f"?key={secret}" if secret is not None else "")
        return httpx.post(url, content=raw if raw is not None else json.dumps(body).encode(),
                          headers={"content-type": content_type, "aeg-event-type": "Notification"}, timeout=30)

    def near_expiry_event(self, name: str, event_id: str | None = None) -> dict[str, Any]:
        cert = self.client.get_certificate(name)
        props = cert.properties
        vault_url = self.settings.vaults[0].url
        return {
            "id": event_id or str(uuid.uuid4()),
            "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/certlc-local/providers/"
                     "Microsoft.KeyVault/vaults/demo",
            "subject": name, "eventType": "Microsoft.KeyVault.CertificateNearExpiry",
            "eventTime": dt.datetime.now(dt.UTC).isoformat(),
            "data": {"Id": f"{vault_url}/certificates/{name}/{props.version}", "VaultName": "demo",
                     "ObjectType": "Certificate", "ObjectName": name, "Version": props.version,
                     "NBF": int(props.not_before.timestamp()), "EXP": int(props.expires_on.timestamp())},
            "dataVersion": "1", "metadataVersion": "1",
        }

    @contextlib.contextmanager
    def drain_paused(self) -> Iterator[None]:
        """The drain's schedule paused (its scheduled runs go with it), for tests that handle
        queue messages themselves."""
        with self.prefect() as api:
            deployment = api.get("/deployments/name/drain-queue/drain-queue").json()
        self._set_paused(deployment["id"], True)

        def drains_idle() -> bool:  # a drain already running when paused finishes first
            active = [r for r in self.flow_runs("drain-queue") if r["state_type"] in ("RUNNING", "PENDING")]
            return not active

        try:
            _eventually(drains_idle, 120, "running drains finishing")
            _eventually(drains_idle, 120, "running drains finishing")
            yield
        finally:
            self._set_paused(deployment["id"], False)

    def _set_paused(self, deployment_id: str, paused: bool) -> None:
        # SQLite-backed Prefect answers 503 while the database is busy (a drain every 10 s):
        # try again, as Prefect's own client does.
        with self.prefect() as api:
            for _ in range(10):
                response = api.patch(f"/deployments/{deployment_id}", json={"paused": paused})
                if response.status_code != 503:
                    break
                time.sleep(1)
            response.raise_for_status()

    def flow_run(self, run_id: Any) -> dict[str, Any]:
        with self.prefect() as api:
            return api.get(f"/flow_runs/{run_id}").json()

    def queue_depth(self) -> int:
        return len(list(self.queue.queue.peek_messages(max_messages=32)))

    def dead_letters(self) -> list[str]:
        return [m.content for m in self.queue.dead_letter_queue.peek_messages(max_messages=32)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("stack")
    saved = dict(os.environ)
    info, procs = up(root, progress=lambda m: None, drain_interval_seconds=10)
    os.environ.update(info.env)  # this process is a client of the stack, as the worker is
    from certlc.clients import reset_clients

    reset_clients()
    try:
        yield LocalStack(info, procs)
    finally:
        stop_all(procs)
        os.environ.clear()
        os.environ.update(saved)


def _eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} did not happen within {timeout:.0f} s")


def test_every_part_is_up_and_both_subscriptions_validated(stack: LocalStack) -> None:
    from certlc.up import ps

    rows = ps(stack.root)
    assert {r["name"] for r in rows} == {"azurite", "emulator", "prefect-server", "worker", "webhook", "smtp"}
    assert all(r["healthy"] for r in rows), rows
    with stack.prefect() as api:
        names = {d["name"] for d in api.post("/deployments/filter", json={}).json()}
    assert names == {"renew-certificate", "drain-queue", "sweep", "inventory"}
    def validated() -> bool:
        subscriptions = get_event_stats(stack.emulator_state)["subscriptions"]
        webhooks = [s for s in subscriptions if s["destination"].startswith("webhook")]
        return len(webhooks) == 2 and all(s["validated"] for s in webhooks)

    # Event Grid schema (SubscriptionValidationEvent) and CloudEvents (OPTIONS) against the real receiver.
    _eventually(validated, 30, "both webhook validation handshakes")
    log = (stack.root / "logs" / "webhook.log").read_text()
    assert "subscription validation answered" in log and "CloudEvents validation answered" in log


def test_near_expiry_event_renews_through_the_webhook(stack: LocalStack) -> None:
    # 40 of 90 days left: certlc's own window (30 days) does not call it due; Key Vault's clock,
    # shifted 25 days, puts it 15 days from expiry and sends CertificateNearExpiry.
    stack.issue("via-webhook", remaining_days=40)
    assert stack.versions("via-webhook") == 1
    set_clock_offset(stack.emulator_state, "25d")
    elapsed = stack.wait_renewed("via-webhook", timeout=30)
    runs = stack.wait_flow_runs_final("renew-certificate", name="via-webhook")
    webhook_runs = [r for r in runs if r["deployment_id"] and r["idempotency_key"] == r["parameters"]["event_id"]]
    assert webhook_runs, runs
    assert any(r["state_type"] == "COMPLETED" for r in webhook_runs)
    print(f"renewed through the webhook {elapsed:.1f} s after the clock shift")


def test_with_the_webhook_stopped_the_queue_drain_renews(stack: LocalStack) -> None:
    stop_process(stack.proc("webhook"))
    try:
        # Already 25 emulator-days closer: 50 real days left is 25 in Key Vault's eyes.
        stack.issue("via-queue", remaining_days=50)
        elapsed = stack.wait_renewed("via-queue", timeout=40)
        runs = stack.wait_flow_runs_final("renew-certificate", name="via-queue")
        drains = [r for r in runs if r["parent_task_run_id"] and r["state_type"] == "COMPLETED"]
        assert drains, f"the renewal was not a child run of the drain: {runs}"
        print(f"renewed through the queue drain {elapsed:.1f} s after the certificate was created")
    finally:
        port = int(stack.info.webhook_url.split(":")[2].split("/")[0])
        stack.procs[[p.name for p in stack.info.parts].index("webhook")] = start_webhook(
            Path(stack.info.config), stack.info.env, port, stack.root / "logs" / "webhook.log")


def test_with_event_delivery_off_the_sweep_renews(stack: LocalStack) -> None:
    set_events_enabled(stack.emulator_state, False)
    try:
        stack.issue("via-sweep", remaining_days=10)  # due by certlc's own window
        from prefect.deployments import run_deployment

        run = run_deployment("sweep/sweep", timeout=300, poll_interval=1)
        assert run.state.is_completed(), run.state
        assert stack.versions("via-sweep") == 2
        # No event for it reached the webhook (retries of earlier events may still arrive) ...
        assert "demo/via-sweep" not in (stack.root / "logs" / "webhook.log").read_text()
        # ... and its renewal was the sweep's child run, not an event's.
        runs = stack.wait_flow_runs_final("renew-certificate", name="via-sweep")
        assert runs and all(r["parent_task_run_id"] and not r["parameters"].get("event_id") for r in runs), runs
    finally:
        set_events_enabled(stack.emulator_state, True)


def test_a_hundred_duplicates_by_webhook_and_queue_give_one_version(stack: LocalStack) -> None:
    set_events_enabled(stack.emulator_state, False)  # only our copies of the event
    try:
        stack.issue("duplicates", remaining_days=12)
        event = stack.near_expiry_event("duplicates")
        raw = json.dumps(event)
        encoded = base64.b64encode(raw.encode()).decode()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            posts = [pool.submit(stack.webhook_post, [event]) for _ in range(50)]
            sends = [pool.submit(stack.queue.queue.send_message, encoded if i % 2 else raw) for i in range(50)]
            statuses = [f.result().status_code for f in posts]
            for f in sends:
                f.result()
        assert statuses == [200] * 50
        stack.wait_renewed("duplicates", timeout=60)
        # Let every copy be handled: the webhook's own queue copies and ours, by the drain.
        _eventually(lambda: stack.queue_depth() == 0, 90, "the queue emptying")
        stack.wait_flow_runs_final("renew-certificate", name="duplicates")
        assert stack.versions("duplicates") == 2
        webhook_runs = [r for r in stack.flow_runs("renew-certificate", name="duplicates")
                        if r["idempotency_key"] == event["id"]]
        assert len(webhook_runs) == 1, "50 deliveries of one event id must start one run"
    finally:
        set_events_enabled(stack.emulator_state, True)


@pytest.mark.parametrize(("case", "expected"), [
    ("no key", 401), ("wrong key", 401), ("unmanaged vault", 400), ("malformed JSON", 400), ("oversized", 413),
])
def test_bad_deliveries_are_refused_and_queue_nothing(stack: LocalStack, case: str, expected: int) -> None:
    event = stack.near_expiry_event("via-webhook")
    depth = stack.queue_depth()
    if case == "no key":
        response = stack.webhook_post([event], key=None)
    elif case == "wrong key":
        response = stack.webhook_post([event], key="not-the-key")
    elif case == "unmanaged vault":
        event["data"]["Id"] = event["data"]["Id"].replace("https://localhost", "https://evil.example")
        response = stack.webhook_post([event])
    elif case == "malformed JSON":
        response = stack.webhook_post(None, raw=b'[{"id": "x", "eventType": ')
    else:
        response = stack.webhook_post(None, raw=b"[" + b" " * (stack.settings.webhook.max_body_bytes + 10) + b"]")
    assert response.status_code == expected
    assert stack.queue_depth() == depth
    log = (stack.root / "logs" / "webhook.log").read_text()
    assert f"refused delivery ({expected}" in log


def test_poison_messages_are_dead_lettered_with_an_alert(stack: LocalStack) -> None:
    from prefect.deployments import run_deployment

    stack.issue("poison", remaining_days=300)
    event = stack.near_expiry_event("poison", event_id="poison-event")
    set_events_enabled(stack.emulator_state, False)  # only our messages from here on
    _eventually(lambda: stack.queue_depth() == 0, 60, "the drain emptying the queue")
    with stack.drain_paused():
        # A message the drain crashed on max_dequeues times (received, never completed):
        # simulate those crashed drains by receiving it with a 1 s visibility timeout.
        stack.queue.queue.send_message(base64.b64encode(json.dumps(event).encode()).decode())
        for _ in range(stack.settings.queue.max_dequeues):
            _eventually(lambda: bool(list(stack.queue.queue.receive_messages(visibility_timeout=1))),
                        15, "the message being visible again")
            time.sleep(1.2)
        stack.queue.queue.send_message("this is not an event")
        time.sleep(1.2)
        run = run_deployment("drain-queue/drain-queue", timeout=300, poll_interval=1)
    set_events_enabled(stack.emulator_state, True)
    dead = stack.dead_letters()
    assert "this is not an event" in dead
    assert any("poison-event" in base64.b64decode(d).decode(errors="replace") for d in dead if d[:1] != "t")
    assert stack.versions("poison") == 1
    summaries: list[str] = []

    def alerted() -> bool:
        # Prefect persists events asynchronously: poll its events API as an automation would see them.
        with stack.prefect() as api:
            events = api.post("/events/filter", json={"filter": {"event": {"prefix": ["certlc.alert."]}},
                                                      "limit": 50}).json()["events"]
        summaries[:] = [e["payload"]["summary"] for e in events
                        if e["event"] == "certlc.alert.QueueMessageDeadLettered"]
        return any("received 6 times" in s for s in summaries) and any("neither JSON nor base64" in s
                                                                       for s in summaries)

    _eventually(alerted, 30, "the dead-letter alerts reaching Prefect's event feed")
    assert run.state.is_completed(), run.state


def test_ui_retry_resumes_at_the_failed_ca_step(stack: LocalStack) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.states import State

    set_events_enabled(stack.emulator_state, False)  # only this run renews it
    try:
        stack.issue("ui-retry", remaining_days=5)
        offline = stack.settings.devca_path / OFFLINE_FILE
        offline.touch()  # the CA is down: submit-to-ca fails after its retries
        try:
            run = run_deployment(RENEW_DEPLOYMENT, parameters={"vault": "demo", "name": "ui-retry"}, timeout=300,
                                 poll_interval=1)
            assert run.state.is_failed(), run.state
            assert stack.versions("ui-retry") == 1
        finally:
            offline.unlink()
        with get_client(sync_client=True) as client:
            # Exactly what the UI's Retry button sends.
            client.set_flow_run_state(run.id, State(type=StateType.SCHEDULED, name="AwaitingRetry"), force=True)
        stack.wait_renewed("ui-retry", timeout=120)
        _eventually(lambda: stack.flow_run(run.id)["state_type"] == "COMPLETED", 60, "the retried run completing")
    finally:
        set_events_enabled(stack.emulator_state, True)
    with stack.prefect() as api:
        flow_run = api.get(f"/flow_runs/{run.id}").json()
        task_runs = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [str(run.id)]}},
                                                        "sort": "EXPECTED_START_TIME_ASC"}).json()
    assert flow_run["run_count"] == 2 and flow_run["state_type"] == "COMPLETED"
    latest: dict[str, dict[str, Any]] = {}
    for task_run in task_runs:
        latest[task_run["name"].rsplit("-", 1)[0]] = task_run
    states = {name: tr["state"]["name"] for name, tr in latest.items()}
    assert states["fetch-event"] == states["read-certificate"] == states["create-csr"] == "Cached", states
    assert states["submit-to-ca"] == "Completed" and states["merge"] == "Completed", states
    assert sum(1 for tr in task_runs if tr["name"].startswith("create-csr")
               and tr["state"]["name"] == "Completed") == 1, "Key Vault's CSR step ran exactly once"


def test_no_secret_in_any_log_or_result_of_the_stack(stack: LocalStack) -> None:
    """Runs last: the webhook key, the identity header and key material appear nowhere the stack wrote."""
    needles = {
        "webhook shared key": stack.settings.webhook.shared_key.get_secret_value(),
        "identity header": stack.info.env["IDENTITY_HEADER"],
        "PEM private key": "PRIVATE KEY-----",
    }
    files = [p for p in (stack.root / "logs").rglob("*") if p.is_file()]
    files += [p for p in stack.settings.results_path.rglob("*") if p.is_file()]
    files += [p for p in (stack.root / "emulator" / "deadletter").rglob("*.json") if p.is_file()]
    assert files
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        for what, needle in needles.items():
            assert needle not in text, f"{what} found in {path}"
