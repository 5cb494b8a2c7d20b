"""Windows Integrated authentication (Negotiate, NTLM, Kerberos) for httpx, on pyspnego.

IIS's "Windows Authentication" speaks RFC 4559: a request without credentials gets a 401 with
``WWW-Authenticate: Negotiate`` and/or ``NTLM``; the client answers ``Authorization: <scheme>
<base64 token>``; the server may answer another 401 carrying its token (NTLM's challenge, a
SPNEGO continuation), and so on, until a final answer that may carry the server's last token
(Kerberos mutual authentication). The handshake is connection-oriented: IIS keeps the security
context with the TCP connection, so every leg must travel on the connection that got the
challenge, and once it succeeds the connection stays authenticated (IIS's default
``authPersistNonNTLM``/NTLM persistence): later requests on it get a 200 without a new handshake.

:class:`WindowsAuth` is that client flow as an :class:`httpx.Auth`:

* the first request goes out bare, so an authenticated keep-alive connection costs no extra legs;
* httpx reads each 401 body before the next leg, which hands the connection back to the pool
  idle and the next leg takes it again (one client, one connection per origin at a time;
  certlc sends no ``Connection: close``). If a leg nevertheless lands on another connection
  (the server closed it, or another thread took it), the handshake starts again once on the
  new connection instead of failing with a confusing 401;
* over HTTPS the tokens carry the ``tls-server-end-point`` channel binding (RFC 5929: a hash of
  the server's certificate, the one on the connection at hand), which IIS "Extended Protection"
  requires; without it IIS refuses even a right password;
* a server token on the final answer is checked (Kerberos mutual authentication): a server
  that cannot prove it holds the service key is refused;
* a 401 without a token after a leg is the server refusing the credentials: the response is
  returned as is and the caller reports it (the AD CS connector's ``CaAuthFailed``).

Local failures (no Kerberos ticket, KDC unreachable, unknown SPN, the gssapi package missing)
are certlc errors naming what to fix. The password is held by pyspnego's credential only and
appears in no repr, log or message.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Generator
from typing import Any, Literal

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certlc.errors import CertlcError, ConfigError, TerminalError, first_line

__all__ = ["PROTOCOLS", "WindowsAuth", "channel_bindings", "offered", "split_spn", "tls_server_end_point"]

log = logging.getLogger(__name__)

Protocol = Literal["negotiate", "ntlm", "kerberos"]
PROTOCOLS: tuple[str, ...] = ("negotiate", "ntlm", "kerberos")
_SCHEME_ITEM = re.compile(r"^\s*(Negotiate|NTLM)(?:\s+([A-Za-z0-9+/=]+))?\s*$", re.IGNORECASE)
# Kerberos failures by the minor status text MIT (and Heimdal) give; the major code alone
# ("Unspecified GSS failure") says nothing.
_NO_TICKET = ("no kerberos credentials", "no credentials cache", "credentials cache file", "ticket expired",
              "no credentials were supplied")
_NO_KDC = ("cannot contact any kdc", "cannot find kdc", "cannot resolve network address for kdc")
_NO_SPN = ("not found in kerberos database",)
_BAD_PASSWORD = ("preauthentication failed", "password incorrect", "decrypt integrity check failed",
                 "client not found", "clients credentials have been revoked", "password has expired")


def tls_server_end_point(certificate_der: bytes) -> bytes:
    """RFC 5929 ``tls-server-end-point`` binding data: the prefix and the certificate's hash.

    The hash is the certificate signature's own hash, except that MD5 and SHA-1 become SHA-256
    (RFC 5929 §4.1); signatures without a separate hash (Ed25519) use SHA-256, as Windows does."""
    cert = x509.load_der_x509_certificate(certificate_der)
    algorithm: hashes.HashAlgorithm
    try:
        found = cert.signature_hash_algorithm
    except Exception:  # an algorithm cryptography cannot name: hash as for Ed25519
        found = None
    algorithm = found if found is not None and not isinstance(found, hashes.MD5 | hashes.SHA1) else hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return b"tls-server-end-point:" + digest.finalize()


def channel_bindings(certificate_der: bytes) -> Any:
    """pyspnego's GSS channel bindings for a TLS server certificate (application data only,
    no addresses: what Windows' HTTP stack and IIS Extended Protection use)."""
    from spnego.channel_bindings import GssChannelBindings

    return GssChannelBindings(application_data=tls_server_end_point(certificate_der))


def _stream(response: httpx.Response) -> Any:
    """The connection a response came on (httpcore's network stream), None in-process."""
    return response.extensions.get("network_stream")


