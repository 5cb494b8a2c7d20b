"""ACME challenge solvers: make a CA's validation of a name succeed, then undo it.

A solver publishes what the ACME CA will look for (``present``) and removes it afterwards
(``cleanup``), for all the challenges of one order at once so that a DNS solver waits for
propagation once, not once per name. The connector (:mod:`certlc.ca.acme`) calls ``cleanup``
whatever happened, also after a failed or partial ``present``, so ``cleanup`` must tolerate
challenges that were never presented and must not raise. ``check`` is the preflight: the
solver's prerequisites in plain words.

Solvers here:

* :class:`WebrootSolver` (http-01): ``<webroot>/.well-known/acme-challenge/<token>`` files for a
  web server that already serves the names. The web server usually runs as another user (nginx
  as www-data) while certlc runs with umask 0077, so the directories certlc creates are set to
  0755 and the answers to 0644 explicitly.
* :class:`HttpResponderSolver` (http-01): a built-in responder on ``host:port``. One server per
  address is shared, reference-counted, by every order in the process (a sweep runs several at
  once from threads) and serves only the tokens of orders in progress.
* :class:`Rfc2136Solver` (dns-01): TSIG-signed dynamic updates (RFC 2136) to an authoritative
  server (BIND, Knot, PowerDNS, Windows DNS with TSIG, ...).
* :class:`AzureDnsSolver` (dns-01): the TXT record set in an Azure DNS zone.

Secrets (the TSIG key) live in private attributes and never appear in reprs, logs or errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

from certlc.errors import ConfigError, TerminalError, TransientError, first_line

__all__ = [
    "TSIG_ALGORITHMS",
    "AzureDnsSolver",
    "Challenge",
    "ChallengeSolver",
    "HttpResponderSolver",
    "Rfc2136Solver",
    "WebrootSolver",
    "tsig_algorithm",
    "txt_update",
]

log = logging.getLogger(__name__)

HTTP01_PATH = ".well-known/acme-challenge"
DNS01_LABEL = "_acme-challenge"
TXT_TTL = 60  # short: the record lives for one validation
# The TSIG algorithms BIND's tsig-keygen makes, by the name a key file (``algorithm hmac-md5;``)
# or rfc2136_tsig_algorithm gives, as dnspython's constants: dnspython signs only under the names
# it knows, and hmac-md5 is on the wire hmac-md5.sig-alg.reg.int. (RFC 8945 §6), not hmac-md5.
TSIG_ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-md5": dns.tsig.HMAC_MD5,
}
_TSIG_ALIASES = {"hmac-md5.sig-alg.reg.int": "hmac-md5"}  # the wire name, as some configurations spell it
WEB_DIR_MODE = 0o755  # directories certlc creates under a webroot: the web server must traverse them
WEB_FILE_MODE = 0o644  # the answers: the web server must read them
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")  # base64url, as RFC 8555 §8.3 requires


def tsig_algorithm(name: str | dns.name.Name) -> dns.name.Name | None:
    """dnspython's constant for a TSIG algorithm named as BIND or the wire spells it (any case,
    with or without the trailing dot); None when it is not one of :data:`TSIG_ALGORITHMS`."""
    text = (name.to_text() if isinstance(name, dns.name.Name) else str(name)).strip().lower().rstrip(".")
    return TSIG_ALGORITHMS.get(_TSIG_ALIASES.get(text, text))


@dataclass(frozen=True)
class Challenge:
    """One challenge to answer: what a solver publishes for one identifier.

    ``identifier`` is the authorization's name (for a wildcard, the base name without ``*.``);
    ``token`` and ``key_authorization`` are http-01's file name and content; ``validation`` is
    dns-01's TXT value (the base64url SHA-256 of the key authorization).
    """

    typ: str
    identifier: str
    token: str
    key_authorization: str
    validation: str

    @property
    def dns_name(self) -> str:
        """The dns-01 record name, ``_acme-challenge.<identifier>.`` (absolute)."""
        return f"{DNS01_LABEL}.{self.identifier.rstrip('.')}."


@runtime_checkable
class ChallengeSolver(Protocol):
    """Publishes the answers to one order's challenges and removes them again.

    ``present`` may raise (:class:`TransientError` when trying again may help,
    :class:`TerminalError` when configuration must change). ``cleanup`` is called afterwards in
    every case, with the same challenges, and never raises: it logs what it could not undo.
    """

    challenge_type: str

    def present(self, challenges: Sequence[Challenge]) -> None: ...

    def cleanup(self, challenges: Sequence[Challenge]) -> None: ...

    def check(self) -> list[str]:
        """The solver's prerequisites, as plain-word problems (empty: ready)."""
        ...


