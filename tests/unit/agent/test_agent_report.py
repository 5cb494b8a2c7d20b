"""The rollout report: what is installed on this host, written after each pass and POSTed with the shared key."""

from __future__ import annotations

import datetime as dt
import json
import logging
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from certlc.agent.deploy import DeployOutcome
from certlc.agent.material import CONTENT_TYPE_PFX
from certlc.agent.poll import Outcome, PassReport, Poller, SecretVersion
from certlc.agent.report import SCHEMA, Reporter, post_report, read_report
from certlc.agent.settings import ReportOptions, load_agent_settings, parse_agent_settings
from certlc.errors import ConfigError
from certlc.x509 import sha1_thumbprint

A = "https://a.vault.azure.net"
WHEN = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


class Vault:
    def __init__(self) -> None:
        self.secrets: dict[str, SecretVersion] = {}

    def put(self, name: str, version: str, value: str) -> None:
        self.secrets[name] = SecretVersion(version, value, CONTENT_TYPE_PFX)

    def __call__(self, vault_url: str, name: str) -> SecretVersion:
        return self.secrets[name]


def agent(tmp_path: Path, *, report: dict[str, Any] | None = None) -> Any:
    return parse_agent_settings({
        "secretsManagementSettings": {"pollingIntervalInS": "600", "certificateStoreLocation": str(tmp_path / "store"),
                                      "observedCertificates": [
                                          f"{A}/secrets/web",
                                          {"url": f"{A}/secrets/api", "certlc": {"outputs": ["fullchain", "key"]}},
                                          {"url": f"{A}/secrets/legacy", "certlc": {"outputs": ["pfx"]}}]},
        "certlc": {"state_dir": str(tmp_path / "state"), **({"report": report} if report else {})}})


@pytest.fixture
def setup(tmp_path: Path, test_ca: Any) -> tuple[Any, Vault, dict[str, Any]]:
    vault = Vault()
    issued = {name: test_ca.issue(f"{name}.contoso.com") for name in ("web", "api", "legacy")}
    for name, cert in issued.items():
        vault.put(name, "v1", cert.pfx_secret())
    return agent(tmp_path), vault, issued


def reporter(settings: Any, **kwargs: Any) -> Reporter:
    return Reporter(settings, host="web01", now=lambda: WHEN, **kwargs)


def test_the_report_says_what_is_installed_after_each_pass(tmp_path: Path, setup: Any) -> None:
    settings, vault, issued = setup
    path = tmp_path / "state" / "rollout.json"
    assert settings.certlc.report_path == path  # default: under the state directory
    poller = Poller(settings, vault, after_pass=reporter(settings))
    poller.poll_once()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not [p for p in path.parent.iterdir() if p.name != "rollout.json"]  # atomic: no temporary file left
    report = json.loads(path.read_text())
    assert report["schema"] == SCHEMA and report["host"] == "web01"
    assert report["generated_at"] == "2026-12-03T12:00:00Z" and report["requests"] == 3
    assert report["polling_interval"] == 600
    web, api, legacy = report["certificates"]
    leaf = issued["web"].leaf
    assert web == {
        "key": "a.vault.azure.net/web", "vault": A, "name": "web", "store": str(tmp_path / "store"),
        "files": ["combined.pem"], "installed_version": "v1", "thumbprint": sha1_thumbprint(leaf),
        "not_after": leaf.not_valid_after_utc.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "installed_at": "2026-12-03T12:00:00Z", "last_result": "Installed", "alert": None}
    assert api["files"] == ["fullchain.pem", "key.pem"] and legacy["files"] == ["cert.pfx"]
    assert legacy["thumbprint"] is not None  # from this pass's decoded leaf, not a file

    # The next pass changes nothing: what it did not decode comes from the files or the last report.
    later = Reporter(settings, host="web01", now=lambda: WHEN + dt.timedelta(hours=1))
    Poller(settings, vault, after_pass=later).poll_once()
    again = json.loads(path.read_text())
    assert [c["last_result"] for c in again["certificates"]] == ["Unchanged"] * 3
    for before, after in zip(report["certificates"], again["certificates"], strict=True):
        assert {k: v for k, v in after.items() if k != "last_result"} == {
            k: v for k, v in before.items() if k != "last_result"}


def test_without_a_previous_report_the_files_say_what_is_installed(tmp_path: Path, setup: Any) -> None:
    settings, vault, issued = setup
    Poller(settings, vault, after_pass=None).poll_once()  # installed before reporting existed
    report = reporter(settings)(Poller(settings, vault, after_pass=None)._installers, PassReport())
    web, api, legacy = report["certificates"]
    assert web["installed_version"] == api["installed_version"] == "v1"
    assert web["thumbprint"] == sha1_thumbprint(issued["web"].leaf)  # read from combined.pem
    assert api["thumbprint"] == sha1_thumbprint(issued["api"].leaf) and web["installed_at"]
    assert legacy["thumbprint"] is None  # a PFX-only certificate cannot be read without its password


