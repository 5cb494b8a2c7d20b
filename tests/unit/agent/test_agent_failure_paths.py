"""Failure paths found by trying to break the agent: each must end in a clear state that the next
pass and the rollout report tell the truth about, never in a silent "Unchanged"."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from certlc.agent.deploy import DeployOutcome
from certlc.agent.install import Installer, InstallFailed
from certlc.agent.material import CONTENT_TYPE_PFX, decode_secret
from certlc.agent.poll import Outcome, Poller, SecretVersion, VaultUnavailable, _capped_backoff
from certlc.agent.report import MAX_ALERT, Reporter, read_report
from certlc.agent.settings import parse_agent_settings
from certlc.errors import ConfigError

URL = "https://contoso.vault.azure.net/secrets/web"
KEY = "contoso.vault.azure.net/web"


def settings(tmp_path: Path, **certlc: Any) -> Any:
    return parse_agent_settings({
        "secretsManagementSettings": {"pollingIntervalInS": "600", "observedCertificates": [
            {"url": URL, "certificateStoreLocation": str(tmp_path / "store"), "certlc": certlc}]},
        "certlc": {"state_dir": str(tmp_path / "state")}})


class Vault:
    def __init__(self) -> None:
        self.current: SecretVersion | Exception | None = None

    def put(self, version: str, issued: Any) -> None:
        self.current = SecretVersion(version, issued.pfx_secret(), CONTENT_TYPE_PFX)

    def __call__(self, vault_url: str, name: str) -> SecretVersion:
        if isinstance(self.current, Exception):
            raise self.current
        assert self.current is not None
        return self.current


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_first_install_whose_reload_fails_stays_failed_and_is_deployed_again_later(
        tmp_path: Path, test_ca: Any) -> None:
    vault, clock, deploys = Vault(), Clock(), []
    vault.put("v1", test_ca.issue())
    verdicts = [False, False, True]

    def deploy(watched: Any, installer: Any, result: Any, material: Any) -> DeployOutcome:
        deploys.append((result.version, result.previous))
        ok = verdicts.pop(0)
        return DeployOutcome("Deployed" if ok else "RollbackFailed", result.version, "" if ok else "reload: exit 1")

    s = settings(tmp_path)
    poller = Poller(s, vault, clock=clock, deploy=deploy, after_pass=Reporter(s, host="web01"))
    first = poller.poll_once()
    # Nothing to roll back to: the version stays on disk, but it is not "Installed" and not healthy.
    assert first.outcomes == {KEY: Outcome.DEPLOY_FAILED} and not first.ok
    assert first.alerts[KEY] == "version v1 failed, nothing to roll back to: reload: exit 1"
    clock.now += 10
    held = poller.poll_once()  # not Unchanged: the alert stays and nothing is retried yet
    assert held.outcomes == {KEY: Outcome.DEPLOY_FAILED} and held.alerts[KEY] == first.alerts[KEY]
    assert read_report(s.certlc.report_path)["certificates"][0]["alert"] == first.alerts[KEY]
    clock.now += 600
    assert poller.poll_once().outcomes == {KEY: Outcome.DEPLOY_FAILED}  # tried again, failed again
    clock.now += 1200
    assert poller.poll_once().outcomes == {KEY: Outcome.INSTALLED}
    assert deploys == [("v1", None)] * 3  # the same version deployed again, with nothing before it
    clock.now += 10
    assert poller.poll_once().outcomes == {KEY: Outcome.UNCHANGED}


def test_a_reinstalled_version_rolls_back_to_the_one_before_it_not_to_itself(tmp_path: Path, test_ca: Any) -> None:
    installer = Installer(settings(tmp_path).watched[0])
    material = decode_secret(test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX)
    installer.install(material, "v1")
    installer.install(material, "v2")
    assert installer.install(material, "v2").previous == "v1"


def test_a_refusal_alert_survives_a_vault_outage(tmp_path: Path, test_ca: Any) -> None:
    vault, clock = Vault(), Clock()
    vault.put("v1", test_ca.issue())
    poller = Poller(settings(tmp_path), vault, clock=clock, after_pass=None)
    poller.poll_once()
    vault.current = SecretVersion("v2", "not base64 !", CONTENT_TYPE_PFX)
    refused = poller.poll_once()
    assert refused.outcomes == {KEY: Outcome.REFUSED} and refused.alerts[KEY].startswith("version v2 refused")
    vault.current = VaultUnavailable("HTTP 500")
    assert poller.poll_once().outcomes == {KEY: Outcome.UNREACHABLE}
    vault.current = SecretVersion("v2", "not base64 !", CONTENT_TYPE_PFX)
    clock.now += 3600
    again = poller.poll_once()
    assert again.outcomes == {KEY: Outcome.REFUSED} and again.alerts[KEY] == refused.alerts[KEY]


def test_a_certificate_not_valid_yet_is_not_installed_and_looked_at_again(tmp_path: Path, test_ca: Any) -> None:
    vault = Vault()
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    vault.put("v1", test_ca.issue(not_before=future))
    poller = Poller(settings(tmp_path), vault, after_pass=None)
    report = poller.poll_once()
    assert report.outcomes == {KEY: Outcome.REFUSED} and "LeafNotYetValid" in report.alerts[KEY]
    assert poller.installer(settings(tmp_path).watched[0]).current_version() is None
    # Not remembered as refused for good: once the CA's answer is valid it gets installed.
    vault.put("v1", test_ca.issue())
    assert poller.poll_once().outcomes == {KEY: Outcome.INSTALLED}


def test_a_surprise_in_one_certificate_does_not_stop_the_pass_or_the_loop(tmp_path: Path, test_ca: Any) -> None:
    vault = Vault()
    vault.put("v1", test_ca.issue())

    def deploy(*args: Any) -> Any:
        raise ValueError("something nobody expected")

    report = Poller(settings(tmp_path), vault, deploy=deploy, after_pass=None).poll_once()
    assert report.outcomes == {KEY: Outcome.FAILED}
    assert report.alerts[KEY] == "unexpected failure: ValueError: something nobody expected"


def test_backoff_never_overflows() -> None:
    assert _capped_backoff(30, 5000, 3600) == 3600 and _capped_backoff(30, 1, 3600) == 30


def test_a_link_that_cannot_be_made_fails_the_install_before_the_new_version_is_current(
        tmp_path: Path, test_ca: Any) -> None:
    in_the_way = tmp_path / "etc" / "web"
    s = settings(tmp_path, link=str(in_the_way))
    installer = Installer(s.watched[0])
    material = decode_secret(test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX)
    in_the_way.mkdir(parents=True)  # a real directory where the link goes
    with pytest.raises(InstallFailed, match="is a directory, not a link"):
        installer.install(material, "v1")
    assert installer.current_version() is None  # so the next pass tries again, and says so
    in_the_way.rmdir()
    installer.install(material, "v1")
    assert in_the_way.is_symlink() and installer.current_version() == "v1"


def test_directories_made_for_a_link_are_traversable_under_umask_0077(tmp_path: Path, test_ca: Any) -> None:
    link = tmp_path / "etc" / "nginx" / "web"
    installer = Installer(settings(tmp_path, link=str(link)).watched[0])
    old = os.umask(0o077)
    try:
        installer.install(decode_secret(test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX), "v1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "etc").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "etc" / "nginx").stat().st_mode) == 0o755


@pytest.mark.parametrize("source", ["env", "file"])
def test_an_empty_pfx_password_is_refused_not_an_unencrypted_pfx(tmp_path: Path, test_ca: Any, source: str) -> None:
    (tmp_path / "pw").write_text("\n")
    pfx = {"password_env": "PFX_PW"} if source == "env" else {"password_file": str(tmp_path / "pw")}
    installer = Installer(settings(tmp_path, outputs=["pfx"], pfx=pfx).watched[0], environ={"PFX_PW": ""})
    with pytest.raises(ConfigError, match="empty"):
        installer.install(decode_secret(test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX), "v1")
    assert installer.current_version() is None


def test_an_unknown_group_never_hands_the_key_to_the_agents_own_group(tmp_path: Path, test_ca: Any) -> None:
    installer = Installer(settings(tmp_path, outputs=["key", "cert"], group="no-such-group-certlc",
                                   mode="0640").watched[0], on_warning=lambda _: None)
    result = installer.install(decode_secret(test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX), "v1")
    assert stat.S_IMODE(result.files["key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(result.files["cert"].stat().st_mode) == 0o644


needs_acl = pytest.mark.skipif(shutil.which("setfacl") is None, reason="setfacl (apt acl) is not installed")


@needs_acl
def test_one_unknown_reader_does_not_cost_the_others_their_access(tmp_path: Path, test_ca: Any) -> None:
    installer = Installer(settings(tmp_path, outputs=["key"], readers=[
        {"user": "no-such-user-certlc"}, {"group": "nogroup"}]).watched[0], on_warning=lambda _: None)
    result = installer.install(decode_secret(test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX), "v1")
    acl = subprocess.run(["getfacl", "--omit-header", str(result.files["key"])], capture_output=True, text=True,
                         check=True).stdout.split()
    assert "group:nogroup:r--" in acl
    assert len(result.warnings) == 1 and "u:no-such-user-certlc" in result.warnings[0]


@needs_acl
def test_a_default_acl_on_the_store_does_not_open_the_key(tmp_path: Path, test_ca: Any) -> None:
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:nobody:rwx", str(store)], check=True)
    installer = Installer(settings(tmp_path, outputs=["key"], mode="0640").watched[0])
    result = installer.install(decode_secret(test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX), "v1")
    acl = subprocess.run(["getfacl", "--omit-header", str(result.files["key"])], capture_output=True, text=True,
                         check=True).stdout
    assert "nobody" not in acl and stat.S_IMODE(result.files["key"].stat().st_mode) == 0o640


def test_a_long_alert_is_shortened_to_what_the_webhook_keeps(tmp_path: Path, test_ca: Any) -> None:
    vault = Vault()
    vault.put("v1", test_ca.issue())

    def deploy(watched: Any, installer: Any, result: Any, material: Any) -> DeployOutcome:
        return DeployOutcome("RollbackFailed", result.version, "x" * 5000)

    s = settings(tmp_path)
    Poller(s, vault, deploy=deploy, after_pass=Reporter(s, host="web01")).poll_once()
    alert = read_report(s.certlc.report_path)["certificates"][0]["alert"]
    assert len(alert) == MAX_ALERT and alert.endswith("…")


def test_changed_settings_apply_to_the_installed_version_on_the_next_pass(tmp_path: Path, test_ca: Any) -> None:
    vault = Vault()
    vault.put("v1", test_ca.issue())
    first = Poller(settings(tmp_path), vault, after_pass=None)
    assert first.poll_once().outcomes == {KEY: Outcome.INSTALLED}
    assert Poller(settings(tmp_path), vault, after_pass=None).poll_once().outcomes == {KEY: Outcome.UNCHANGED}
    # The operator adds outputs, a mode and a link: the agent (restarted) writes v1 again with them.
    link = tmp_path / "etc" / "web"
    changed = settings(tmp_path, outputs=["pem", "key", "fullchain"], mode="0640", link=str(link))
    reloads: list[Any] = []

    def deploy(watched: Any, installer: Any, result: Any, material: Any) -> DeployOutcome:
        reloads.append((result.version, result.previous))
        return DeployOutcome("Deployed", result.version)

    report = Poller(changed, vault, deploy=deploy, after_pass=None).poll_once()
    assert report.outcomes == {KEY: Outcome.INSTALLED} and reloads == [("v1", None)]
    assert stat.S_IMODE((link / "key.pem").stat().st_mode) == 0o640 and (link / "fullchain.pem").is_file()
    assert Poller(changed, vault, after_pass=None).poll_once().outcomes == {KEY: Outcome.UNCHANGED}