# --- http-01: webroot --------------------------------------------------------------------------
def _closed_to_web_server(path: Path) -> str | None:
    """Why a web server running as another user may not pass through directory ``path`` (None: it can).

    Serving ``<dir>/<token>`` needs search (x) permission on each directory. Others' x is what
    works for any web server user. A directory open to its group only counts as open when that
    group is not certlc's own, i.e. someone gave it to the web server on purpose (chgrp www-data).
    """
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IXOTH:
        return None
    if mode & stat.S_IXGRP and info.st_gid != os.getegid():
        return None
    return f"{str(path)!r} (mode {mode:04o})"


class WebrootSolver:
    """Writes each token's key authorization under ``<webroot>/.well-known/acme-challenge/``.

    Directories it creates are made 0755 and the answers 0644 whatever the umask (certlc runs
    with 0077): the web server reads them as another user. Directories that already exist keep
    their mode: an administrator who made one stricter may have given the web server's group
    access, and certlc does not loosen what it did not create. :meth:`check` (``certlc ca check``)
    and a warning at each order report one that others cannot traverse.
    """

    challenge_type = "http-01"

    def __init__(self, webroot: Path) -> None:
        self.webroot = Path(webroot)

    def __repr__(self) -> str:
        return f"WebrootSolver(webroot={str(self.webroot)!r})"

    @property
    def directory(self) -> Path:
        return self.webroot / HTTP01_PATH

    def _path(self, challenge: Challenge) -> Path:
        # The token names a file: a CA-supplied "../x" must not escape the webroot.
        if not _TOKEN.match(challenge.token):
            raise TerminalError(f"the ACME CA sent a challenge token that is not base64url: {challenge.token[:40]!r}",
                                reason="CaResponseInvalid")
        return self.directory / challenge.token

    def _make_directories(self) -> None:
        """Create what is missing of ``<webroot>/.well-known/acme-challenge``, each 0755."""
        missing: list[Path] = []
        path = self.directory
        while not path.exists() and path.parent != path:
            missing.append(path)
            path = path.parent
        for path in reversed(missing):
            try:
                path.mkdir()  # mode 0777 & ~umask: 0700 under certlc's umask, hence the chmod
            except FileExistsError:
                continue  # another order created it a moment ago and sets its mode
            path.chmod(WEB_DIR_MODE)

    def _closed(self) -> list[str]:
        """The directories on the web server's way to the answers that other users cannot traverse."""
        found = []
        for path in (self.webroot, self.webroot / ".well-known", self.directory):
            with contextlib.suppress(OSError):
                closed = _closed_to_web_server(path)
                if closed:
                    found.append(closed)
        return found

    def _closed_text(self, closed: list[str]) -> str:
        return (f"webroot {str(self.webroot)!r}: other users cannot traverse {', '.join(closed)}, so a web server "
                "running as another user (nginx as www-data) answers 404 for the http-01 token and the CA's "
                f"validation fails; make {'them' if len(closed) > 1 else 'it'} traversable (chmod o+rx, as certlc "
                "creates them: 0755) or give the web server's group access (chgrp www-data; chmod g+rx)")

    def present(self, challenges: Sequence[Challenge]) -> None:
        try:
            self._make_directories()
            for challenge in challenges:
                path = self._path(challenge)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(challenge.key_authorization)
                tmp.chmod(WEB_FILE_MODE)  # world-readable on purpose: the web server, not certlc, reads it
                os.replace(tmp, path)  # the web server never serves half a file
        except OSError as exc:
            raise TerminalError(f"cannot write the http-01 answer under webroot {str(self.webroot)!r}: "
                                f"{exc.strerror or first_line(exc)}", reason="ChallengeSetupFailed") from None
        closed = self._closed()
        if closed:  # the web server may still reach it (same user): say so, and let the CA try
            log.warning("%s", self._closed_text(closed))

    def cleanup(self, challenges: Sequence[Challenge]) -> None:
        for challenge in challenges:
            with contextlib.suppress(TerminalError):
                path = self._path(challenge)
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("could not remove the http-01 answer %s: %s", path, exc.strerror or exc)

    def check(self) -> list[str]:
        if not self.webroot.is_dir():
            return [f"webroot {str(self.webroot)!r} is not a directory"]
        try:
            self._make_directories()
            probe = self.directory / f".certlc-check-{os.getpid()}-{threading.get_ident()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            return [f"webroot {str(self.webroot)!r}: cannot write {str(self.directory)!r} "
                    f"({exc.strerror or first_line(exc)})"]
        closed = self._closed()
        return [self._closed_text(closed)] if closed else []


