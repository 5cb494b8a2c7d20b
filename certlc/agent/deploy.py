"""After an install: reload the service, prove the new certificate is served, roll back if not.

:func:`deploy` runs the certificate's ``reload`` command (an argv, no shell unless
``reload_shell``; with a timeout), then connects to its ``verify`` target with TLS (SNI) and
compares the served leaf's SHA-1 and SHA-256 thumbprints with the installed one's, a few times
while the service settles. When the reload fails or another certificate is served, the previous
version's links are put back (:meth:`Installer.rollback`), the service is reloaded again, and an
``ALERT`` line is logged at ERROR; the poller tries the new version again later. Key material
never reaches a log line: only thumbprints, versions, exit codes and the command's first line
of error output (truncated) do.
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certlc.agent.install import Installer, InstallFailed, InstallResult
from certlc.agent.material import Material
from certlc.agent.settings import CertificateOptions, VerifyTarget, Watched
from certlc.errors import CertlcError

__all__ = [
    "DeployOutcome",
    "ReloadFailed",
    "VerifyFailed",
    "deploy",
    "run_reload",
    "served_certificate",
    "verify_served",
]

log = logging.getLogger("certlc.agent")


class ReloadFailed(CertlcError):
    reason = "ReloadFailed"


class VerifyFailed(CertlcError):
    reason = "VerifyFailed"


@dataclass(frozen=True)
class DeployOutcome:
    """``Deployed`` (reloaded and, when configured, served), ``RolledBack`` or ``RollbackFailed``."""

    status: str
    version: str
    message: str = ""
    served_sha1: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "Deployed"


def run_reload(options: CertificateOptions, *, run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run
               ) -> None:
    """Run the reload command; ReloadFailed when it cannot start, times out or exits non-zero."""
    command = options.reload
    if command is None:
        return
    if options.reload_shell:
        argv: list[str] | str = command if isinstance(command, str) else shlex.join(command)
    else:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
    shown = argv if isinstance(argv, str) else shlex.join(argv)
    try:
        proc = run(argv, shell=options.reload_shell, timeout=options.reload_timeout,  # shell only when reload_shell
                   stdin=subprocess.DEVNULL, capture_output=True, check=False)
    except subprocess.TimeoutExpired:
        raise ReloadFailed(f"reload command `{shown}` did not finish within {options.reload_timeout:g} s") from None
    except OSError as exc:
        raise ReloadFailed(f"reload command `{shown}` cannot run: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        err = (proc.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        detail = f": {err[-1][:200]}" if err else ""
        raise ReloadFailed(f"reload command `{shown}` exited with {proc.returncode}{detail}")


def served_certificate(target: VerifyTarget) -> x509.Certificate:
    """The leaf certificate ``target`` serves (TLS with SNI; trust is not checked, identity is)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the thumbprint comparison is the check here
    server_name = target.server_name
    if server_name is None:
        try:
            ipaddress.ip_address(target.host)
        except ValueError:
            server_name = target.host
    try:
        with socket.create_connection((target.host, target.port), timeout=target.timeout) as sock, \
                context.wrap_socket(sock, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise VerifyFailed(f"cannot connect to {target.address} with TLS: {exc.strerror or exc}"
                           if isinstance(exc, OSError) and exc.strerror else
                           f"cannot connect to {target.address} with TLS: {type(exc).__name__}: {exc}") from None
    if not der:
        raise VerifyFailed(f"{target.address} sent no certificate")
    return x509.load_der_x509_certificate(der)


def _thumbprints(cert: x509.Certificate) -> tuple[str, str]:
    return (cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 (a name, not a protection)
            cert.fingerprint(hashes.SHA256()).hex().upper())


def verify_served(target: VerifyTarget, expected: x509.Certificate, *, attempts: int = 5, pause: float = 1.0,
                  fetch: Callable[[VerifyTarget], x509.Certificate] = served_certificate,
                  sleep: Callable[[float], None] = time.sleep) -> str:
    """The served SHA-1 once it equals ``expected``'s (SHA-1 and SHA-256); VerifyFailed after ``attempts``."""
    want = _thumbprints(expected)
    problem = ""
    for attempt in range(attempts):
        if attempt:
            sleep(pause)  # a reloaded server may take a moment to swap its certificate
        try:
            served = _thumbprints(fetch(target))
        except VerifyFailed as exc:
            problem = exc.message
            continue
        if served == want:
            return served[0]
        problem = f"{target.address} serves SHA-1 {served[0]}, expected {want[0]}"
    raise VerifyFailed(problem)


def deploy(watched: Watched, installer: Installer, result: InstallResult, material: Material, *,
           reload: Callable[[CertificateOptions], None] = run_reload,
           verify: Callable[[VerifyTarget, x509.Certificate], str] = verify_served) -> DeployOutcome:
    """Reload and verify after ``installer`` installed ``result``; roll back, reload and alert on failure."""
    options = watched.options
    served: str | None = None
    try:
        reload(options)
        if options.verify is not None:
            served = verify(options.verify, material.leaf)
    except (ReloadFailed, VerifyFailed) as exc:
        return _roll_back(watched, installer, result, exc, reload)
    if options.reload is not None or options.verify is not None:
        log.info("%s: version %s deployed%s", watched.key, result.version,
                 f"; {options.verify.address} serves SHA-1 {served}" if options.verify is not None else "")
    return DeployOutcome("Deployed", result.version, served_sha1=served)


def _roll_back(watched: Watched, installer: Installer, result: InstallResult, cause: CertlcError,
               reload: Callable[[CertificateOptions], None]) -> DeployOutcome:
    what = f"{watched.key}: version {result.version} failed after install ({cause.reason}: {cause.message})"
    if result.previous is None:
        log.error("ALERT %s; there is no previous version to put back, version %s stays installed",
                  what, result.version)
        return DeployOutcome("RollbackFailed", result.version, cause.message)
    try:
        installer.rollback(to=result.previous)
    except InstallFailed as exc:
        log.error("ALERT %s; rolling back to %s failed too: %s", what, result.previous, exc.message)
        return DeployOutcome("RollbackFailed", result.version, exc.message)
    again = ""
    try:
        reload(watched.options)
    except ReloadFailed as exc:
        again = f"; reloading after the rollback failed as well: {exc.message}"
    log.error("ALERT %s; rolled back to version %s%s; will try again later", what, result.previous, again)
    return DeployOutcome("RolledBack", result.version, cause.message + again)
