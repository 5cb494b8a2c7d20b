"""The rollout report: which version of each observed certificate is installed on this host.

After each pass the agent writes a JSON document (schema ``certlc.rollout/1``, see docs/agent.md)
to ``certlc.report.path`` (default ``<state_dir>/rollout.json``; atomic, mode 0644) and, when
``certlc.report.url`` is set, POSTs the same document there (the webhook app's ``/api/rollout``)
with the shared key in a header. Neither the write nor the POST can fail a pass: problems are
logged as warnings. The report holds thumbprints, versions and dates, never key material.

Per certificate: the vault, the secret, the installed version, its SHA-1 thumbprint and expiry,
when it was installed, this pass's result and the last alert (refusal, failed install,
rollback). What a pass did not learn (a certificate left unchanged) is read from the installed
files or carried over from the previous report for the same version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from certlc import __version__
from certlc.agent.install import FILE_NAMES as _FILE_NAMES
from certlc.agent.install import make_dirs, write_atomic
from certlc.agent.settings import AgentSettings, ReportOptions, Watched
from certlc.errors import CertlcError
from certlc.rollout import MAX_ALERT, SCHEMA  # the receiver's contract: one definition for both sides
from certlc.x509 import load_certificates, sha1_thumbprint

__all__ = ["MAX_ALERT", "SCHEMA", "Reporter", "build_report", "post_report", "read_report", "report_key", "write_report"]

log = logging.getLogger("certlc.agent")

# Results whose alert stays until something new happens (the poller did not re-evaluate them).
_STICKY = {"Refused", "RolledBack", "DeployFailed", "BackingOff"}


def _iso(when: dt.datetime | None) -> str | None:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if when else None


def _leaf_from_files(installer: Any, version: str) -> tuple[str, str] | None:
    """(SHA-1, not_after) of ``version``'s leaf from a PEM output file; None when there is none."""
    outputs = getattr(getattr(installer, "options", None), "outputs", ())
    for form in ("cert", "fullchain", "pem"):
        if form not in outputs or not hasattr(installer, "path_of"):
            continue
        try:
            certs = load_certificates(installer.path_of(form, version).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, CertlcError, ValueError):
            continue
        if certs:
            return sha1_thumbprint(certs[0]), _iso(certs[0].not_valid_after_utc) or ""
    return None


def _installed_at_from_files(installer: Any, version: str) -> str | None:
    versions_dir = getattr(installer, "versions_dir", None)
    if versions_dir is None:
        return None
    try:
        return _iso(dt.datetime.fromtimestamp((Path(versions_dir) / version).stat().st_mtime, dt.UTC))
    except OSError:
        return None


def _entry(watched: Watched, installer: Any, pass_report: Any, previous: Mapping[str, Any] | None,
           now: dt.datetime) -> dict[str, Any]:
    version = installer.current_version()
    outcome = pass_report.outcomes.get(watched.key) if pass_report is not None else None
    alert = pass_report.alerts.get(watched.key) if pass_report is not None else None
    same = previous is not None and previous.get("installed_version") == version and version is not None
    thumbprint = not_after = installed_at = None
    leaf = pass_report.leaves.get(watched.key) if pass_report is not None else None
    if version is not None:
        if leaf is not None and leaf[0] == version:
            thumbprint, not_after = leaf[1], _iso(leaf[2])
        store_entry = installer.entry(version) if hasattr(installer, "entry") else None
        if store_entry:
            thumbprint = thumbprint or store_entry.get("thumbprint")
            not_after = not_after or store_entry.get("not_after")
            installed_at = store_entry.get("installed_at")
        if thumbprint is None and same:
            thumbprint, not_after = previous.get("thumbprint"), previous.get("not_after")  # type: ignore[union-attr]
        if thumbprint is None:
            found = _leaf_from_files(installer, version)
            if found is not None:
                thumbprint, not_after = found
        installed = pass_report.installed.get(watched.key) if pass_report is not None else None
        if installed is not None and installed.version == version:
            installed_at = _iso(now)
        elif installed_at is None and same:
            installed_at = previous.get("installed_at")  # type: ignore[union-attr]
        elif installed_at is None:
            installed_at = _installed_at_from_files(installer, version)
    if alert is None and previous is not None and outcome in _STICKY:
        alert = previous.get("alert")
    if alert is not None and len(alert) > MAX_ALERT:  # the receiver refuses longer ones, and a line is enough
        alert = alert[:MAX_ALERT - 1] + "…"
    store = watched.windows_store.path if watched.windows_store is not None else str(watched.store)
    return {
        "key": watched.key,
        "vault": watched.vault_url,
        "name": watched.secret_name,
        "store": store,
        "files": sorted(_FILE_NAMES[f] for f in watched.options.outputs) if watched.windows_store is None else [],
        "installed_version": version,
        "thumbprint": thumbprint,
        "not_after": not_after,
        "installed_at": installed_at,
        "last_result": outcome,
        "alert": alert,
    }