# --- http-01: built-in responder -------------------------------------------------------------
class _Responder:
    """One HTTP server on one address, serving the tokens of every order in progress."""

    def __init__(self, host: str, port: int) -> None:
        self.tokens: dict[str, str] = {}
        self.users = 0
        tokens = self.tokens

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                prefix = f"/{HTTP01_PATH}/"
                token = self.path[len(prefix):] if self.path.startswith(prefix) else ""
                answer = tokens.get(token) if token else None
                body = (answer or "not found").encode()
                self.send_response(200 if answer is not None else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http-01 responder: " + format, *args)

        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name=f"acme-http01-{host}:{port}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


_responders: dict[tuple[str, int], _Responder] = {}
_responders_lock = threading.Lock()


class HttpResponderSolver:
    """http-01 answered by certlc itself on ``host:port`` (the port the CA's port 80 reaches).

    The server starts with the first order in progress and stops after the last one's cleanup.
    """

    challenge_type = "http-01"

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        # Orders this solver presented and has not cleaned up yet, by their tokens.
        self._held: set[tuple[str, ...]] = set()

    def __repr__(self) -> str:
        return f"HttpResponderSolver(listen={self.host}:{self.port})"

    @property
    def _key(self) -> tuple[str, int]:
        return (self.host, self.port)

    def present(self, challenges: Sequence[Challenge]) -> None:
        tokens = tuple(c.token for c in challenges)
        with _responders_lock:
            responder = _responders.get(self._key)
            if responder is None:
                try:
                    responder = _Responder(self.host, self.port)
                except OSError as exc:
                    raise TerminalError(f"the http-01 responder cannot listen on {self.host}:{self.port}: "
                                        f"{exc.strerror or first_line(exc)}", reason="ChallengeSetupFailed") from None
                _responders[self._key] = responder
            responder.users += 1
            responder.tokens.update((c.token, c.key_authorization) for c in challenges)
            self._held.add(tokens)

    def cleanup(self, challenges: Sequence[Challenge]) -> None:
        tokens = tuple(c.token for c in challenges)
        with _responders_lock:
            if tokens not in self._held:
                return  # present failed before it took a share of the server
            self._held.discard(tokens)
            responder = _responders[self._key]
            for token in tokens:
                responder.tokens.pop(token, None)
            responder.users -= 1
            if responder.users == 0:
                del _responders[self._key]
                responder.stop()

    def serving(self) -> bool:
        """Whether the shared server for this address is running (for tests and check)."""
        with _responders_lock:
            return self._key in _responders

    def check(self) -> list[str]:
        if self.serving():
            return []  # an order in progress holds the address: it is usable
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self.port))
        except OSError as exc:
            return [f"http_listen {self.host}:{self.port} cannot be bound: {exc.strerror or first_line(exc)}"]
        return []


# --- dns-01: RFC 2136 --------------------------------------------------------------------------
def txt_update(zone: str, name: str, value: str, *, key: dns.tsig.Key, delete: bool = False,
               ttl: int = TXT_TTL) -> dns.update.UpdateMessage:
    """The signed UPDATE adding (or deleting) exactly one TXT value at ``name`` in ``zone``.

    Delete removes only this value, so a second order's record at the same name (``example.com``
    and ``*.example.com`` share one) survives.
    """
    origin = dns.name.from_text(zone)
    update = dns.update.UpdateMessage(origin, keyring=key, keyname=key.name, keyalgorithm=key.algorithm)
    relative = dns.name.from_text(name).relativize(origin)
    if delete:
        update.delete(relative, dns.rdatatype.TXT, f'"{value}"')
    else:
        update.add(relative, ttl, dns.rdatatype.TXT, f'"{value}"')
    return update


