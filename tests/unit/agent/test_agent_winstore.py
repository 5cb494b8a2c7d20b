"""The Windows store installer: exact PowerShell command lines (fake runner), values only in the environment."""

from __future__ import annotations

import base64
import datetime as dt
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from certlc.agent.deploy import deploy
from certlc.agent.install import Installer, InstallFailed
from certlc.agent.material import CONTENT_TYPE_PFX, decode_secret
from certlc.agent.poll import Outcome, Poller, SecretVersion, default_installer
from certlc.agent.settings import parse_agent_settings
from certlc.agent.winstore import (
    IMPORT_SCRIPT,
    POWERSHELL,
    REMOVE_SCRIPT,
    RENAME_SCRIPT,
    RunResult,
    StoreInstaller,
    powershell_argv,
)
from certlc.errors import ConfigError

URL = "https://contoso.vault.azure.net/secrets/web"
HOSTILE = "web'; Remove-Item C:\\ -Recurse; $(calc) \"x\""


class FakeRunner:
    """Records every command line and its environment; answers the import with the expected thumbprint."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.pfx: list[tuple[bytes, str]] = []  # the PFX bytes and password seen at import time
        self.fail: int | None = None
        self.answer: str | None = None

    def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> RunResult:
        self.calls.append((list(argv), dict(env)))
        if self.fail is not None:
            return RunResult(self.fail, "", "Import-PfxCertificate : Access is denied.\n")
        if "CERTLC_PFX_PATH" in env:
            path = Path(env["CERTLC_PFX_PATH"])
            self.pfx.append((path.read_bytes(), env["CERTLC_PFX_PASSWORD"]))
            return RunResult(0, f"{self.answer or env['CERTLC_THUMBPRINT']}\r\n")
        return RunResult(0, "")

    def scripts(self) -> list[str]:
        return [base64.b64decode(argv[-1]).decode("utf-16-le") for argv, _ in self.calls]


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")


def settings(tmp_path: Path, entry: dict[str, Any] | None = None, **top: Any) -> Any:
    obs = {"url": URL, "certificateStoreName": "My", **(entry or {})}
    return parse_agent_settings({"secretsManagementSettings": {"observedCertificates": [obs], **top},
                                 "certlc": {"state_dir": str(tmp_path / "state")}})


def material(test_ca: Any) -> Any:
    return decode_secret(test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX)


# Settings ----------------------------------------------------------------------------------------------------------
def test_off_windows_the_store_settings_are_ignored_as_before(tmp_path: Path) -> None:
    watched = settings(tmp_path, {"certificateStoreLocation": str(tmp_path)}).watched[0]
    assert watched.windows_store is None and watched.store == tmp_path
    assert isinstance(default_installer(watched), Installer)


def test_on_windows_a_store_name_selects_the_store(tmp_path: Path, windows: None) -> None:
    watched = settings(tmp_path, {"keyExportable": True, "accounts": ["NT AUTHORITY\\NETWORK SERVICE"]}).watched[0]
    store = watched.windows_store
    assert store is not None
    assert (store.name, store.location, store.exportable) == ("My", "LocalMachine", True)
    assert store.accounts == ("NT AUTHORITY\\NETWORK SERVICE",) and store.path == "Cert:\\LocalMachine\\My"
    assert watched.store == tmp_path / "state" / "winstore"
    assert isinstance(default_installer(watched), StoreInstaller)
    top = parse_agent_settings({"secretsManagementSettings": {
        "certificateStoreName": "WebHosting", "certificateStoreLocation": "currentuser", "observedCertificates": [URL]},
        "certlc": {"state_dir": str(tmp_path)}}).watched[0].windows_store
    assert top is not None and top.path == "Cert:\\CurrentUser\\WebHosting" and not top.exportable


@pytest.mark.parametrize(("entry", "message"), [
    ({"certificateStoreLocation": "/etc/ssl"}, "is not LocalMachine or CurrentUser"),
    ({"certificateStoreName": "..\\..\\Root"}, "is not a certificate store name"),
])
def test_on_windows_bad_store_settings_are_refused(tmp_path: Path, windows: None, entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, entry)


def test_on_windows_without_a_store_name_files_are_written_as_before(tmp_path: Path, windows: None) -> None:
    watched = parse_agent_settings({"secretsManagementSettings": {"observedCertificates": [
        {"url": URL, "certificateStoreLocation": str(tmp_path)}]}}).watched[0]
    assert watched.windows_store is None and isinstance(default_installer(watched), Installer)


# Install -----------------------------------------------------------------------------------------------------------
def test_install_imports_the_pfx_with_a_constant_script_and_values_in_the_environment(
        tmp_path: Path, windows: None, test_ca: Any) -> None:
    watched = settings(tmp_path, {"accounts": ["NT AUTHORITY\\NETWORK SERVICE", "IIS APPPOOL\\web"],
                                  "certlc": {"name": HOSTILE}}).watched[0]
    runner = FakeRunner()
    when = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    installer = StoreInstaller(watched, runner=runner, now=lambda: when)
    m = material(test_ca)
    result = installer.install(m, "v1")

    assert len(runner.calls) == 1
    argv, env = runner.calls[0]
    assert argv == [POWERSHELL, "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand",
                    base64.b64encode(IMPORT_SCRIPT.encode("utf-16-le")).decode()]
    assert argv == powershell_argv(IMPORT_SCRIPT)
    assert runner.scripts() == [IMPORT_SCRIPT]
    assert "Import-PfxCertificate @import" in IMPORT_SCRIPT and "$import.Exportable = $true" in IMPORT_SCRIPT
    assert env["CERTLC_STORE_PATH"] == "Cert:\\LocalMachine\\My"
    assert env["CERTLC_THUMBPRINT"] == m.sha1
    assert env["CERTLC_EXPORTABLE"] == "0"  # keyExportable not set
    assert env["CERTLC_FRIENDLY_NAME"] == HOSTILE
    assert env["CERTLC_ACCOUNTS"] == "NT AUTHORITY\\NETWORK SERVICE\nIIS APPPOOL\\web"
    # Nothing from the settings, the vault or the password is on the command line.
    assert not any(v in " ".join(argv) for v in (HOSTILE, "NETWORK SERVICE", env["CERTLC_PFX_PASSWORD"]))
    # The PFX: leaf and key only, under a random one-time password; gone afterwards with its directory.
    data, password = runner.pfx[0]
    assert len(password) >= 32
    pfx = pkcs12.load_pkcs12(data, password.encode())
    assert pfx.cert is not None and pfx.cert.certificate == m.leaf and not pfx.additional_certs
    assert pfx.key is not None
    pfx_path = Path(env["CERTLC_PFX_PATH"])
    assert not pfx_path.exists() and not pfx_path.parent.exists()

    assert result.version == "v1" and result.previous is None and result.files == {}
    assert installer.current_version() == "v1" and installer.thumbprint() == m.sha1
    assert installer.history() == ["v1"]
    state = installer.state_file
    assert state.parent == tmp_path / "state" / "winstore"
    assert state.is_file() and "2026-12-03T12:00:00+00:00" in state.read_text()


def test_key_exportable_adds_the_flag_and_legacy_uses_3des(tmp_path: Path, windows: None, test_ca: Any) -> None:
    watched = settings(tmp_path, {"keyExportable": True, "certlc": {"pfx": {"legacy": True}}}).watched[0]
    runner = FakeRunner()
    StoreInstaller(watched, runner=runner).install(material(test_ca), "v1")
    assert runner.calls[0][1]["CERTLC_EXPORTABLE"] == "1"
    data, password = runner.pfx[0]
    assert pkcs12.load_pkcs12(data, password.encode()).key is not None
    assert b"\x2a\x86\x48\x86\xf7\x0d\x01\x0c\x01\x03" in data  # pbeWithSHAAnd3-KeyTripleDES-CBC


@pytest.mark.parametrize(("fail", "answer", "message"), [
    (1, None, r"importing version v2 in Cert:\\LocalMachine\\My failed \(exit 1\): Import-PfxCertificate : Access"),
    (None, "0" * 40, "the store reports thumbprint 0000"),
])
def test_a_failed_import_leaves_the_current_version_and_no_pfx(tmp_path: Path, windows: None, test_ca: Any,
                                                               fail: int | None, answer: str | None,
                                                               message: str) -> None:
    runner = FakeRunner()
    installer = StoreInstaller(settings(tmp_path).watched[0], runner=runner)
    installer.install(material(test_ca), "v1")
    runner.fail, runner.answer = fail, answer
    with pytest.raises(InstallFailed, match=message):
        installer.install(material(test_ca), "v2")
    assert installer.current_version() == "v1"
    assert not Path(runner.calls[-1][1]["CERTLC_PFX_PATH"]).parent.exists()


def test_superseded_versions_leave_the_store_only_after_the_new_one_is_in(tmp_path: Path, windows: None,
                                                                          test_ca: Any) -> None:
    runner = FakeRunner()
    installer = StoreInstaller(settings(tmp_path, {"certlc": {"keep_versions": 1}}).watched[0], runner=runner)
    thumbprints = []
    for version in ("v1", "v2", "v3"):
        m = material(test_ca)
        thumbprints.append(m.sha1)
        result = installer.install(m, version)
    assert result.removed_versions == ["v1"]
    assert runner.scripts() == [IMPORT_SCRIPT, IMPORT_SCRIPT, IMPORT_SCRIPT, REMOVE_SCRIPT]  # import v3, then remove v1
    assert runner.calls[-1][1] == {"CERTLC_STORE_PATH": "Cert:\\LocalMachine\\My", "CERTLC_THUMBPRINT": thumbprints[0]}
    assert "Remove-Item -LiteralPath $path -DeleteKey" in REMOVE_SCRIPT
    assert installer.history() == ["v2", "v3"]


def test_a_failed_reload_rolls_the_store_back(tmp_path: Path, windows: None, test_ca: Any) -> None:
    from certlc.agent.deploy import ReloadFailed

    watched = settings(tmp_path, {"certlc": {"reload": ["iisreset", "/noforce"]}}).watched[0]
    runner = FakeRunner()
    installer = StoreInstaller(watched, runner=runner)
    first, second = material(test_ca), material(test_ca)
    installer.install(first, "v1")
    result = installer.install(second, "v2")
    reloads: list[int] = []

    def reload(options: Any) -> None:
        reloads.append(1)
        if len(reloads) == 1:
            raise ReloadFailed("reload command `iisreset /noforce` exited with 1")

    outcome = deploy(watched, installer, result, second, reload=reload)  # type: ignore[arg-type]
    assert outcome.status == "RolledBack" and len(reloads) == 2
    assert runner.scripts()[-2:] == [RENAME_SCRIPT, REMOVE_SCRIPT]
    assert runner.calls[-2][1]["CERTLC_THUMBPRINT"] == first.sha1
    assert runner.calls[-1][1]["CERTLC_THUMBPRINT"] == second.sha1
    assert installer.current_version() == "v1" and installer.history() == ["v1"]


def test_the_poller_uses_the_store_installer_on_windows(tmp_path: Path, windows: None, test_ca: Any) -> None:
    runner = FakeRunner()
    s = settings(tmp_path)
    secret = SecretVersion("v1", test_ca.issue().pfx_secret(), CONTENT_TYPE_PFX)
    poller = Poller(s, lambda vault, name: secret, installer_factory=lambda w: StoreInstaller(w, runner=runner))
    assert poller.poll_once().outcomes == {"contoso.vault.azure.net/web": Outcome.INSTALLED}
    assert poller.poll_once().outcomes == {"contoso.vault.azure.net/web": Outcome.UNCHANGED}
    assert len(runner.calls) == 1
