"""Rollout state end to end in one process: the agent's real report POSTed to the webhook app's
/api/rollout, validated, stored per host and read back grouped per certificate."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from certlc.agent.material import CONTENT_TYPE_PFX
from certlc.agent.poll import Poller, SecretVersion
from certlc.agent.report import Reporter
from certlc.agent.settings import parse_agent_settings
from certlc.config import Settings
from certlc.rollout import RolloutStore, by_certificate, parse_report, vault_key
from certlc.webhook import create_app
from certlc.x509 import sha1_thumbprint

VAULT = "https://contoso-certs.vault.azure.net"
EVENT_KEY = "event-grid-key-0123456789"
ROLLOUT_KEY = "agents-rollout-key-0123456789"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


class Refuse:
    def accept(self, events: Any) -> None:  # no event reaches the sink in these tests
        raise AssertionError("no event expected")


def webhook(tmp_path: Path, alerts: list[Any] | None = None, **webhook: Any) -> tuple[TestClient, Path]:
    settings = Settings.model_validate({
        "state_dir": str(tmp_path / "state"),
        "vaults": [{"name": "prod", "url": VAULT + "/", "ca_profile": "adcs"}],
        "ca_profiles": {"adcs": {"kind": "adcs-web"}},
        "webhook": {"shared_key": EVENT_KEY, "rollout_key": ROLLOUT_KEY, "max_body_bytes": 64 * 1024, **webhook}})
    extra = {"on_alert": alerts.append} if alerts is not None else {}
    return TestClient(create_app(settings, Refuse(), **extra)), settings.rollout_path


class Vault:
    def __init__(self, issued: dict[str, Any]) -> None:
        self.issued = issued

    def __call__(self, vault_url: str, name: str) -> SecretVersion:
        return SecretVersion("v1", self.issued[name].pfx_secret(), CONTENT_TYPE_PFX)


def agent_settings(tmp_path: Path, host: str) -> Any:
    return parse_agent_settings({
        "secretsManagementSettings": {"pollingIntervalInS": "60", "certificateStoreLocation": str(tmp_path / host),
                                      "observedCertificates": [f"{VAULT}/secrets/web", f"{VAULT}/secrets/api"]},
        "certlc": {"state_dir": str(tmp_path / f"{host}-state"),
                   "report": {"url": "https://certlc.contoso.com/api/rollout", "key_env": "ROLLOUT_KEY",
                              "host": host}}})


def report(host: str = "web01", generated_at: dt.datetime = NOW, **certificate: Any) -> dict[str, Any]:
    return {"schema": "certlc.rollout/1", "host": host, "agent_version": "0.1.0",
            "generated_at": generated_at.isoformat(), "polling_interval": 60, "requests": 1,
            "certificates": [{"key": "contoso-certs.vault.azure.net/web", "vault": VAULT, "name": "web",
                              "store": "/etc/ssl/certlc", "files": ["combined.pem"], "installed_version": "v1",
                              "thumbprint": "ab" * 20, "not_after": "2027-12-03T12:00:00Z",
                              "installed_at": "2026-12-03T12:00:00Z", "last_result": "Installed", "alert": None,
                              **certificate}]}


def post(client: TestClient, body: Any, *, key: str | None = ROLLOUT_KEY, header: str = "Authorization",
         content_type: str = "application/json") -> Any:
    headers = {"content-type": content_type}
    if key is not None:
        headers[header] = f"Bearer {key}" if header == "Authorization" else key
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/api/rollout", content=raw, headers=headers)


def read(client: TestClient) -> dict[str, Any]:
    response = client.get("/api/rollout", headers={"x-certlc-key": EVENT_KEY})
    assert response.status_code == 200, response.text
    return response.json()


def test_two_agents_report_and_each_certificate_shows_where_which_version_is_installed(
        tmp_path: Path, test_ca: Any) -> None:
    client, _ = webhook(tmp_path)
    issued = {name: test_ca.issue(f"{name}.contoso.com") for name in ("web", "api")}
    for host in ("web01", "web02"):
        settings = agent_settings(tmp_path, host)
        # The agent's own Reporter and POST, sent into the webhook app in this process.
        reporter = Reporter(settings, transport=client._transport, environ={"ROLLOUT_KEY": ROLLOUT_KEY})
        assert Poller(settings, Vault(issued), after_pass=reporter).poll_once().ok
    state = read(client)
    assert [(h["host"], h["certificates"], h["stale"]) for h in state["hosts"]] == [
        ("web01", 2, False), ("web02", 2, False)]
    by_name = {c["name"]: c for c in state["certificates"]}
    assert set(by_name) == {"web", "api"}
    web = by_name["web"]
    assert web["vault"] == VAULT and web["vault_name"] == "prod"  # the trailing slash of the config does not matter
    assert [(h["host"], h["installed_version"], h["thumbprint"], h["last_result"]) for h in web["hosts"]] == [
        ("web01", "v1", sha1_thumbprint(issued["web"].leaf), "Installed"),
        ("web02", "v1", sha1_thumbprint(issued["web"].leaf), "Installed")]


def test_only_the_rollout_key_may_report_and_only_the_operator_key_may_read(tmp_path: Path) -> None:
    client, store = webhook(tmp_path)
    assert post(client, report(), key=None).status_code == 401
    assert post(client, report(), key="wrong").status_code == 401
    # The Event Grid key is not the agents' key: a server broken into cannot start renewals with its
    # key, and a holder of the Event Grid key cannot forge what is installed.
    assert post(client, report(), key=EVENT_KEY).status_code == 401
    assert not store.exists()
    assert post(client, report(), header="X-Certlc-Key").status_code == 200
    assert client.get("/api/rollout").status_code == 401
    assert client.get("/api/rollout", headers={"x-certlc-key": ROLLOUT_KEY}).status_code == 401
    assert client.get(f"/api/rollout?key={EVENT_KEY}").status_code == 200


def test_without_a_rollout_key_reports_are_refused(tmp_path: Path) -> None:
    client, store = webhook(tmp_path, rollout_key=None)
    response = post(client, report(), key="anything")
    assert response.status_code == 403 and "webhook.rollout_key" in response.json()["error"]["message"]
    assert not store.exists()


@pytest.mark.parametrize(("body", "status", "named"), [
    (b"{not json", 400, "not JSON"),
    ([report()], 400, "JSON object"),
    ({**report(), "schema": "certlc.rollout/9"}, 400, "schema"),
    (report(host="../../etc/passwd"), 400, "host"),
    (report(host="web01/evil"), 400, "host"),
    (report(thumbprint="not-hex"), 400, "certificates.0.thumbprint"),
    (report(vault="http://169.254.169.254"), 400, "certificates.0.vault"),
    (report(name="web/../../x"), 400, "certificates.0.name"),
    (report(installed_version="v1; rm -rf /"), 400, "installed_version"),
    (report(files=["../../shadow"]), 400, "files"),
    ({**report(), "generated_at": "2026-12-03T12:00:00"}, 400, "time zone"),
    ({**report(), "certificates": "all"}, 400, "certificates"),
    ({**report(), "polling_interval": 0}, 400, "polling_interval"),
    (b'{"schema": "certlc.rollout/1", "requests": ' + b"9" * 5000 + b"}", 400, "not JSON"),
    (b'{"x": ' + b"[" * 20000 + b"]" * 20000 + b"}", 400, "nested too deeply"),
    ({**report(), "requests": True}, 400, "requests"),
    ({**report(), "generated_at": 1764763200}, 400, "ISO 8601"),
    (report(files=[".."]), 400, "files"),
    ({**report(), "generated_at": "9999-12-31T23:59:59Z"}, 400, "ahead of this server's clock"),
], ids=["not-json", "array", "schema", "host-traversal", "host-slash", "thumbprint", "vault-http", "name",
        "version", "files", "naive-time", "certificates-type", "interval", "huge-number", "deep-nesting",
        "bool-count", "number-time", "dot-dot-file", "future"])
def test_a_bad_report_is_refused_naming_the_field_and_nothing_is_stored(
        tmp_path: Path, body: Any, status: int, named: str) -> None:
    client, store = webhook(tmp_path)
    response = post(client, body)
    assert response.status_code == status, response.text
    assert named in response.json()["error"]["message"]
    assert not store.exists() or not list(store.iterdir())


def test_the_longest_host_names_are_stored(tmp_path: Path) -> None:
    client, store = webhook(tmp_path)
    long_host = ".".join(["a" * 62] * 4) + ".b"  # 253 characters
    response = post(client, report(host=long_host, store="/etc/ssl\n\x1b[31mforged"))
    assert response.status_code == 200, response.text
    [host] = read(client)["hosts"]
    assert host["host"] == long_host
    assert all(len(p.name) < 200 for p in store.iterdir())
    assert "\x1b" not in (next(store.iterdir())).read_text()


def test_size_and_content_type_limits(tmp_path: Path) -> None:
    client, store = webhook(tmp_path)
    huge = report(alert="x" * 2000)
    huge["certificates"] *= 40  # ~100 KB, over the 64 KiB limit of this receiver
    assert post(client, huge).status_code == 413
    assert post(client, report(), content_type="text/plain").status_code == 415
    assert not store.exists()


def test_only_documented_fields_are_stored_and_alerts_cannot_forge_lines(tmp_path: Path) -> None:
    client, store = webhook(tmp_path)
    body = report(alert="reload failed\nERROR forged line", private_key="-----BEGIN PRIVATE KEY-----MIIE")
    body["token"] = "eyJhbGciOi"
    assert post(client, body).status_code == 200
    kept = (store / "web01.json").read_text()
    assert "PRIVATE KEY" not in kept and "eyJhbGciOi" not in kept
    assert read(client)["certificates"][0]["hosts"][0]["alert"] == "reload failed ERROR forged line"
    assert oct((store / "web01.json").stat().st_mode & 0o777) == "0o640"


def test_the_newest_report_of_a_host_wins_even_when_an_older_one_arrives_later(tmp_path: Path) -> None:
    client, _ = webhook(tmp_path)
    assert post(client, report(installed_version="v2")).json()["kept"] is True
    late = post(client, report(installed_version="v1", generated_at=NOW - dt.timedelta(minutes=5)))
    assert late.status_code == 200 and late.json()["kept"] is False
    assert read(client)["certificates"][0]["hosts"][0]["installed_version"] == "v2"
    assert post(client, report(host="WEB01", installed_version="v3",
                               generated_at=NOW + dt.timedelta(minutes=1))).json()["host"] == "web01"
    assert read(client)["certificates"][0]["hosts"][0]["installed_version"] == "v3"


def test_an_agent_alert_is_raised_once_not_on_every_pass_that_repeats_it(tmp_path: Path) -> None:
    alerts: list[Any] = []
    client, _ = webhook(tmp_path, alerts)
    assert post(client, report()).status_code == 200 and alerts == []
    rolled_back = {"last_result": "RolledBack", "alert": "reload failed: exit 1; rolled back to version v1"}
    for minute in (1, 2, 3):  # the agent repeats the alert every pass while it skips that version
        assert post(client, report(generated_at=NOW + dt.timedelta(minutes=minute), **rolled_back)).status_code == 200
    [alert] = alerts
    assert alert.kind == "AgentRolledBack"
    assert alert.summary == f"web01: web in {VAULT}: reload failed: exit 1; rolled back to version v1"
    assert alert.details == {"host": "web01", "vault": VAULT, "certificate": "web", "installed_version": "v1",
                             "last_result": "RolledBack"}
    # A different problem later is a new alert; another host's alert is its own.
    post(client, report(generated_at=NOW + dt.timedelta(minutes=4), last_result="Refused",
                        alert="version v3 refused (LeafExpired: ...)"))
    post(client, report(host="web02", **rolled_back))
    assert [(a.kind, a.details["host"]) for a in alerts] == [
        ("AgentRolledBack", "web01"), ("AgentRefusedVersion", "web01"), ("AgentRolledBack", "web02")]


def test_a_failing_alert_channel_does_not_lose_the_report(tmp_path: Path) -> None:
    class Broken(list):  # type: ignore[type-arg]
        def append(self, item: Any) -> None:
            raise RuntimeError("prefect down")

    client, store = webhook(tmp_path, Broken())
    response = post(client, report(last_result="Failed", alert="cannot install version v1: disk full"))
    assert response.status_code == 200 and (store / "web01.json").exists()


def test_a_host_that_stopped_reporting_is_stale_after_three_intervals(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollout")
    store.save(parse_report(report()), now=NOW)
    store.save(parse_report(report(host="web02")), now=NOW - dt.timedelta(minutes=10))
    [cert] = by_certificate(store.all(), now=NOW + dt.timedelta(seconds=60))
    assert [(h["host"], h["stale"]) for h in cert["hosts"]] == [("web01", False), ("web02", True)]
    assert cert["vault_name"] is None  # no configured vaults given


def test_unreadable_stored_files_are_skipped(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path)
    store.save(parse_report(report()))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "other.json").write_text(json.dumps({"received_at": NOW.isoformat(), "report": {"schema": "x"}}))
    assert [s.report.host for s in store.all()] == ["web01"]


def test_vault_urls_compare_by_host_and_port() -> None:
    assert vault_key("https://Contoso-Certs.vault.azure.net:443/") == vault_key(VAULT) == VAULT
    assert vault_key("https://localhost:8443") == "https://localhost:8443"
    assert copy.deepcopy(parse_report(report())).certificates[0].thumbprint == "AB" * 20
