"""Poll the vaults: one GET of the latest secret per observed certificate per interval.

A pass asks each vault for the latest version of each observed secret and installs it only when
its version differs from the installed one. Failures are classified where they happen:

* **throttled** (429, or 503 with ``Retry-After``): that vault is left alone until the time the
  vault named (or the exponential backoff, whichever is later); its other certificates wait too;
* **vault unreachable** (connection, DNS, TLS, 5xx, authentication): the current files stay,
  the vault is retried after an exponential backoff (30 s doubling, capped at
  ``certlc.max_backoff``), and the failure is logged once per attempt;
* **refused secret** (malformed, no key, key mismatch, expired): the old files stay, an ERROR
  names the certificate, version and reason, and that version is not decoded again;
* **install failed** (disk, permissions, PFX password): the previous version stays current.

The SDK's own retries are off for these calls (``retry_total=0``), so a pass costs exactly one
request per observed certificate (plus, once per vault and process, Key Vault's unauthenticated
challenge round trip), and backoff is this module's alone. :class:`Poller` holds no SDK types:
it is handed a ``get_secret(vault_url, name) -> SecretVersion`` function, so it is tested with
plain fakes; :func:`sdk_secret_getter` builds the real one.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from certlc.agent.install import Installer, InstallFailed, InstallResult
from certlc.agent.material import Material, SecretRefused, decode_secret
from certlc.agent.settings import AgentSettings, Watched
from certlc.errors import CertlcError, ConfigError

__all__ = [
    "BASE_BACKOFF",
    "Outcome",
    "PassReport",
    "Poller",
    "SecretNotFound",
    "SecretVersion",
    "Throttled",
    "VaultUnavailable",
    "default_installer",
    "parse_retry_after",
    "sdk_secret_getter",
]

log = logging.getLogger("certlc.agent")

BASE_BACKOFF = 30.0  # seconds after the first failure; doubles per consecutive failure


@dataclass(frozen=True, repr=False)
class SecretVersion:
    """The latest version of a secret as the vault returned it (value never in repr)."""

    version: str
    value: str
    content_type: str | None

    def __repr__(self) -> str:
        return f"SecretVersion(version={self.version!r}, content_type={self.content_type!r})"


class VaultUnavailable(CertlcError):
    """The vault could not be asked (network, TLS, 5xx, authentication)."""

    reason = "VaultUnreachable"


class Throttled(VaultUnavailable):
    """The vault said 429 (or 503) and when to come back."""

    reason = "Throttled"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class SecretNotFound(CertlcError):
    """The observed secret does not exist (or the agent may not read it)."""

    reason = "SecretNotFound"


# Outcomes of one certificate in one pass.
class Outcome:
    INSTALLED = "Installed"
    UNCHANGED = "Unchanged"
    REFUSED = "Refused"
    FAILED = "Failed"
    THROTTLED = "Throttled"
    UNREACHABLE = "VaultUnreachable"
    WAITING = "BackingOff"  # not asked this pass: its vault is backing off
    ROLLED_BACK = "RolledBack"  # installed, but reload/verify failed: the previous version is back
    # Installed, reload/verify failed and there was nothing to roll back to: it stays, and reload
    # and verify are tried again later (not reported as Unchanged meanwhile).
    DEPLOY_FAILED = "DeployFailed"


@dataclass
class PassReport:
    """What one pass did per certificate (``key`` -> outcome) and how many requests it made."""

    outcomes: dict[str, str] = field(default_factory=dict)
    installed: dict[str, InstallResult] = field(default_factory=dict)
    requests: int = 0
    # Why a certificate was refused, failed or rolled back this pass (for the rollout report).
    alerts: dict[str, str] = field(default_factory=dict)
    # The leaf of each version decoded this pass: key -> (version, SHA-1, not_after).
    leaves: dict[str, tuple[str, str, dt.datetime]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o in (Outcome.INSTALLED, Outcome.UNCHANGED) for o in self.outcomes.values())


@dataclass
class _VaultState:
    failures: int = 0
    not_before: float = 0.0  # monotonic time before which the vault is not asked


@dataclass
class _CertState:
    refused_version: str | None = None
    refused_alert: str | None = None
    failed_version: str | None = None  # reload/verify failed after install; retried at retry_at
    failed_alert: str | None = None
    deploy_failures: int = 0
    retry_at: float = 0.0


def _capped_backoff(base: float, failures: int, cap: float) -> float:
    """``base`` doubled per failure after the first, never above ``cap`` (and never overflowing)."""
    return min(cap, base * 2 ** min(failures - 1, 60))


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent/unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


SecretGetter = Callable[[str, str], SecretVersion]
InstalledHook = Callable[[Watched, Installer, InstallResult, Material], None]
# After each pass: (installers by key, the pass's report); certlc.agent.report.Reporter writes the rollout report.
PassHook = Callable[[dict[str, Any], "PassReport"], Any]
_AUTO: Any = object()
# Reload / verify / roll back after an install (certlc.agent.deploy.deploy); its result has ``ok``.
DeployHook = Callable[[Watched, Installer, InstallResult, Material], Any]


def default_installer(watched: Watched) -> Any:
    """The file installer; the Windows store installer for a certificate with a Windows store (Windows only)."""
    if watched.windows_store is not None:
        from certlc.agent.winstore import StoreInstaller

        return StoreInstaller(watched)
    return Installer(watched)


class Poller:
    """Keeps the observed certificates' files at the vaults' latest versions."""

    def __init__(self, settings: AgentSettings, get_secret: SecretGetter, *,
                 clock: Callable[[], float] = time.monotonic,
                 installer_factory: Callable[[Watched], Installer] = default_installer,
                 on_installed: InstalledHook | None = None, deploy: DeployHook | None = None,
                 after_pass: PassHook | None = _AUTO) -> None:
        self.settings = settings
        self._get_secret = get_secret
        self._clock = clock
        self._installers = {w.key: installer_factory(w) for w in settings.watched}
        self._vaults: dict[str, _VaultState] = {}
        self._certs: dict[str, _CertState] = {w.key: _CertState() for w in settings.watched}
        self._on_installed = on_installed
        self._deploy = deploy
        self.max_backoff = float(settings.certlc.max_backoff)
        if after_pass is _AUTO:
            # The rollout report, for the real agent (settings from a file) or when configured.
            after_pass = None
            if settings.reports:
                from certlc.agent.report import Reporter

                after_pass = Reporter(settings)
        self._after_pass = after_pass

    def installer(self, watched: Watched) -> Installer:
        return self._installers[watched.key]

    # --- one pass --------------------------------------------------------------------------------
    def poll_once(self) -> PassReport:
        """Ask for each observed certificate once (vaults backing off are skipped) and install changes."""
        report = PassReport()
        for watched in self.settings.watched:
            vault = self._vaults.setdefault(watched.vault_url, _VaultState())
            now = self._clock()
            if vault.not_before > now:
                report.outcomes[watched.key] = Outcome.WAITING
                continue
            report.requests += 1
            try:
                report.outcomes[watched.key] = self._poll_one(watched, vault, report)
            except Exception as exc:  # one certificate's surprise must not stop the others, or the loop
                message = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.error("%s: unexpected failure, keeping the installed files: %s", watched.key, message)
                report.alerts[watched.key] = f"unexpected failure: {message}"
                report.outcomes[watched.key] = Outcome.FAILED
        if self._after_pass is not None:
            try:
                self._after_pass(self._installers, report)
            except Exception as exc:  # the report never fails a pass
                log.warning("rollout report failed: %s: %s", type(exc).__name__, exc)
        return report

    def _poll_one(self, watched: Watched, vault: _VaultState, report: PassReport) -> str:
        try:
            latest = self._get_secret(watched.vault_url, watched.secret_name)
        except Throttled as exc:
            delay = self._back_off(vault, exc.retry_after)
            log.warning("%s: the vault is throttling (%s); not asking it again for %.0f s",
                        watched.key, exc.message, delay)
            return Outcome.THROTTLED
        except VaultUnavailable as exc:
            delay = self._back_off(vault, None)
            log.warning("%s: vault unreachable (%s); keeping the installed files, next attempt in %.0f s",
                        watched.key, exc.message, delay)
            return Outcome.UNREACHABLE
        except SecretNotFound as exc:
            vault.failures = 0
            log.error("%s: %s; keeping the installed files", watched.key, exc.message)
            report.alerts[watched.key] = exc.message
            return Outcome.FAILED
        vault.failures, vault.not_before = 0, 0.0
        installer = self._installers[watched.key]
        state = self._certs[watched.key]
        current = installer.current_version()
        relayout = False
        if latest.version == state.failed_version:
            if self._clock() < state.retry_at:
                log.debug("%s: version %s failed after install; next attempt in %.0f s", watched.key,
                          latest.version, state.retry_at - self._clock())
                if state.failed_alert:
                    report.alerts[watched.key] = state.failed_alert
                return Outcome.DEPLOY_FAILED if current == latest.version else Outcome.ROLLED_BACK
            # Due again: install (again) and deploy, even when it is the version on disk.
        elif latest.version == current:
            if getattr(installer, "layout_matches", lambda: True)():
                log.debug("%s: version %s is installed; nothing to do", watched.key, latest.version)
                return Outcome.UNCHANGED
            log.info("%s: the settings changed since version %s was written; writing it again",
                     watched.key, latest.version)
            relayout = True
        if latest.version == state.refused_version:
            log.debug("%s: version %s was refused before; still keeping the installed files",
                      watched.key, latest.version)
            if state.refused_alert:
                report.alerts[watched.key] = state.refused_alert
            return Outcome.REFUSED
        try:
            material = decode_secret(latest.value, latest.content_type, version=latest.version)
        except SecretRefused as exc:
            alert = f"version {latest.version} refused ({exc.reason}: {exc.message})"
            report.alerts[watched.key] = alert
            if exc.reason == "LeafNotYetValid":  # becomes installable by itself: look again next pass
                log.warning("%s: not installing version %s yet (%s); keeping the installed version %s",
                            watched.key, latest.version, exc.message, installer.current_version() or "(none)")
                return Outcome.REFUSED
            state.refused_version, state.refused_alert = latest.version, alert
            log.error("%s: refusing version %s (%s: %s); keeping the installed version %s",
                      watched.key, latest.version, exc.reason, exc.message, installer.current_version() or "(none)")
            return Outcome.REFUSED
        try:
            result = installer.install(material, latest.version)
        except (InstallFailed, ConfigError) as exc:
            report.alerts[watched.key] = f"cannot install version {latest.version}: {exc.message}"
            log.error("%s: cannot install version %s: %s; the installed version %s stays",
                      watched.key, latest.version, exc.message, installer.current_version() or "(none)")
            return Outcome.FAILED
        state.refused_version = state.refused_alert = None
        if relayout:
            # The same version in new files: a failed reload must not roll back to an older version.
            result.previous = None
        report.installed[watched.key] = result
        report.leaves[watched.key] = (latest.version, material.sha1, material.not_after)
        if material.unlinked:
            log.warning("%s: version %s holds %d certificate(s) that are not issuers of its leaf; kept at the "
                        "end of the chain", watched.key, latest.version, material.unlinked)
        log.info("%s: installed version %s (SHA-1 %s, expires %s) in %s; previous %s",
                 watched.key, latest.version, material.sha1, f"{material.not_after:%Y-%m-%d}", result.directory,
                 result.previous or "(none)")
        if self._on_installed is not None:
            self._on_installed(watched, installer, result, material)
        deployed = self._deploy(watched, installer, result, material) if self._deploy is not None else None
        if deployed is not None and not deployed.ok:
            stays = installer.current_version() == latest.version
            alert = (f"version {latest.version} {'failed, nothing to roll back to' if stays else 'rolled back'}: "
                     f"{getattr(deployed, 'message', '')}").rstrip(": ")
            report.alerts[watched.key] = alert
            state.failed_version, state.failed_alert = latest.version, alert
            state.deploy_failures += 1
            delay = _capped_backoff(self.settings.polling_interval, state.deploy_failures, self.max_backoff)
            state.retry_at = self._clock() + delay
            return Outcome.DEPLOY_FAILED if stays else Outcome.ROLLED_BACK
        state.failed_version, state.failed_alert, state.deploy_failures = None, None, 0
        return Outcome.INSTALLED

    def _back_off(self, vault: _VaultState, retry_after: float | None) -> float:
        vault.failures += 1
        delay = _capped_backoff(BASE_BACKOFF, vault.failures, self.max_backoff)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        vault.not_before = self._clock() + delay
        return delay

    def backoff_until(self, vault_url: str) -> float | None:
        """The clock time before which ``vault_url`` is not asked again, or None when it is not backing off."""
        state = self._vaults.get(vault_url)
        return state.not_before if state is not None and state.failures else None

    # --- the loop --------------------------------------------------------------------------------
    def next_wake(self, pass_started: float) -> float:
        """When the next pass is due: one interval after this one started, sooner if a backoff ends first."""
        due = pass_started + self.settings.polling_interval
        waits = [v.not_before for v in self._vaults.values() if v.failures and v.not_before > pass_started]
        return min([due, *waits])

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set: a pass, then sleep until the next one is due."""
        initial_sync = self.settings.secrets_management.require_initial_sync
        while not stop.is_set():
            started = self._clock()
            report = self.poll_once()
            if initial_sync and all(i.current_version() for i in self._installers.values()):
                log.info("initial sync complete: every observed certificate is installed")
                initial_sync = False
            stop.wait(max(0.0, self.next_wake(started) - self._clock()))
            del report


