"""Pebble (Let's Encrypt's ACME test server) and pebble-challtestsrv on loopback.

``start_pebble(workdir)`` writes a throwaway TLS CA and ``localhost`` certificate for Pebble's
HTTPS listener (the Debian package ships none), a ``pebble-config.json`` with absolute paths,
and starts ``pebble`` with real validation (no ``PEBBLE_VA_ALWAYS_VALID``), no validation sleep
and no nonce rejection; it returns once the directory answers over TLS trusting that CA.
``start_challtestsrv(workdir)`` starts the mock DNS (every A query answers 127.0.0.1) that
Pebble's ``-dnsserver`` can point at, so http-01 reaches a responder on Pebble's ``http_port``.

Pebble keeps everything in memory and makes new issuing roots on every start: fetch them with
:meth:`Pebble.roots` (``/roots/<n>`` on the management port).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
from cryptography import x509

from certlc.errors import CertlcError
from certlc.localca.tls import localhost_tls
from certlc.stack import free_port, stop_process, wait_until

__all__ = ["ChallTestSrv", "Pebble", "PebbleNotFound", "start_challtestsrv", "start_pebble"]


class PebbleNotFound(CertlcError):
    """The pebble binaries are missing: ``apt-get install pebble``."""

    reason = "PebbleNotFound"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise PebbleNotFound(f"{name} is not installed (apt-get install pebble installs pebble and "
                             "pebble-challtestsrv)")
    return found


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: stop_process signals the group, and Ctrl-C in a terminal reaches only the caller.
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env}, cwd=log.parent, start_new_session=True)


@dataclass
class Pebble:
    """A running Pebble. ``ca_bundle`` is what clients trust for its TLS listener (the ACME
    directory and the management API); it is not the issuing root (see :meth:`roots`)."""

    workdir: Path
    directory_url: str
    management_url: str
    ca_bundle: Path
    http_port: int
    tls_port: int
    dns_server: str | None
    eab_keys: dict[str, str]
    alternate_roots: int
    log_path: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def roots(self) -> list[x509.Certificate]:
        """The issuing roots: the default chain's first, then each alternate chain's."""
        found = []
        for index in range(self.alternate_roots + 1):
            pem = httpx.get(f"{self.management_url}/roots/{index}", verify=_trust(self.ca_bundle), timeout=5)
            pem.raise_for_status()
            found.append(x509.load_pem_x509_certificate(pem.content))
        return found

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> Pebble:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class ChallTestSrv:
    """A running pebble-challtestsrv: mock DNS on ``dns_server`` and a management API."""

    dns_server: str  # "127.0.0.1:port", for pebble -dnsserver
    management_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def set_txt(self, host: str, value: str) -> None:
        httpx.post(f"{self.management_url}/set-txt", json={"host": host, "value": value}, timeout=5).raise_for_status()

    def clear_txt(self, host: str) -> None:
        httpx.post(f"{self.management_url}/clear-txt", json={"host": host}, timeout=5).raise_for_status()

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> ChallTestSrv:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _trust(ca_bundle: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_bundle))


def start_pebble(
    workdir: str | os.PathLike[str],
    *,
    dns_server: str | None = None,
    http_port: int = 5002,
    tls_port: int = 5001,
    port: int | None = None,
    management_port: int | None = None,
    eab_keys: dict[str, str] | None = None,
    alternate_roots: int = 0,
    validity_days: int | None = None,
    always_valid: bool = False,
    authz_reuse: int | None = 0,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> Pebble:
    """Start Pebble on loopback in ``workdir`` and wait until its directory answers.

    ``dns_server`` ("host:port", e.g. a challtestsrv's or BIND's) is where its validation
    authority resolves names; ``http_port``/``tls_port`` are the ports it dials for http-01 and
    tls-alpn-01 (it does not listen on them). ``eab_keys`` (kid -> base64url HMAC key) makes
    external account binding required. ``alternate_roots`` adds alternate chains to other
    roots. ``authz_reuse`` 0 (default) makes every order validate afresh.
    """
    binary = _binary("pebble")
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tls = localhost_tls(work / "tls", "pebble")
    ca_bundle, cert, key = tls.ca_pem, tls.cert_pem, tls.key_pem
    port, management_port = port or free_port(), management_port or free_port()
    config: dict[str, object] = {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(cert),
        "privateKey": str(key),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": bool(eab_keys),
    }
    if eab_keys:
        config["externalAccountMACKeys"] = dict(eab_keys)
    if validity_days is not None:
        config["certificateValidityPeriod"] = int(validity_days) * 86400
    config_path = work / "pebble-config.json"
    config_path.write_text(json.dumps({"pebble": config}, indent=2))
    variables = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                 "PEBBLE_ALTERNATE_ROOTS": str(alternate_roots)}
    if authz_reuse is not None:
        variables["PEBBLE_AUTHZREUSE"] = str(authz_reuse)
    if always_valid:
        variables["PEBBLE_VA_ALWAYS_VALID"] = "1"
    variables.update(env or {})
    cmd = [binary, "-config", str(config_path)]
    if dns_server:
        cmd += ["-dnsserver", dns_server]
    log = work / "pebble.log"
    proc = _spawn(cmd, log, variables)
    directory_url = f"https://127.0.0.1:{port}/dir"
    trust = _trust(ca_bundle)

    def ready() -> bool:
        return httpx.get(directory_url, verify=trust, timeout=2).status_code == 200

    wait_until(proc, ready, "pebble", log, timeout)
    return Pebble(work, directory_url, f"https://127.0.0.1:{management_port}", ca_bundle, http_port, tls_port,
                  dns_server, dict(eab_keys or {}), alternate_roots, log, proc)


def start_challtestsrv(workdir: str | os.PathLike[str], *, dns_port: int | None = None,
                       management_port: int | None = None, default_ipv4: str = "127.0.0.1",
                       timeout: float = 15) -> ChallTestSrv:
    """Start pebble-challtestsrv's mock DNS (A queries answer ``default_ipv4``) and management
    API on loopback; its own http-01/tls-alpn-01 responders stay off (certlc answers those)."""
    binary = _binary("pebble-challtestsrv")
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    dns_port, management_port = dns_port or free_port(), management_port or free_port()
    log = work / "challtestsrv.log"
    proc = _spawn([binary, "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                   "-management", f"127.0.0.1:{management_port}", "-defaultIPv4", default_ipv4,
                   "-defaultIPv6", ""], log, {})
    management_url = f"http://127.0.0.1:{management_port}"

    def ready() -> bool:
        # Any HTTP answer means the management listener (started after DNS) is up.
        return httpx.post(f"{management_url}/clear-txt", json={"host": "ready.test."}, timeout=2).status_code < 500

    wait_until(proc, ready, "pebble-challtestsrv", log, timeout)
    return ChallTestSrv(f"127.0.0.1:{dns_port}", management_url, log, proc)
