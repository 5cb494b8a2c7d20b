"""The poller asks once per certificate per pass, installs only new versions, and degrades gracefully."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from certlc.agent.poll import (
    Outcome,
    Poller,
    SecretNotFound,
    SecretVersion,
    Throttled,
    VaultUnavailable,
    parse_retry_after,
)
from certlc.agent.settings import AgentSettings, parse_agent_settings

A, B = "https://a.vault.azure.net", "https://b.vault.azure.net"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeVaults:
    """``get_secret`` over in-memory secrets; failures queued per vault; every call recorded."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], SecretVersion] = {}
        self.failures: dict[str, list[Exception]] = {}
        self.calls: list[tuple[str, str]] = []

    def put(self, vault: str, name: str, version: str, value: str, content_type: str = "application/x-pkcs12") -> None:
        self.secrets[(vault, name)] = SecretVersion(version, value, content_type)

    def __call__(self, vault_url: str, name: str) -> SecretVersion:
        self.calls.append((vault_url, name))
        queued = self.failures.get(vault_url)
        if queued:
            raise queued.pop(0)
        if (vault_url, name) not in self.secrets:
            raise SecretNotFound(f"secret {name} not found in {vault_url}")
        return self.secrets[(vault_url, name)]


def agent_settings(store: Path, urls: list[str], **certlc: Any) -> AgentSettings:
    return parse_agent_settings({
        "secretsManagementSettings": {"pollingIntervalInS": "600", "certificateStoreLocation": str(store),
                                      "observedCertificates": urls},
        "certlc": {"max_backoff": 3600, **certlc},
    })


@pytest.fixture
def three(tmp_path: Path, test_ca: Any) -> tuple[Poller, FakeVaults, FakeClock, Any]:
    vaults, clock = FakeVaults(), FakeClock()
    for vault, name in ((A, "web"), (A, "api"), (B, "mail")):
        vaults.put(vault, name, "v1", test_ca.issue(f"{name}.contoso.com").pfx_secret())
    settings = agent_settings(tmp_path, [f"{A}/secrets/web", f"{A}/secrets/api", f"{B}/secrets/mail"])
    return Poller(settings, vaults, clock=clock), vaults, clock, test_ca


def test_the_first_pass_installs_everything_and_the_next_only_what_changed(three: Any, tmp_path: Path) -> None:
    poller, vaults, _, test_ca = three
    first = poller.poll_once()
    assert first.outcomes == {"a.vault.azure.net/web": Outcome.INSTALLED, "a.vault.azure.net/api": Outcome.INSTALLED,
                              "b.vault.azure.net/mail": Outcome.INSTALLED}
    assert first.requests == 3 and len(vaults.calls) == 3 and first.ok

    renewed = test_ca.issue("api.contoso.com")
    vaults.put(A, "api", "v2", renewed.pem_secret(), "application/x-pem-file")
    second = poller.poll_once()
    assert second.outcomes["a.vault.azure.net/api"] == Outcome.INSTALLED
    assert set(second.installed) == {"a.vault.azure.net/api"}
    assert [o for k, o in second.outcomes.items() if k != "a.vault.azure.net/api"] == [Outcome.UNCHANGED] * 2
    assert second.requests == 3 and len(vaults.calls) == 6  # one GET per certificate per pass, no more
    assert (tmp_path / "a.api.versions" / "v2").is_dir()
    assert (tmp_path / "a.api.current" / "combined.pem").read_bytes().count(b"BEGIN CERTIFICATE") == 3


def test_an_agent_restart_finds_what_is_installed_and_installs_nothing(three: Any) -> None:
    poller, vaults, clock, _ = three
    poller.poll_once()
    restarted = Poller(poller.settings, vaults, clock=clock)
    assert set(restarted.poll_once().outcomes.values()) == {Outcome.UNCHANGED}


def test_throttling_honours_retry_after_for_that_vault_only(three: Any) -> None:
    poller, vaults, clock, _ = three
    poller.poll_once()
    vaults.failures[A] = [Throttled("HTTP 429", retry_after=120)]
    report = poller.poll_once()
    # The throttled vault's other certificate is not asked at all this pass; the other vault is.
    assert report.outcomes == {"a.vault.azure.net/web": Outcome.THROTTLED, "a.vault.azure.net/api": Outcome.WAITING,
                               "b.vault.azure.net/mail": Outcome.UNCHANGED}
    assert report.requests == 2 and not report.ok
    clock.now += 119
    assert poller.poll_once().outcomes["a.vault.azure.net/web"] == Outcome.WAITING
    clock.now += 2
    assert set(poller.poll_once().outcomes.values()) == {Outcome.UNCHANGED}


def test_a_retry_after_shorter_than_the_backoff_still_waits_the_backoff(three: Any) -> None:
    poller, vaults, clock, _ = three
    vaults.failures[A] = [Throttled("HTTP 503", retry_after=1)]
    poller.poll_once()
    clock.now += 29
    assert poller.poll_once().outcomes["a.vault.azure.net/web"] == Outcome.WAITING
    clock.now += 2
    assert poller.poll_once().outcomes["a.vault.azure.net/web"] == Outcome.INSTALLED


