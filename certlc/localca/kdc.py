"""A throwaway MIT Kerberos KDC on loopback, for testing Windows-style (Negotiate/Kerberos) HTTP auth.

``start_kdc(workdir)`` writes a ``krb5.conf`` and a ``kdc.conf`` (every path inside ``workdir``,
TCP and UDP on one 127.0.0.1 port, no DNS lookups, no reverse DNS), creates the realm's database
with ``kdb5_util``, and starts ``krb5kdc -n``; principals and keytabs come from ``kadmin.local``
(which works on the database directly: no kadmind, no admin ACLs). ``kinit`` fills a ticket cache
from a password, as a user would on a domain-joined worker.

Nothing here touches the machine's ``/etc/krb5.conf``: the caller points the Kerberos library at
:attr:`KDC.env` (``KRB5_CONFIG``, ``KRB5_KDC_PROFILE``); the client's ``KRB5CCNAME`` and the
server's ``KRB5_KTNAME`` are the caller's to set. Debian: ``apt-get install krb5-kdc
krb5-admin-server krb5-user``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from certlc.errors import CertlcError
from certlc.stack import free_port, stop_process, wait_until

__all__ = ["KDC", "KdcNotFound", "kdc_binaries", "start_kdc"]

_TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit")


class KdcNotFound(CertlcError):
    """MIT Kerberos is missing: ``apt-get install krb5-kdc krb5-admin-server krb5-user``."""

    reason = "KdcNotFound"


def kdc_binaries() -> dict[str, str] | None:
    """The paths of krb5kdc, kdb5_util, kadmin.local and kinit; None if any is missing."""
    found: dict[str, str] = {}
    for tool in _TOOLS:
        # /usr/sbin is not on a non-root PATH on Debian.
        path = shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}")
                                           if Path(p).exists()), None)
        if not path:
            return None
        found[tool] = path
    return found


@dataclass
class KDC:
    """A running ``krb5kdc`` for ``realm`` on 127.0.0.1:``port``."""

    workdir: Path
    realm: str
    port: int
    krb5_conf: Path
    kdc_conf: Path
    log_path: Path
    tools: dict[str, str] = field(repr=False)
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def env(self) -> dict[str, str]:
        """What the Kerberos library (client and acceptor) needs to find this realm."""
        return {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.kdc_conf)}

    def _kadmin(self, query: str) -> None:
        result = subprocess.run([self.tools["kadmin.local"], "-r", self.realm, "-q", query],
                                env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60)
        # kadmin.local exits 0 even when the query fails; its complaints go to stderr.
        if result.returncode != 0 or "error" in result.stderr.lower() or "failed" in result.stderr.lower():
            # The query may hold a password: name only the command verb.
            raise CertlcError(f"kadmin.local {query.split()[0]} failed: {result.stderr.strip()[:300]}",
                              reason="StackFailed")

    def add_user(self, name: str, password: str) -> str:
        """A user principal with a password; returns ``name@REALM``."""
        self._kadmin(f"addprinc -pw {password} {name}")
        return f"{name}@{self.realm}"

    def add_service(self, principal: str, keytab: str | os.PathLike[str]) -> Path:
        """A service principal (e.g. ``HTTP/localhost``) with a random key, exported to ``keytab``."""
        path = Path(keytab)
        self._kadmin(f"addprinc -randkey {principal}")
        self._kadmin(f"ktadd -k {path} {principal}")
        return path

    def kinit(self, principal: str, password: str, ccache: str | os.PathLike[str]) -> Path:
        """Fill ``ccache`` with a TGT for ``principal`` (kinit reads the password from stdin)."""
        path = Path(ccache)
        result = subprocess.run([self.tools["kinit"], "-c", f"FILE:{path}", principal], input=password + "\n",
                                env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise CertlcError(f"kinit {principal} failed: {result.stderr.strip()[:300]}", reason="StackFailed")
        return path

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> KDC:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_kdc(workdir: str | os.PathLike[str], *, realm: str = "CERTLC.TEST", port: int | None = None,
              hosts: tuple[str, ...] = ("localhost",), timeout: float = 30) -> KDC:
    """Create ``realm`` in ``workdir`` and start its KDC; ``hosts`` map to the realm (domain_realm)."""
    tools = kdc_binaries()
    if tools is None:
        raise KdcNotFound("MIT Kerberos KDC tools are not installed "
                          "(apt-get install krb5-kdc krb5-admin-server krb5-user)")
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    krb5_conf, kdc_conf, log = work / "krb5.conf", work / "kdc.conf", work / "krb5kdc.log"
    domain_realm = "".join(f"    {host} = {realm}\n" for host in hosts)
    # No DNS at all (dns_canonicalize_hostname, rdns): the SPN is HTTP/<the URL's host>, as
    # Windows clients build it; TCP first (udp_preference_limit) so one free TCP port is enough.
    krb5_conf.write_text(f"""[libdefaults]
    default_realm = {realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
    ignore_acceptor_hostname = false
    default_ccache_name = FILE:{work}/ccache-default

[realms]
    {realm} = {{
        kdc = 127.0.0.1:{port}
    }}

[domain_realm]
{domain_realm}
[logging]
    kdc = FILE:{log}
""")
    kdc_conf.write_text(f"""[kdcdefaults]
    kdc_listen = 127.0.0.1:{port}
    kdc_tcp_listen = 127.0.0.1:{port}

[realms]
    {realm} = {{
        database_name = {work}/principal
        key_stash_file = {work}/stash
        acl_file = {work}/kadm5.acl
        max_life = 1h
        max_renewable_life = 1h
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}

[logging]
    kdc = FILE:{log}
""")
    env = {**os.environ, "KRB5_CONFIG": str(krb5_conf), "KRB5_KDC_PROFILE": str(kdc_conf)}
    created = subprocess.run([tools["kdb5_util"], "-r", realm, "-P", secrets.token_urlsafe(24), "create", "-s"],
                             env=env, capture_output=True, text=True, timeout=120)
    if created.returncode != 0:
        raise CertlcError(f"kdb5_util create failed: {created.stderr.strip()[:300]}", reason="StackFailed")
    with log.open("ab") as out:
        # -n: foreground (stop_process owns it); -P: its pid file stays inside workdir.
        proc = subprocess.Popen([tools["krb5kdc"], "-n", "-r", realm, "-P", str(work / "krb5kdc.pid")], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work,
                                start_new_session=True)

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_until(proc, ready, "krb5kdc", log, timeout)
    return KDC(work, realm, port, krb5_conf, kdc_conf, log, tools, proc)