def sdk_secret_getter(settings: AgentSettings) -> SecretGetter:
    """``get_secret(vault_url, name)`` over the official SecretClient, one client per vault.

    Clients come from certlc's one client factory (:mod:`certlc.clients`): ``DefaultAzureCredential``
    (the ``msiClientId`` identity when set), the CA bundle and the loopback challenge rule.
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    from certlc.clients import secret_client
    from certlc.config import AzureSettings, Settings, VaultSettings

    core = Settings(azure=AzureSettings(ca_bundle=settings.certlc.ca_bundle,
                                        managed_identity_client_id=settings.authentication.msi_client_id,
                                        verify_challenge_resource=settings.certlc.verify_challenge_resource))

    def get(vault_url: str, name: str) -> SecretVersion:
        client = secret_client(VaultSettings(name=vault_url, url=vault_url), core)
        try:
            # retry_total=0: one request per call; this module backs off itself.
            secret = client.get_secret(name, retry_total=0)
        except ResourceNotFoundError:
            raise SecretNotFound(f"secret {name} not found in {vault_url}") from None
        except ClientAuthenticationError as exc:
            if getattr(exc, "status_code", None) is None:
                # No token at all: no managed identity endpoint, or a credential that failed;
                # DefaultAzureCredential's first line names each source it tried.
                raise VaultUnavailable(f"no access token for the agent's identity ({type(exc).__name__}: "
                                       f"{_first_line(exc)}); on a VM its managed identity must be enabled "
                                       "(authenticationSettings.msiClientId names a user-assigned one)") from None
            raise VaultUnavailable(f"not authorised ({_status(exc)}): the agent's identity needs Key Vault "
                                   "Secrets User (get) on this secret") from None
        except HttpResponseError as exc:
            status = getattr(exc, "status_code", None)
            if status in (429, 503):
                headers = exc.response.headers if exc.response is not None else {}
                raise Throttled(f"HTTP {status}", retry_after=parse_retry_after(headers.get("Retry-After"))) from None
            if status == 403:
                raise SecretNotFound(f"the agent may not read secret {name} in {vault_url} (403): it needs "
                                     "Key Vault Secrets User on it") from None
            raise VaultUnavailable(f"HTTP {status}") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise VaultUnavailable(f"{type(exc).__name__}: {_first_line(exc)}") from None
        if secret.value is None or secret.properties.version is None:
            raise SecretNotFound(f"secret {name} in {vault_url} has no value")
        return SecretVersion(version=secret.properties.version, value=secret.value,
                             content_type=secret.properties.content_type)

    return get


def _status(exc: Any) -> str:
    status = getattr(exc, "status_code", None)
    return f"HTTP {status}" if status else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
