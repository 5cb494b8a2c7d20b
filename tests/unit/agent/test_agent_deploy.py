"""After an install: reload, verify the served thumbprint, roll back + reload + alert on failure."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certlc.agent.deploy import ReloadFailed, VerifyFailed, deploy, run_reload, verify_served
from certlc.agent.install import Installer
from certlc.agent.material import CONTENT_TYPE_PFX, Material, decode_secret
from certlc.agent.poll import Outcome, Poller, SecretVersion
from certlc.agent.settings import CertificateOptions, VerifyTarget, Watched, parse_agent_settings

URL = "https://contoso.vault.azure.net/secrets/web"


def watched(store: Path, **options: Any) -> Watched:
    return parse_agent_settings({"secretsManagementSettings": {"observedCertificates": [
        {"url": URL, "certificateStoreLocation": str(store), "certlc": options}]}}).watched[0]


def material(test_ca: Any) -> Material:
    return decode_secret(test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX)


def options(**kw: Any) -> CertificateOptions:
    return CertificateOptions.model_validate(kw)


# The reload command ----------------------------------------------------------------------------------------------
def test_a_reload_argv_runs_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "reloaded"
    run_reload(options(reload=[sys.executable, "-c", f"open({str(marker)!r}, 'w').write('$HOME')"]))
    assert marker.read_text() == "$HOME"  # no shell expanded anything


def test_a_reload_string_is_split_like_a_shell_but_not_run_by_one(tmp_path: Path) -> None:
    out = tmp_path / "argv"
    script = "import sys; open(sys.argv[1], 'w').write(repr(sys.argv[2:]))"
    run_reload(options(reload=f"{sys.executable} -c \"{script}\" {out} 'a b' ; echo $HOME"))
    assert out.read_text() == repr(["a b", ";", "echo", "$HOME"])  # quotes honoured, nothing else of a shell


def test_reload_shell_runs_the_string_through_sh(tmp_path: Path) -> None:
    run_reload(options(reload=f"touch {tmp_path}/one && touch {tmp_path}/two", reload_shell=True))
    assert (tmp_path / "one").exists() and (tmp_path / "two").exists()


@pytest.mark.parametrize(("command", "words"), [
    (["sh", "-c", "echo 'nginx: [emerg] cannot load certificate' >&2; exit 3"],
     "exited with 3: nginx: [emerg] cannot load certificate"),
    (["/nonexistent/reload-me"], "cannot run"),
    (["sleep", "5"], "did not finish within 0.2 s"),
], ids=["non-zero exit with its error line", "missing command", "timeout"])
def test_reload_failures_say_what_happened(command: list[str], words: str) -> None:
    with pytest.raises(ReloadFailed) as info:
        run_reload(options(reload=command, reload_timeout=0.2))
    assert words in info.value.message


# Verification ----------------------------------------------------------------------------------------------------
def test_verify_waits_for_the_server_to_swap_its_certificate(test_ca: Any) -> None:
    old, new = test_ca.issue().leaf, test_ca.issue().leaf
    served = [old, old, new]
    sleeps: list[float] = []
    sha1 = verify_served(VerifyTarget(address="127.0.0.1:443"), new, fetch=lambda t: served.pop(0),
                         sleep=sleeps.append)
    assert sha1 == Material(key=None, leaf=new, chain=[]).sha1  # type: ignore[arg-type]
    assert sleeps == [1.0, 1.0]


def test_verify_fails_with_the_served_and_expected_thumbprints(test_ca: Any) -> None:
    old, new = test_ca.issue().leaf, test_ca.issue().leaf
    with pytest.raises(VerifyFailed) as info:
        verify_served(VerifyTarget(address="127.0.0.1:443"), new, fetch=lambda t: old, sleep=lambda s: None)
    assert "serves SHA-1" in info.value.message and "expected" in info.value.message


def test_verify_against_nothing_listening_is_a_verify_failure(test_ca: Any) -> None:
    with pytest.raises(VerifyFailed, match=r"cannot connect to 127\.0\.0\.1:9"):
        verify_served(VerifyTarget(address="127.0.0.1:9", timeout=2), test_ca.issue().leaf, attempts=1)


# deploy(): success, rollback, alert ----------------------------------------------------------------------------
def installed_twice(tmp_path: Path, test_ca: Any, **opts: Any) -> tuple[Watched, Installer, Any, Material, Material]:
    w = watched(tmp_path, **opts)
    installer = Installer(w)
    first, second = material(test_ca), material(test_ca)
    installer.install(first, "v1")
    result = installer.install(second, "v2")
    return w, installer, result, first, second


def test_a_successful_reload_and_verify_deploys(tmp_path: Path, test_ca: Any) -> None:
    w, installer, result, _, new = installed_twice(tmp_path, test_ca, reload=["true"], verify="127.0.0.1:8443")
    outcome = deploy(w, installer, result, new, reload=lambda o: None, verify=lambda t, leaf: new.sha1)
    assert outcome.ok and outcome.served_sha1 == new.sha1 and installer.current_version() == "v2"


def test_a_failed_reload_rolls_back_reloads_again_and_alerts(tmp_path: Path, test_ca: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    w, installer, result, old, _ = installed_twice(tmp_path, test_ca, reload=["false"])
    reloads: list[str] = []

    def reload(o: CertificateOptions) -> None:
        reloads.append(installer.current_version() or "")
        if len(reloads) == 1:
            raise ReloadFailed("reload command `false` exited with 1")

    with caplog.at_level(logging.ERROR, logger="certlc.agent"):
        outcome = deploy(w, installer, result, old, reload=reload)
    assert outcome.status == "RolledBack" and not outcome.ok
    assert reloads == ["v2", "v1"]  # reloaded again after the rollback
    assert installer.current_version() == "v1"
    assert (tmp_path / "contoso.web").read_bytes() == old.combined_pem()
    (record,) = caplog.records
    assert record.getMessage().startswith("ALERT contoso.vault.azure.net/web: version v2 failed after install "
                                          "(ReloadFailed")
    assert "rolled back to version v1" in record.getMessage()


def test_a_wrong_served_certificate_rolls_back(tmp_path: Path, test_ca: Any) -> None:
    w, installer, result, _, new = installed_twice(tmp_path, test_ca, verify="127.0.0.1:8443")

    def verify(target: VerifyTarget, leaf: x509.Certificate) -> str:
        raise VerifyFailed("127.0.0.1:8443 serves SHA-1 AAAA, expected BBBB")

    outcome = deploy(w, installer, result, new, reload=lambda o: None, verify=verify)
    assert outcome.status == "RolledBack" and installer.current_version() == "v1"


def test_without_a_previous_version_the_alert_says_nothing_could_be_put_back(
        tmp_path: Path, test_ca: Any, caplog: pytest.LogCaptureFixture) -> None:
    w = watched(tmp_path, reload=["false"])
    installer = Installer(w)
    m = material(test_ca)
    result = installer.install(m, "v1")

    def reload(o: CertificateOptions) -> None:
        raise ReloadFailed("boom")

    with caplog.at_level(logging.ERROR, logger="certlc.agent"):
        outcome = deploy(w, installer, result, m, reload=reload)
    assert outcome.status == "RollbackFailed" and installer.current_version() == "v1"
    assert "no previous version" in caplog.text


def test_the_poller_holds_a_rolled_back_version_and_tries_it_again_later(tmp_path: Path, test_ca: Any) -> None:
    clock = [1000.0]
    secrets = {"v": SecretVersion("v1", test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX)}
    settings = parse_agent_settings({"secretsManagementSettings": {"pollingIntervalInS": 600, "observedCertificates": [
        {"url": URL, "certificateStoreLocation": str(tmp_path)}]}})
    results = [True, False, False, True]
    calls: list[str] = []

    class Result:
        def __init__(self, ok: bool) -> None:
            self.ok = ok

    def fake_deploy(w: Watched, installer: Installer, result: Any, m: Material) -> Result:
        calls.append(result.version)
        ok = results.pop(0)
        if not ok:
            installer.rollback(to=result.previous)
        return Result(ok)

    poller = Poller(settings, lambda v, n: secrets["v"], clock=lambda: clock[0], deploy=fake_deploy)
    assert poller.poll_once().outcomes == {"contoso.vault.azure.net/web": Outcome.INSTALLED}
    secrets["v"] = SecretVersion("v2", test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX)
    assert poller.poll_once().outcomes["contoso.vault.azure.net/web"] == Outcome.ROLLED_BACK
    clock[0] += 599  # held for one interval: no reinstall, no reload
    assert poller.poll_once().outcomes["contoso.vault.azure.net/web"] == Outcome.ROLLED_BACK
    assert calls == ["v1", "v2"]
    clock[0] += 2
    assert poller.poll_once().outcomes["contoso.vault.azure.net/web"] == Outcome.ROLLED_BACK
    clock[0] += 1199  # the second failure doubles the wait
    assert poller.poll_once().outcomes["contoso.vault.azure.net/web"] == Outcome.ROLLED_BACK
    assert calls == ["v1", "v2", "v2"]
    clock[0] += 2
    assert poller.poll_once().outcomes["contoso.vault.azure.net/web"] == Outcome.INSTALLED
    assert calls == ["v1", "v2", "v2", "v2"]