class Rfc2136Solver:
    """dns-01 through TSIG-signed dynamic updates to ``server`` (an authoritative primary).

    The zone is the configured one or the one whose SOA the server reports for the record's name.
    After each update the record is read back from that server; ``propagation_seconds`` then
    waits for secondaries (default 0: the primary the CA asks is the one updated).
    """

    challenge_type = "dns-01"

    def __init__(self, server: str, port: int, key: dns.tsig.Key, *, zone: str | None = None,
                 propagation_seconds: float = 0, timeout: float = 10,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.server, self.port = server, port
        # dnspython signs only under its own algorithm names (hmac-md5 is hmac-md5.sig-alg.reg.int.).
        algorithm = tsig_algorithm(key.algorithm)
        if algorithm is None:
            raise ConfigError(f"TSIG algorithm {key.algorithm.to_text()!r} is not one of "
                              f"{', '.join(TSIG_ALGORITHMS)}", reason="CaProfileInvalid")
        self._key = dns.tsig.Key(key.name, key.secret, algorithm)
        self.zone = zone.rstrip(".") + "." if zone else None
        self.propagation_seconds = propagation_seconds
        self.timeout = timeout
        self._sleep = sleep

    def __repr__(self) -> str:  # never the key: dnspython's Key repr prints the secret
        return f"Rfc2136Solver(server={self.server}:{self.port}, key_name={self.key_name!r}, zone={self.zone!r})"

    @property
    def key_name(self) -> str:
        return self._key.name.to_text()

    @property
    def _where(self) -> str:
        return f"DNS server {self.server}:{self.port}"

    def _exchange(self, message: dns.message.Message) -> dns.message.Message:
        try:
            return dns.query.tcp(message, self.server, port=self.port, timeout=self.timeout)
        except dns.tsig.PeerBadKey:
            raise TerminalError(f"{self._where} does not know TSIG key {self.key_name!r} (rfc2136_tsig_key_name)",
                                reason="DnsAuthFailed") from None
        except (dns.tsig.PeerBadSignature, dns.tsig.BadSignature):
            raise TerminalError(f"{self._where} refused the signature of TSIG key {self.key_name!r}: the secret or "
                                "algorithm (rfc2136_tsig_secret, rfc2136_tsig_algorithm) is not the server's",
                                reason="DnsAuthFailed") from None
        except (dns.tsig.PeerBadTime, dns.tsig.PeerBadTruncation) as exc:
            raise TerminalError(f"{self._where} refused the TSIG signature ({type(exc).__name__}); check the clocks",
                                reason="DnsAuthFailed") from None
        except dns.exception.Timeout:
            raise TransientError(f"{self._where} did not answer in {self.timeout:g} s",
                                 reason="DnsUnavailable") from None
        except (OSError, dns.exception.DNSException) as exc:
            raise TransientError(f"{self._where} cannot be reached: {first_line(exc)}",
                                 reason="DnsUnavailable") from None

    def zone_for(self, name: str) -> str:
        """The zone holding ``name``: configured, or from the server's SOA answer or authority."""
        if self.zone:
            return self.zone
        reply = self._exchange(dns.message.make_query(name, dns.rdatatype.SOA))
        rcode = reply.rcode()
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            for section in (reply.answer, reply.authority):
                for rrset in section:
                    if rrset.rdtype == dns.rdatatype.SOA:
                        return rrset.name.to_text()
        raise TerminalError(f"{self._where} is not authoritative for {name} (answered {dns.rcode.to_text(rcode)} "
                            "with no SOA); set rfc2136_zone or point rfc2136_server at the zone's primary",
                            reason="DnsZoneUnknown")

    def _update(self, challenge: Challenge, *, delete: bool) -> None:
        zone = self.zone_for(challenge.dns_name)
        reply = self._exchange(txt_update(zone, challenge.dns_name, challenge.validation, key=self._key,
                                          delete=delete))
        rcode = reply.rcode()
        if rcode != dns.rcode.NOERROR:
            hint = " (is the key allowed to update the zone? allow-update / update-policy)" \
                if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH) else ""
            raise TerminalError(f"{self._where} refused the update of {challenge.dns_name} in zone {zone}: "
                                f"{dns.rcode.to_text(rcode)}{hint}", reason="DnsUpdateRefused")

    def visible(self, challenge: Challenge) -> bool:
        reply = self._exchange(dns.message.make_query(challenge.dns_name, dns.rdatatype.TXT))
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                for rdata in rrset:
                    if b"".join(rdata.strings).decode() == challenge.validation:
                        return True
        return False

    def present(self, challenges: Sequence[Challenge]) -> None:
        for challenge in challenges:
            self._update(challenge, delete=False)
        # Read back from the server the update went to, so a silently dropped update fails here
        # with a clear message instead of at the CA as a validation failure (which counts
        # against public CAs' failed-validation limits).
        deadline = time.monotonic() + self.timeout
        for challenge in challenges:
            while not self.visible(challenge):
                if time.monotonic() >= deadline:
                    raise TransientError(f"{self._where} accepted the TXT record {challenge.dns_name} but does not "
                                         f"serve it after {self.timeout:g} s", reason="DnsNotPropagated")
                self._sleep(0.2)
        if self.propagation_seconds > 0:
            self._sleep(self.propagation_seconds)

    def cleanup(self, challenges: Sequence[Challenge]) -> None:
        for challenge in challenges:
            try:
                self._update(challenge, delete=True)
            except (TerminalError, TransientError) as exc:
                log.warning("could not remove the dns-01 record %s: %s", challenge.dns_name, exc)

    def check(self) -> list[str]:
        if not self.zone:
            # Without a zone the names come with each order; reaching the server signed is what
            # can be checked now.
            probe = dns.message.make_query(".", dns.rdatatype.SOA)
            probe.use_tsig(self._key, keyname=self._key.name, algorithm=self._key.algorithm)
            try:
                self._exchange(probe)
            except (TerminalError, TransientError) as exc:
                return [str(exc)]
            return []
        try:
            reply = self._exchange(dns.message.make_query(self.zone, dns.rdatatype.SOA))
            if reply.rcode() != dns.rcode.NOERROR or not reply.get_rrset(
                    reply.answer, dns.name.from_text(self.zone), dns.rdataclass.IN, dns.rdatatype.SOA):
                return [f"{self._where} does not answer the SOA of zone {self.zone} "
                        f"({dns.rcode.to_text(reply.rcode())}); is it the zone's primary?"]
            # A signed UPDATE whose only content is the prerequisite "the zone's SOA exists":
            # the server checks the key and its update permission, and changes nothing.
            noop = dns.update.UpdateMessage(self.zone, keyring=self._key, keyname=self._key.name,
                                            keyalgorithm=self._key.algorithm)
            noop.present(dns.name.from_text(self.zone), dns.rdatatype.SOA)
            rcode = self._exchange(noop).rcode()
            if rcode != dns.rcode.NOERROR:
                return [f"{self._where} refused a signed test update of zone {self.zone} with key "
                        f"{self.key_name!r}: {dns.rcode.to_text(rcode)} (allow-update / update-policy)"]
        except (TerminalError, TransientError) as exc:
            return [str(exc)]
        return []