def test_a_rollback_or_a_refusal_is_the_alert_and_stays_until_something_new_happens(
        tmp_path: Path, setup: Any, test_ca: Any) -> None:
    settings, vault, _ = setup
    Poller(settings, vault, after_pass=reporter(settings)).poll_once()
    vault.put("web", "v2", test_ca.issue("web.contoso.com").pfx_secret())
    vault.put("api", "v2", "not base64 !")

    def deploy(watched: Any, installer: Any, result: Any, material: Any) -> DeployOutcome:
        installer.rollback(to=result.previous)
        return DeployOutcome("RolledBack", result.version, "reload command `nginx -s reload` exited with 1")

    poller = Poller(settings, vault, deploy=deploy, after_pass=reporter(settings))
    poller.poll_once()
    web, api, _ = read_report(settings.certlc.report_path)["certificates"]
    assert web["installed_version"] == "v1" and web["last_result"] == "RolledBack"
    assert web["alert"] == "version v2 rolled back: reload command `nginx -s reload` exited with 1"
    assert api["installed_version"] == "v1" and api["last_result"] == "Refused"
    assert api["alert"].startswith("version v2 refused (MalformedSecret")
    poller.poll_once()  # the poller does not look at these versions again: the alerts stay
    web, api, _ = read_report(settings.certlc.report_path)["certificates"]
    assert (web["last_result"], api["last_result"]) == ("RolledBack", "Refused")
    assert web["alert"] and api["alert"]


def test_a_report_that_cannot_be_written_or_raises_never_fails_a_pass(
        tmp_path: Path, setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings, vault, _ = setup
    (tmp_path / "state").write_text("a file where the directory should be")
    with caplog.at_level(logging.WARNING, logger="certlc.agent"):
        assert Poller(settings, vault, after_pass=reporter(settings)).poll_once().ok
    assert "cannot write the rollout report" in caplog.text

    def broken(installers: Any, report: Any) -> None:
        raise RuntimeError("bug")

    with caplog.at_level(logging.WARNING, logger="certlc.agent"):
        assert set(Poller(settings, vault, after_pass=broken).poll_once().outcomes.values()) == {Outcome.UNCHANGED}
    assert "rollout report failed: RuntimeError: bug" in caplog.text


def test_the_real_agent_reports_and_code_built_settings_do_not_unless_asked(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"secretsManagementSettings": {"observedCertificates": [f"{A}/secrets/web"]}}))
    loaded = load_agent_settings(config)
    assert loaded.source == config and loaded.reports
    assert loaded.certlc.report_path == Path("/var/lib/certlc-agent/rollout.json")
    built = parse_agent_settings({"secretsManagementSettings": {"observedCertificates": [f"{A}/secrets/web"]}})
    assert not built.reports
    assert isinstance(Poller(loaded, lambda v, n: None)._after_pass, Reporter)  # type: ignore[arg-type,return-value]
    assert Poller(built, lambda v, n: None)._after_pass is None  # type: ignore[arg-type,return-value]


# POST ----------------------------------------------------------------------------------------------------------------
def test_the_report_is_posted_with_the_shared_key_as_a_bearer_token(tmp_path: Path, setup: Any) -> None:
    _, vault, _ = setup
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    settings = agent(tmp_path, report={"url": "https://certlc.example.com/api/rollout", "key_env": "ROLLOUT_KEY",
                                       "timeout": 5})
    report = Poller(settings, vault, after_pass=reporter(settings, transport=httpx.MockTransport(handler),
                                                         environ={"ROLLOUT_KEY": "s3cret"})).poll_once()
    assert report.ok and len(seen) == 1
    request = seen[0]
    assert request.method == "POST" and str(request.url) == "https://certlc.example.com/api/rollout"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("certlc-agent/")
    assert json.loads(request.content) == read_report(settings.certlc.report_path)
    assert request.extensions["timeout"]["connect"] == 5


def test_another_header_carries_the_key_itself(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k3y\n")
    seen: list[httpx.Request] = []
    options = ReportOptions(url="http://127.0.0.1:8080/api/rollout", key_file=key_file, header="X-Certlc-Key")
    assert post_report(options, {"schema": SCHEMA}, transport=httpx.MockTransport(
        lambda r: (seen.append(r), httpx.Response(200))[1]))
    assert seen[0].headers["X-Certlc-Key"] == "k3y" and "Authorization" not in seen[0].headers


@pytest.mark.parametrize(("handler", "environ", "logged"), [
    (lambda r: httpx.Response(500), {"K": "x"}, "refused by https://h.example/api/rollout: HTTP 500"),
    (lambda r: httpx.Response(401), {"K": "x"}, "HTTP 401"),
    (lambda r: (_ for _ in ()).throw(httpx.ConnectError("connection refused", request=r)), {"K": "x"},
     "not sent to https://h.example/api/rollout: ConnectError: connection refused"),
    (lambda r: httpx.Response(200), {}, "the report key variable K is not set"),
], ids=["5xx", "401", "unreachable", "no key"])
def test_post_failures_are_logged_not_raised(handler: Any, environ: dict[str, str], logged: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    options = ReportOptions(url="https://h.example/api/rollout", key_env="K")
    with caplog.at_level(logging.WARNING, logger="certlc.agent"):
        assert post_report(options, {"schema": SCHEMA}, environ=environ, transport=httpx.MockTransport(handler)) is False
    assert logged in caplog.text


@pytest.mark.parametrize(("report", "message"), [
    ({"url": "http://dashboard.example/api/rollout"}, "clear text"),
    ({"url": "ftp://h/x"}, "not an http"),
    ({"key_env": "A", "key_file": "/k"}, "key_env or key_file"),
    ({"header": "Bad Header"}, "not an HTTP header name"),
])
def test_bad_report_settings_are_refused(tmp_path: Path, report: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        agent(tmp_path, report=report)