def _peer_certificate(response: httpx.Response) -> bytes | None:
    stream = _stream(response)
    if stream is None:
        return None
    ssl_object = stream.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    # Positional: httpcore's sync stream hands out the low-level _ssl._SSLSocket, which takes no keywords.
    der = ssl_object.getpeercert(True)
    return bytes(der) if der else None


def offered(response: httpx.Response) -> dict[str, bytes | None]:
    """Negotiate/NTLM schemes in the response's WWW-Authenticate headers, with their token (or None).

    Servers send one header per scheme (IIS) or several schemes comma-separated in one; a
    base64 token holds no comma, so splitting on commas is safe for the two schemes read here."""
    found: dict[str, bytes | None] = {}
    for header in response.headers.get_list("www-authenticate"):
        for item in header.split(","):
            match = _SCHEME_ITEM.match(item)
            if not match:
                continue
            scheme = "Negotiate" if match.group(1).lower() == "negotiate" else "NTLM"
            token: bytes | None = None
            if match.group(2):
                try:
                    token = base64.b64decode(match.group(2), validate=True)
                except (binascii.Error, ValueError):
                    token = None
            found.setdefault(scheme, token)
    return found


def split_spn(spn: str) -> tuple[str, str]:
    """``HTTP/host``, ``HTTP/host@REALM`` or ``HTTP@host`` as (service, host); ValueError otherwise.

    The realm is dropped: the Kerberos library finds it from the host (krb5.conf domain_realm)."""
    service, sep, rest = spn.strip().partition("/")
    if not sep:
        service, sep, rest = spn.strip().partition("@")
    host = rest.split("@", 1)[0]
    if not (sep and service and host) or any(c.isspace() for c in spn.strip()):
        raise ValueError(f"{spn!r} is not a service principal name like HTTP/ca01.contoso.com")
    return service, host