# --- dns-01: Azure DNS -------------------------------------------------------------------------
_azure_lock = threading.Lock()  # read-modify-write of one record set; ETags guard other processes


class AzureDnsSolver:
    """dns-01 in an Azure DNS zone: adds our value to the TXT record set, removes only it after.

    ``client`` is an ``azure.mgmt.dns.DnsManagementClient`` (any object with its
    ``record_sets`` and ``zones`` operations). Azure DNS serves a change from all its name
    servers within about a minute; ``propagation_seconds`` (default 30) waits before the CA is
    asked to look.
    """

    challenge_type = "dns-01"

    def __init__(self, client: Any, resource_group: str, zone: str, *, propagation_seconds: float = 30,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self.resource_group = resource_group
        self.zone = zone.rstrip(".")
        self.propagation_seconds = propagation_seconds
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"AzureDnsSolver(resource_group={self.resource_group!r}, zone={self.zone!r})"

    def relative_name(self, challenge: Challenge) -> str:
        fqdn = challenge.dns_name.rstrip(".").lower()
        zone = self.zone.lower()
        if fqdn == zone:
            return "@"
        if not fqdn.endswith("." + zone):
            raise TerminalError(f"{challenge.identifier} is not in Azure DNS zone {self.zone} (azure_zone)",
                                reason="DnsZoneUnknown")
        return fqdn[: -len(zone) - 1]

    def _error(self, what: str, exc: Exception) -> TerminalError | TransientError:
        """An Azure SDK failure as certlc's error (one place for the whole solver)."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

        if isinstance(exc, ClientAuthenticationError):  # also "no credential available"
            return TerminalError(f"Azure DNS: no usable credential while {what}: {first_line(exc)}",
                                 reason="DnsAuthFailed")
        if not isinstance(exc, HttpResponseError):  # no connection, timeout
            return TransientError(f"Azure DNS cannot be reached while {what}: {first_line(exc)}",
                                  reason="DnsUnavailable")
        status = exc.status_code or 0
        if status in (401, 403):
            return TerminalError(f"Azure DNS refused {what} (HTTP {status}): the identity needs the DNS Zone "
                                 "Contributor role on the zone", reason="DnsAuthFailed")
        if status == 404:
            return TerminalError(f"Azure DNS zone {self.zone} in resource group {self.resource_group} was not found "
                                 f"while {what} (azure_zone, azure_resource_group, azure_subscription_id)",
                                 reason="DnsZoneUnknown")
        if status >= 500 or status in (408, 429):
            return TransientError(f"Azure DNS answered HTTP {status} while {what}", reason="DnsUnavailable")
        return TerminalError(f"Azure DNS refused {what} (HTTP {status}): {first_line(exc)}",
                             reason="DnsUpdateRefused")

    def _current(self, relative: str) -> tuple[list[str], str | None]:
        """The TXT values at ``relative`` and the record set's ETag (None: no record set)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            record_set = self._client.record_sets.get(self.resource_group, self.zone, relative, "TXT")
        except ResourceNotFoundError:
            return [], None
        values = ["".join(txt.value or []) for txt in (record_set.txt_records or [])]
        return values, record_set.etag

    def _write(self, relative: str, values: list[str], etag: str | None) -> None:
        from azure.mgmt.dns.models import RecordSet, TxtRecord

        record_set = RecordSet(ttl=TXT_TTL, txt_records=[TxtRecord(value=[v]) for v in values])
        if etag is None:  # create only if nobody created it meanwhile
            self._client.record_sets.create_or_update(self.resource_group, self.zone, relative, "TXT", record_set,
                                                      if_none_match="*")
        else:
            self._client.record_sets.create_or_update(self.resource_group, self.zone, relative, "TXT", record_set,
                                                      if_match=etag)

    def _change(self, challenge: Challenge, *, add: bool) -> None:
        from azure.core.exceptions import AzureError, HttpResponseError

        relative = self.relative_name(challenge)
        what = f"{'adding' if add else 'removing'} TXT {relative} in zone {self.zone}"
        with _azure_lock:
            for _attempt in range(5):
                try:
                    values, etag = self._current(relative)
                    if add:
                        if challenge.validation not in values:
                            self._write(relative, [*values, challenge.validation], etag)
                    elif challenge.validation in values:
                        rest = [v for v in values if v != challenge.validation]
                        if rest:
                            self._write(relative, rest, etag)
                        else:
                            self._client.record_sets.delete(self.resource_group, self.zone, relative, "TXT",
                                                            if_match=etag)
                    return
                except HttpResponseError as exc:
                    if exc.status_code != 412:
                        raise self._error(what, exc) from None
                    # Precondition failed: another process changed the record set between our
                    # read and write. Read it again.
                except AzureError as exc:
                    raise self._error(what, exc) from None
        raise TransientError(f"Azure DNS: the record set kept changing under certlc while {what}",
                             reason="DnsUnavailable")

    def present(self, challenges: Sequence[Challenge]) -> None:
        for challenge in challenges:
            self._change(challenge, add=True)
        if self.propagation_seconds > 0:
            self._sleep(self.propagation_seconds)

    def cleanup(self, challenges: Sequence[Challenge]) -> None:
        for challenge in challenges:
            try:
                self._change(challenge, add=False)
            except (TerminalError, TransientError) as exc:
                log.warning("could not remove the dns-01 record for %s from Azure DNS: %s", challenge.identifier, exc)

    def check(self) -> list[str]:
        from azure.core.exceptions import AzureError

        try:
            self._client.zones.get(self.resource_group, self.zone)
        except AzureError as exc:
            return [str(self._error(f"reading zone {self.zone}", exc))]
        return []