def build_report(settings: AgentSettings, installers: Mapping[str, Any], pass_report: Any, *,
                 host: str | None = None, previous: Mapping[str, Any] | None = None,
                 now: dt.datetime | None = None) -> dict[str, Any]:
    """The rollout document after a pass (``pass_report``: the poller's PassReport)."""
    now = now or dt.datetime.now(dt.UTC)
    before = {c.get("key"): c for c in (previous or {}).get("certificates", []) if isinstance(c, dict)}
    return {
        "schema": SCHEMA,
        "host": host or settings.certlc.report.host or socket.gethostname(),
        "agent_version": __version__,
        "generated_at": _iso(now),
        "polling_interval": settings.polling_interval,
        "requests": pass_report.requests if pass_report is not None else 0,
        "certificates": [_entry(w, installers[w.key], pass_report, before.get(w.key), now) for w in settings.watched],
    }


def read_report(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` to ``path`` atomically, mode 0644 (it holds no secrets)."""
    make_dirs(path.parent)
    write_atomic(path, json.dumps(report, indent=1).encode() + b"\n", mode=0o644)


def report_key(options: ReportOptions, environ: Mapping[str, str] | None = None) -> str | None:
    """The shared key from ``key_env`` or ``key_file`` (first line); None when none is configured.

    Raises CertlcError when one is configured but cannot be read.
    """
    environ = os.environ if environ is None else environ
    if options.key_env is not None:
        value = environ.get(options.key_env)
        if not value:
            raise CertlcError(f"the report key variable {options.key_env} is not set")
        return value
    if options.key_file is not None:
        try:
            lines = options.key_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CertlcError(f"cannot read the report key file {options.key_file}: "
                              f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        if not lines or not lines[0]:
            raise CertlcError(f"the report key file {options.key_file} is empty")
        return lines[0]
    return None


def _tls_context(bundle: Path | None) -> ssl.SSLContext | bool:
    """The public roots (certifi, as httpx uses) plus ``bundle``, for a webhook behind a private CA."""
    if bundle is None:
        return True
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    context.load_verify_locations(cafile=str(bundle))
    return context


def post_report(options: ReportOptions, report: Mapping[str, Any], *, environ: Mapping[str, str] | None = None,
                transport: httpx.BaseTransport | None = None, ca_bundle: Path | None = None) -> bool:
    """POST ``report`` to ``options.url``; True on a 2xx answer. Every failure is a warning, never raised.

    The server's certificate is checked against the public roots plus ``options.ca_bundle``
    (else ``ca_bundle``, the vault's: an estate with a private CA serves both from it).
    """
    if options.url is None:
        return False
    try:
        key = report_key(options, environ)
    except CertlcError as exc:
        log.warning("rollout report not sent to %s: %s", options.url, exc.message)
        return False
    headers = {"User-Agent": f"certlc-agent/{__version__}"}
    if key is not None:
        headers[options.header] = f"Bearer {key}" if options.header.lower() == "authorization" else key
    try:
        verify = _tls_context(options.ca_bundle or ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        log.warning("rollout report not sent to %s: cannot read the CA bundle: %s", options.url, exc)
        return False
    try:
        with httpx.Client(transport=transport, timeout=options.timeout, follow_redirects=False,
                          verify=verify) as client:
            response = client.post(options.url, json=report, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("rollout report not sent to %s: %s: %s", options.url, type(exc).__name__, str(exc)[:200])
        return False
    if not response.is_success:
        log.warning("rollout report refused by %s: HTTP %d", options.url, response.status_code)
        return False
    return True


class Reporter:
    """Called by the poller after each pass: writes the state file and POSTs the report."""

    def __init__(self, settings: AgentSettings, *, transport: httpx.BaseTransport | None = None,
                 environ: Mapping[str, str] | None = None, host: str | None = None,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.settings = settings
        self.path = settings.certlc.report_path
        self._transport = transport
        self._environ = environ
        self._host = host
        self._now = now

    def __call__(self, installers: Mapping[str, Any], pass_report: Any) -> dict[str, Any]:
        report = build_report(self.settings, installers, pass_report, host=self._host,
                              previous=read_report(self.path), now=self._now())
        try:
            write_report(self.path, report)
        except OSError as exc:
            log.warning("cannot write the rollout report %s: %s", self.path, exc.strerror or exc)
        post_report(self.settings.certlc.report, report, environ=self._environ, transport=self._transport,
                    ca_bundle=self.settings.certlc.ca_bundle)
        return report