def test_an_unreachable_vault_keeps_the_files_and_backs_off_exponentially(three: Any, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    poller, vaults, clock, _ = three
    poller.poll_once()
    before = (tmp_path / "a.web").read_bytes()
    delays = []
    for _ in range(9):
        vaults.failures[A] = [VaultUnavailable("ServiceRequestError: connection refused")]
        start = clock.now
        with caplog.at_level(logging.WARNING, logger="certlc.agent"):
            report = poller.poll_once()
        assert report.outcomes["a.vault.azure.net/web"] == Outcome.UNREACHABLE
        assert report.outcomes["a.vault.azure.net/api"] == Outcome.WAITING  # same vault: not asked
        assert report.outcomes["b.vault.azure.net/mail"] == Outcome.UNCHANGED
        assert poller.next_wake(start) - start <= 600  # the loop still wakes each interval
        retry_at = poller.backoff_until(A)
        assert retry_at is not None
        delays.append(retry_at - start)
        clock.now = retry_at
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]  # doubling, capped at max_backoff
    assert (tmp_path / "a.web").read_bytes() == before
    assert "vault unreachable" in caplog.text and "keeping the installed files" in caplog.text
    clock.now += 3600
    assert poller.poll_once().outcomes["a.vault.azure.net/web"] == Outcome.UNCHANGED
    assert poller.backoff_until(A) is None


def test_a_malformed_or_mismatched_secret_is_refused_once_and_the_old_files_stay(
        three: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    poller, vaults, _, test_ca = three
    poller.poll_once()
    before = (tmp_path / "a.web").read_bytes()
    other = test_ca.issue("web.contoso.com")
    mismatched = test_ca.issue("web.contoso.com").pem_secret(with_key=False)
    key_only = other.pem_secret().split("-----BEGIN CERTIFICATE-----")[0]
    vaults.put(A, "web", "v2", key_only + mismatched, "application/x-pem-file")
    with caplog.at_level(logging.DEBUG, logger="certlc.agent"):
        report = poller.poll_once()
    assert report.outcomes["a.vault.azure.net/web"] == Outcome.REFUSED and not report.ok
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "refusing version v2 (KeyMismatch" in errors[0].getMessage()
    assert "keeping the installed version v1" in errors[0].getMessage()
    assert (tmp_path / "a.web").read_bytes() == before
    # No key material in the log, whatever the secret held.
    body = key_only.split("-----")[2].strip().splitlines()
    assert not any(line in caplog.text for line in body if len(line) > 20)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="certlc.agent"):
        assert poller.poll_once().outcomes["a.vault.azure.net/web"] == Outcome.REFUSED
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # told once per version

    fixed = test_ca.issue("web.contoso.com")
    vaults.put(A, "web", "v3", fixed.pfx_secret())
    assert poller.poll_once().outcomes["a.vault.azure.net/web"] == Outcome.INSTALLED


def test_a_missing_secret_is_an_error_for_that_certificate_only(tmp_path: Path, test_ca: Any) -> None:
    vaults = FakeVaults()
    vaults.put(A, "web", "v1", test_ca.issue().pfx_secret())
    poller = Poller(agent_settings(tmp_path, [f"{A}/secrets/web", f"{A}/secrets/gone"]), vaults, clock=FakeClock())
    report = poller.poll_once()
    assert report.outcomes == {"a.vault.azure.net/web": Outcome.INSTALLED, "a.vault.azure.net/gone": Outcome.FAILED}


def test_an_install_that_fails_is_reported_and_the_previous_version_stays(
        tmp_path: Path, test_ca: Any, caplog: pytest.LogCaptureFixture) -> None:
    vaults = FakeVaults()
    vaults.put(A, "web", "v1", test_ca.issue().pfx_secret())
    settings = parse_agent_settings({"secretsManagementSettings": {
        "certificateStoreLocation": str(tmp_path),
        "observedCertificates": [{"url": f"{A}/secrets/web",
                                  "certlc": {"outputs": ["pfx"], "pfx": {"password_env": "CERTLC_TEST_UNSET_PW"}}}]}})
    with caplog.at_level(logging.ERROR, logger="certlc.agent"):
        report = Poller(settings, vaults, clock=FakeClock()).poll_once()
    assert report.outcomes["a.vault.azure.net/web"] == Outcome.FAILED
    assert "CERTLC_TEST_UNSET_PW is not set" in caplog.text


def test_the_installed_hook_gets_each_new_version(three: Any) -> None:
    poller, vaults, clock, _ = three
    seen: list[tuple[str, str]] = []
    hooked = Poller(poller.settings, vaults, clock=clock,
                    on_installed=lambda w, installer, result, material: seen.append((w.key, result.version)))
    hooked.poll_once()
    assert sorted(seen) == [("a.vault.azure.net/api", "v1"), ("a.vault.azure.net/web", "v1"),
                            ("b.vault.azure.net/mail", "v1")]


def test_run_polls_until_stopped(three: Any) -> None:
    poller, vaults, _, _ = three
    stop = threading.Event()
    real = Poller(poller.settings, lambda v, n: (stop.set(), vaults(v, n))[1])
    thread = threading.Thread(target=real.run, args=(stop,))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and len(vaults.calls) == 3


@pytest.mark.parametrize(("header", "seconds"), [
    ("120", 120.0), ("0", 0.0), (None, None), ("soon", None),
    ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0), ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),
], ids=["seconds", "zero", "absent", "garbage", "http date", "date in the past"])
def test_retry_after_is_seconds_or_an_http_date(header: str | None, seconds: float | None) -> None:
    now = dt.datetime(2026, 10, 21, 7, 28, 0, tzinfo=dt.UTC)
    assert parse_retry_after(header, now=now) == seconds


def test_a_secret_version_never_shows_its_value() -> None:
    assert "hunter2" not in repr(SecretVersion("v1", "hunter2", "application/x-pkcs12"))