class WindowsAuth(httpx.Auth):
    """RFC 4559 HTTP authentication (Negotiate, NTLM, or Kerberos through Negotiate) on pyspnego.

    ``protocol``: ``negotiate`` (Kerberos, falling back to NTLM, as Windows clients do),
    ``ntlm``, or ``kerberos`` (Kerberos only, sent under the Negotiate scheme). ``username``
    is ``DOMAIN\\user`` or ``user@REALM``; with no ``password`` Kerberos uses the process's
    ticket cache (``KRB5CCNAME``) or client keytab (``KRB5_CLIENT_KTNAME``): the worker's own
    account, e.g. a gMSA or the machine account. ``spn`` overrides the service principal,
    ``HTTP@<URL host>`` by default (``HTTP/host`` is accepted too).
    """

    def __init__(self, protocol: Protocol, *, username: str | None = None, password: str | None = None,
                 spn: str | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if protocol == "ntlm" and not (username and password):
            raise ValueError("NTLM needs a user name and a password")
        self.protocol: Protocol = protocol
        self.username = username or None
        self._password = password or None
        if spn:
            split_spn(spn)  # refuse a malformed SPN now, not at the first request
        self.spn = spn or None

    def __repr__(self) -> str:  # the password stays out
        return f"WindowsAuth(protocol={self.protocol!r}, username={self.username!r}, spn={self.spn!r})"

    @property
    def uses_password(self) -> bool:
        return self._password is not None

    # --- the SPN and the context ---------------------------------------------------------------
    def service_principal(self, host: str) -> tuple[str, str]:
        """(service, host) of the SPN: from ``spn`` when set, else ``HTTP`` and the URL's host."""
        if self.spn:
            return split_spn(self.spn)
        return "HTTP", host

    def _context(self, protocol: Protocol, host: str, certificate: bytes | None) -> Any:
        try:
            import spnego
        except ImportError:
            raise ConfigError("Windows authentication needs the pyspnego package on the worker "
                              "(pip install pyspnego)", reason="CaProfileInvalid") from None
        service, hostname = self.service_principal(host)
        bindings = channel_bindings(certificate) if certificate else None
        try:
            # protocol "kerberos" is pyspnego's way to Kerberos without NTLM fallback: a raw
            # Kerberos GSS token, which SPNEGO acceptors (IIS's Negotiate provider) take as is.
            return spnego.client(self.username, self._password, hostname=hostname, service=service,
                                 channel_bindings=bindings, protocol=protocol)
        except ImportError:
            raise ConfigError("Kerberos needs the gssapi and krb5 Python packages on the worker (pip install "
                              "'certlc[kerberos]'; building them needs libkrb5-dev and a C compiler)",
                              reason="CaProfileInvalid") from None
        except Exception as exc:
            raise self._local_failure(exc, service, hostname) from None

    def _local_failure(self, exc: Exception, service: str, hostname: str) -> CertlcError:
        """A failure of this side of the handshake (before the server judged anything), in plain words."""
        text = first_line(exc)
        lowered = text.lower()
        who = self.username or "the worker's own account"
        spn = f"{service}/{hostname}"
        if any(s in lowered for s in _NO_SPN):
            return TerminalError(f"the Kerberos KDC does not know the service principal {spn}: register it on the "
                                 f"CA's web server account (setspn -S {spn} <account>) or set the CA profile's "
                                 f"options.spn to the name it is registered under ({text})",
                                 reason="KerberosSpnUnknown")
        if any(s in lowered for s in _NO_KDC):
            return TerminalError(f"no Kerberos KDC answers for {who}: check the realm's kdc entries in krb5.conf "
                                 f"(KRB5_CONFIG) and that the worker reaches a domain controller on port 88 ({text})",
                                 reason="KerberosKdcUnreachable")
        if self._password is not None and any(s in lowered for s in _BAD_PASSWORD):
            return TerminalError(f"the Kerberos KDC refused the password for {who} ({text}); check the CA "
                                 "profile's username (user@REALM) and password", reason="CaAuthFailed")
        if any(s in lowered for s in _NO_TICKET):
            return TerminalError(f"no Kerberos ticket for {who}: run kinit as the worker's account, or give it a "
                                 "keytab (KRB5_CLIENT_KTNAME, e.g. the machine account's or a gMSA's), or set the "
                                 f"CA profile's username and password_env ({text})", reason="KerberosNoCredentials")
        return TerminalError(f"Windows authentication ({self.protocol}) failed on the worker before the server "
                             f"could answer: {text}", reason="CaAuthFailed")

    def _step(self, context: Any, token: bytes | None, host: str) -> bytes | None:
        try:
            out = context.step(token)
        except Exception as exc:
            service, hostname = self.service_principal(host)
            raise self._local_failure(exc, service, hostname) from None
        return bytes(out) if out else None

    # --- the flow ------------------------------------------------------------------------------
    def _scheme(self, schemes: dict[str, bytes | None]) -> tuple[str, Protocol] | None:
        """The scheme to answer and the pyspnego protocol to run under it; None if none fits."""
        if self.protocol == "ntlm":
            if "NTLM" in schemes:
                return "NTLM", "ntlm"
            # SPNEGO acceptors (IIS's Negotiate provider) take a raw NTLM token too.
            return ("Negotiate", "ntlm") if "Negotiate" in schemes else None
        if "Negotiate" in schemes:
            return "Negotiate", self.protocol
        if self.protocol == "negotiate" and "NTLM" in schemes and self._password is not None:
            return "NTLM", "ntlm"  # an "NTLM only" IIS: Negotiate would have fallen back to it anyway
        return None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield request
        host = request.url.host
        for attempt in range(2):
            if response.status_code != 401:
                return
            chosen = self._scheme(offered(response))
            if chosen is None:
                return  # nothing we speak: the caller reports the 401 and what the server offers
            scheme, protocol = chosen
            context = self._context(protocol, host, _peer_certificate(response))
            token = self._step(context, None, host)
            connection = _stream(response)
            while True:
                request.headers["Authorization"] = f"{scheme} {base64.b64encode(token or b'').decode()}"
                response = yield request
                moved = connection is not None and _stream(response) is not connection
                server_token = offered(response).get(scheme)
                if response.status_code != 401:
                    if server_token and not context.complete:
                        self._mutual(context, server_token, host)
                    return
                if moved and attempt == 0:
                    # The leg went out on another connection, where the server holds no context:
                    # start over on this one (its 401 is a fresh challenge offer).
                    log.debug("Windows authentication leg moved to another connection; starting again")
                    request.headers.pop("Authorization", None)
                    break
                if server_token is None or context.complete:
                    return  # refused: the caller turns this 401 into CaAuthFailed
                token = self._step(context, server_token, host)
                if token is None:
                    return

    def _mutual(self, context: Any, token: bytes, host: str) -> None:
        """The server's last token (Kerberos AP-REP, SPNEGO accept-completed) must verify."""
        try:
            context.step(token)
        except Exception as exc:
            raise TerminalError(f"the server at {host} failed Kerberos mutual authentication: it could not prove "
                                f"it holds the key of the service principal ({first_line(exc)}); it may not be the "
                                "CA's web server", reason="MutualAuthFailed") from None
