"""BIND ``named`` on loopback with one zone that a TSIG key may update (RFC 2136).

``start_named(workdir)`` writes a key made with ``tsig-keygen``, a ``named.conf`` (no recursion,
no rndc, IPv4 loopback only, every path inside ``workdir``) and a zone whose apex and wildcard
answer A 127.0.0.1, starts ``named -f`` and returns once the zone's SOA answers. It is the dns-01
half of a local ACME setup: point Pebble's ``-dnsserver`` (or step-ca's resolver) at it and give
certlc's ``rfc2136`` solver its address and key.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from certlc.errors import CertlcError
from certlc.stack import free_port, stop_process, wait_until

__all__ = ["BindNotFound", "Named", "start_named"]


class BindNotFound(CertlcError):
    """BIND is missing: ``apt-get install bind9 bind9-utils``."""

    reason = "BindNotFound"


@dataclass
class Named:
    """A running ``named``: ``server`` is "127.0.0.1:port" (rfc2136_server, pebble -dnsserver)."""

    workdir: Path
    host: str
    port: int
    zone: str  # absolute, e.g. "acme.test."
    key_name: str
    key_algorithm: str
    key_file: Path  # tsig-keygen's output (a BIND key clause), mode 0600
    log_path: Path
    _secret: str = field(repr=False)
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def secret(self) -> str:
        """The TSIG secret (base64), for configurations; kept out of the repr."""
        return self._secret

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> Named:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _key(name: str, algorithm: str) -> tuple[str, str]:
    """(key clause, secret): from tsig-keygen when installed, else the same clause made here."""
    keygen = shutil.which("tsig-keygen")
    if keygen:
        clause = subprocess.run([keygen, "-a", algorithm, name], capture_output=True, text=True, check=True,
                                timeout=30).stdout
        secret = clause.split('secret "', 1)[1].split('"', 1)[0]
        return clause, secret
    secret = base64.b64encode(os.urandom(32)).decode()
    return f'key "{name}" {{\n\talgorithm {algorithm};\n\tsecret "{secret}";\n}};\n', secret


def start_named(workdir: str | os.PathLike[str], *, zone: str = "acme.test", port: int | None = None,
                key_name: str = "certlc-acme", algorithm: str = "hmac-sha256", timeout: float = 30) -> Named:
    """Start ``named`` serving ``zone`` on 127.0.0.1:``port``, updatable with a new TSIG key."""
    binary = shutil.which("named") or next((p for p in ("/usr/sbin/named", "/sbin/named") if Path(p).exists()), None)
    if not binary:
        raise BindNotFound("named is not installed (apt-get install bind9 bind9-utils)")
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    origin = zone.rstrip(".") + "."
    clause, secret = _key(key_name, algorithm)
    key_file = work / "tsig.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(clause)
    zone_file = work / f"{origin}zone"
    zone_file.write_text(
        f"$ORIGIN {origin}\n$TTL 60\n"
        f"@ IN SOA ns.{origin} hostmaster.{origin} 1 60 60 600 60\n"
        f"@ IN NS ns.{origin}\nns IN A 127.0.0.1\n@ IN A 127.0.0.1\n* IN A 127.0.0.1\n")
    conf = work / "named.conf"
    conf.write_text(f"""
include "{key_file}";
options {{
    directory "{work}";
    pid-file "{work}/named.pid";
    session-keyfile "{work}/session.key";
    managed-keys-directory "{work}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "{origin}" {{
    type primary;
    file "{zone_file}";
    allow-update {{ key "{key_name}"; }};
}};
""")
    log = work / "named.log"
    # -f: foreground (stop_process owns it); -u: as root named otherwise drops to the "bind" user,
    # who cannot write this directory's journal.
    user = ["-u", "root"] if os.geteuid() == 0 else []
    with log.open("ab") as out:
        proc = subprocess.Popen([binary, "-f", "-c", str(conf), "-4", "-n", "1", *user], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work, start_new_session=True)

    def ready() -> bool:
        try:
            reply = dns.query.tcp(dns.message.make_query(origin, dns.rdatatype.SOA), "127.0.0.1", port=port,
                                  timeout=1)
        except (OSError, dns.exception.DNSException):
            return False
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

    wait_until(proc, ready, "named", log, timeout)
    return Named(work, "127.0.0.1", port, origin, key_name, algorithm, key_file, log, secret, proc)
