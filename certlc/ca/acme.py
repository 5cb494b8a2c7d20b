"""ACME (RFC 8555) as a CA: Let's Encrypt, ZeroSSL, Google Trust Services, step-ca, Pebble.

Built on certbot's ``acme`` library (``ClientV2`` over ``ClientNetwork``); this module only
decides what to ask and classifies what comes back. ACME has no templates: the CSR's names are
the request (``uses_templates = False``; the template certlc resolved is ignored).

One renewal is one order: the Key Vault CSR's DNS names (and IP addresses) become the order's
identifiers, each pending authorization is answered with the profile's challenge through a
solver (:mod:`certlc.ca.acme_solvers`), whose records are removed again whatever happened, and
the order is finalized with the same CSR. An order the CA is still ``processing`` when
``timeout_seconds`` runs out comes back ``pending`` with the order URL as ``request_id``;
:meth:`AcmeConnector.retrieve` asks for it again.

The account: one per (directory, account key), registered once per process (a lock: a sweep
submits from several threads) with the profile's e-mail and external account binding, and
found again by its key after a restart. Without ``account_key`` the key is generated once and
kept under ``<state_dir>/acme/<profile>/account-key.pem`` (0600).

Error mapping (ACME problem types, RFC 8555 §6.7; one place, :meth:`AcmeConnector._classify`):

* ``rejectedIdentifier``, ``unsupportedIdentifier``, ``caa``, ``badCSR`` (also inside a
  ``compound`` problem or a challenge's error), and a CSR naming what ACME cannot validate
  (e-mail, UPN, URI SANs; a CN that is neither a DNS name nor an IP address among the IP
  SANs): ``denied`` with the CA's detail. A CSR with no DNS name or IP address in its SANs (a
  Key Vault policy with a subject CN and no SANs) is ``denied`` (``CsrNamesMissing``) before the
  CA is contacted: ACME CAs certify the names in the SANs.
* ``unauthorized`` after the account was accepted (new order, finalize, retrieve) and with no
  failed challenge: ``denied`` (``RequestRefused``) with the CA's detail, e.g. Pebble's "Order
  includes different number of DNSnames identifiers than CSR specifies"; it is a refusal of this
  request, not of the account (unless the CA's detail names the account).
* a failed validation (``unauthorized``, ``dns``, ``connection``, ``incorrectResponse``,
  ``tls``, ``unknownHost``, ``dnssec`` on a challenge, or one of the others on the order):
  :class:`TerminalError` ``ChallengeFailed`` naming the identifier. Not retried: public CAs
  rate-limit failed validations, so a retry loop would lock the account out.
* ``rateLimited``: :class:`TransientError` ``RateLimited`` with the CA's Retry-After.
* ``serverInternal``, ``badNonce`` (after the library's one retry), no connection, timeouts,
  HTTP 5xx/429/408: :class:`TransientError` ``CAUnavailable``.
* ``externalAccountRequired``, and anything the CA refuses while registering or finding the
  account (``unauthorized``, ``malformed`` EAB, ``badPublicKey``, ...): :class:`TerminalError`
  ``CaAuthFailed``.
* an untrusted TLS certificate: :class:`TerminalError` ``CaTlsUntrusted`` naming ``ca_bundle``.
* an endpoint that is not an ACME directory: :class:`TerminalError` ``CaResponseInvalid``.
* a solver that cannot publish (webroot not writable, DNS update refused): the solver's
  :class:`TerminalError` / :class:`TransientError`.

The account key, the EAB HMAC key and the TSIG secret never appear in reprs, logs, errors or
messages.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import email.utils
import ipaddress
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import josepy as jose
import requests
from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certlc.ca.acme_solvers import (
    TSIG_ALGORITHMS,
    AzureDnsSolver,
    Challenge,
    ChallengeSolver,
    HttpResponderSolver,
    Rfc2136Solver,
    WebrootSolver,
    tsig_algorithm,
)
from certlc.ca.base import Disposition, DispositionStatus, Health, SigningRequest, tls_verify_failure
from certlc.ca.http import check_options, http_endpoint, timeout_option, trust_context
from certlc.config import CAProfile, Settings
from certlc.errors import CertlcError, ConfigError, TerminalError, TransientError, first_line

__all__ = [
    "KIND",
    "AcmeConnector",
    "ExternalAccount",
    "account_key_path",
    "from_profile",
    "load_or_create_account_key",
    "select_chain",
    "split_pem",
]

log = logging.getLogger(__name__)

KIND = "acme"
DEFAULT_TIMEOUT = 120.0  # validation plus issuance; Let's Encrypt takes seconds
NETWORK_TIMEOUT = 30  # one HTTP exchange with the CA
RETRIEVE_WAIT = 10.0  # retrieve asks, waits briefly, and otherwise says pending (the sweep comes back)
AZURE_PROPAGATION = 30.0

# Problem types that refuse this request (its names or CSR), not the setup: the owner must act.
_DENIALS = {"rejectedIdentifier": "IdentifierRejected", "unsupportedIdentifier": "IdentifierUnsupported",
            "caa": "CaaForbidden", "badCSR": "CsrRejected"}
# Problem types a failed validation carries (``unauthorized`` only on a challenge: on an order it
# refuses the request, see _problem).
_VALIDATION = {"unauthorized", "dns", "connection", "incorrectResponse", "tls", "unknownHost", "dnssec"}
_TRANSIENT = {"serverInternal", "badNonce"}
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


# --- plain data ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExternalAccount:
    """External account binding: the key id and HMAC key the CA issued (never in reprs)."""

    kid: str
    hmac_key: str  # base64url, as the CA hands it out

    def __repr__(self) -> str:
        return f"ExternalAccount(kid={self.kid!r})"


class _Refusal(Exception):
    """Internal: the request is refused (a denied disposition), with reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class _Network(acme_client.ClientNetwork):
    """``ClientNetwork`` that keeps the last response's Retry-After: the library raises a
    ``rateLimited`` problem without its headers, and the caller should know when to come back."""

    retry_after: str | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.retry_after = response.headers.get("Retry-After")
        return response


class _Client(acme_client.ClientV2):
    """``ClientV2`` ordering the identifiers certlc derives from the CSR (:func:`_identifiers`).

    The library's ``new_order`` orders the subject CN as a DNS name even when it is an IP
    address (a CSR with ``CN=192.0.2.7`` and that address as an IP SAN, RFC 8738), which the CA
    then rejects. This is the library's ``new_order`` with certlc's identifiers.
    """

    def new_order(self, csr_pem: bytes, profile: str | None = None) -> messages.OrderResource:
        dns_names, ips = _identifiers(x509.load_pem_x509_csr(csr_pem))
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in dns_names]
        identifiers += [messages.Identifier(typ=messages.IDENTIFIER_IP, value=ip) for ip in ips]
        response = self._post(self.directory["newOrder"], messages.NewOrder(identifiers=identifiers,
                                                                            profile=profile or ""))
        body = messages.Order.from_json(response.json())
        authorizations = [self._authzr_from_response(self._post_as_get(url), uri=url)
                          for url in body.authorizations or ()]
        return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                      authorizations=authorizations, csr_pem=csr_pem)


# --- account key --------------------------------------------------------------------------------
def account_key_path(state_dir: Path, profile: str) -> Path:
    """Where a generated account key lives: ``<state_dir>/acme/<profile>/account-key.pem``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", profile) or "_"
    return state_dir / "acme" / safe / "account-key.pem"


def load_or_create_account_key(path: Path) -> bytes:
    """The PEM at ``path``; created first (EC P-256, mode 0600) if missing.

    Created atomically and never overwritten: the key is written to a temporary file and
    hard-linked into place, so concurrent first runs agree on one key and a crash leaves no half
    key (an account is bound to its key; losing it means a new account).
    """
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(prefix=".account-key.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race: use its key
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_bytes()


def _jwk(name: str, pem: bytes, where: str) -> tuple[jose.JWK, jose.JWASignature]:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        # Never the content: it is the account key.
        # cryptography says TypeError when the key needs a password, ValueError when it is no key.
        reason = "is encrypted (certlc needs an unencrypted key)" if isinstance(exc, TypeError) \
            else "is not a PEM private key"
        raise ConfigError(f"CA profile {name!r}: account key {where} {reason}", reason="CaProfileInvalid") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": jose.ES256, "secp384r1": jose.ES384}
        if key.curve.name not in algs:
            raise ConfigError(f"CA profile {name!r}: account key {where} is on curve {key.curve.name}; ACME takes "
                              "P-256 or P-384", reason="CaProfileInvalid")
        return jose.JWKEC(key=key), algs[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError(f"CA profile {name!r}: account key {where} is RSA {key.key_size}; use 2048 bits or more",
                              reason="CaProfileInvalid")
        return jose.JWKRSA(key=key), jose.RS256
    raise ConfigError(f"CA profile {name!r}: account key {where} is neither EC nor RSA", reason="CaProfileInvalid")


# --- chains -------------------------------------------------------------------------------------
def split_pem(text: str) -> list[str]:
    """The certificates of a PEM bundle, in order, each normalised to end with a newline."""
    return [m.decode().replace("\r\n", "\n") + "\n" for m in _PEM_CERT.findall(text.encode())]


def _issuer_cn(pem: str) -> str | None:
    cert = x509.load_pem_x509_certificate(pem.encode())
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def select_chain(fullchains: Sequence[str], preferred: str | None) -> str:
    """certbot's ``--preferred-chain``: the first chain whose topmost certificate's issuer CN is
    ``preferred`` (the chain that leads to that root); otherwise the CA's default (the first)."""
    if preferred:
        for chain in fullchains:
            certs = split_pem(chain)
            if certs and _issuer_cn(certs[-1]) == preferred:
                return chain
        log.info("no chain from the ACME CA leads to %r; using its default chain", preferred)
    return fullchains[0]


# --- the connector ------------------------------------------------------------------------------
class AcmeConnector:
    """An ACME directory behind the CA connector contract."""

    # ACME certifies names, not templates: the renewal layer does not demand a template.
    uses_templates = False
    # The CA writes the subject from the validated names (a CN among them, or none at all): merge
    # checks the names, not subject equality (certlc.verify).
    subject_from_names = True

    def __init__(
        self,
        profile: str,
        directory_url: str,
        account_key_pem: bytes,
        solver: ChallengeSolver,
        *,
        email: str | None = None,
        eab: ExternalAccount | None = None,
        ca_bundle: str | None = None,
        preferred_chain: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        client_factory: Callable[[], Any] | None = None,
        key_source: str = "account_key",
    ) -> None:
        self.profile = profile
        self.directory_url = directory_url
        self._key, self._alg = _jwk(profile, account_key_pem, key_source)
        self.solver = solver
        self.email = email
        self._eab = eab
        self.ca_bundle = ca_bundle
        self.preferred_chain = preferred_chain
        self.timeout = timeout
        self._client_factory = client_factory or self._new_client
        self._thumbprint = base64.urlsafe_b64encode(self._key.thumbprint()).decode().rstrip("=")

    def __repr__(self) -> str:  # keys stay out of reprs (tracebacks, debug logs)
        return (f"AcmeConnector(profile={self.profile!r}, directory={self.directory_url!r}, "
                f"solver={self.solver!r}, eab_kid={self._eab.kid if self._eab else None!r})")

    @property
    def _what(self) -> str:
        return f"the ACME CA at {self.directory_url}"

    # --- client and account -------------------------------------------------------------------
    def _new_client(self) -> acme_client.ClientV2:
        # One network and client per operation: ClientNetwork keeps nonces and the account per
        # instance, and a sweep submits from several threads.
        net = _Network(self._key, alg=self._alg, verify_ssl=self.ca_bundle or True, user_agent="certlc",
                       timeout=NETWORK_TIMEOUT)
        directory = acme_client.ClientV2.get_directory(self.directory_url, net)
        try:
            for resource in ("newNonce", "newAccount", "newOrder"):
                directory[resource]
        except KeyError:
            raise TerminalError(f"{self.directory_url} answered, but not with an ACME directory (no newAccount/"
                                "newOrder); check the CA profile's endpoint", reason="CaResponseInvalid") from None
        return _Client(directory, net)

    def _account(self, client: Any, *, fresh: bool = False) -> None:
        """Give ``client`` the account: registered once per process and key, then reused."""
        cache_key = (self.directory_url, self._thumbprint)
        with _accounts_lock:
            uri = None if fresh else _accounts.get(cache_key)
            if uri is None:
                uri = self._register(client)
                _accounts[cache_key] = uri
                log.info("ACME account for CA profile %s at %s: %s", self.profile, self.directory_url, uri)
        client.net.account = messages.RegistrationResource(body=messages.Registration(), uri=uri)

    def _register(self, client: Any) -> str:
        eab = None
        if self._eab is not None:
            eab = messages.ExternalAccountBinding.from_data(account_public_key=self._key.public_key(),
                                                            kid=self._eab.kid, hmac_key=self._eab.hmac_key,
                                                            directory=client.directory)
        registration = messages.NewRegistration.from_data(email=self.email, terms_of_service_agreed=True,
                                                          external_account_binding=eab)
        try:
            return str(client.new_account(registration).uri)
        except acme_errors.ConflictError as exc:  # the key already has an account: that is ours
            return str(exc.location)
        except messages.Error as exc:
            raise self._account_problem(exc, client) from None

    def _account_problem(self, exc: messages.Error, client: Any) -> CertlcError | _Refusal:
        """A problem answering the registration: the account is refused unless the CA is busy."""
        if exc.code in _TRANSIENT or exc.code in ("rateLimited", "externalAccountRequired"):
            return self._problem(exc, client)
        hint = " (check eab_kid and the EAB HMAC key)" if self._eab is not None else ""
        return TerminalError(f"{self._what} refused the ACME account{hint}: {_detail(exc)}", reason="CaAuthFailed",
                             ca_code=exc.code or exc.typ)

    # --- error mapping ------------------------------------------------------------------------
    def _classify(self, exc: BaseException, client: Any) -> CertlcError | _Refusal | None:
        """Any failure of an ACME exchange as certlc's error or a refusal; None: not ours."""
        if isinstance(exc, CertlcError | _Refusal):
            return exc
        if isinstance(exc, requests.exceptions.SSLError):
            untrusted = tls_verify_failure(exc)
            if untrusted:
                return TerminalError(f"the TLS certificate of {self._what} is not trusted ({untrusted}); set the CA "
                                     "profile's ca_bundle to the CA that issued it", reason="CaTlsUntrusted")
            return TransientError(f"TLS with {self._what} failed: {first_line(exc)}", reason="CAUnavailable")
        if isinstance(exc, requests.exceptions.Timeout):
            return TransientError(f"{self._what} did not answer in time", reason="CAUnavailable")
        if isinstance(exc, requests.exceptions.RequestException):
            return TransientError(f"{self._what} cannot be reached: {first_line(exc)}", reason="CAUnavailable")
        if isinstance(exc, acme_errors.ValidationError):
            return self._validation_failed(exc)
        if isinstance(exc, acme_errors.IssuanceError):
            return self._classify(exc.error, client)
        if isinstance(exc, messages.Error):
            return self._problem(exc, client)
        if isinstance(exc, acme_errors.ClientError):
            response = exc.args[0] if exc.args else None
            if isinstance(response, tuple):
                response = response[0]
            status = getattr(response, "status_code", None)
            if isinstance(status, int) and (status >= 500 or status in (408, 429)):
                return TransientError(f"{self._what} answered HTTP {status}", reason="CAUnavailable")
            shown = f"HTTP {status}" if status else first_line(exc)
            return TerminalError(f"{self._what} did not answer as an ACME server ({shown}); check the CA profile's "
                                 "endpoint", reason="CaResponseInvalid")
        if isinstance(exc, jose.DeserializationError | ValueError):
            return TerminalError(f"{self._what} sent an answer certlc cannot read: {first_line(exc)}",
                                 reason="CaResponseInvalid")
        return None

    def _problem(self, exc: messages.Error, client: Any) -> CertlcError | _Refusal:
        code = exc.code or ""
        if code == "compound" and exc.subproblems:
            denials = [p for p in exc.subproblems if p.code in _DENIALS]
            if denials:
                return _Refusal(_DENIALS[denials[0].code or ""],  # type: ignore[index]
                                "the ACME CA refused: " + "; ".join(_detail(p) for p in exc.subproblems))
            failed = [p for p in exc.subproblems if p.code in _VALIDATION]
            if failed:
                return TerminalError("the ACME CA could not validate " + "; ".join(_detail(p) for p in failed),
                                     reason="ChallengeFailed", ca_code=code)
        if code in _DENIALS:
            return _Refusal(_DENIALS[code], f"the ACME CA refused: {_detail(exc)}")
        if code == "rateLimited":
            retry_after = getattr(getattr(client, "net", None), "retry_after", None)
            seconds = _retry_after_seconds(retry_after)
            shown = f" (Retry-After: {retry_after})" if retry_after else ""
            return TransientError(f"{self._what} rate-limits this account: {_detail(exc)}{shown}",
                                  reason="RateLimited", retry_after=seconds, ca_code=code)
        if code in _TRANSIENT:
            return TransientError(f"{self._what} failed: {_detail(exc)}", reason="CAUnavailable", ca_code=code)
        if code == "externalAccountRequired":
            return TerminalError(f"{self._what} requires external account binding: set eab_kid and eab_hmac_key "
                                 "(or eab_hmac_key_file) in the CA profile", reason="CaAuthFailed", ca_code=code)
        if code in ("accountDoesNotExist", "badPublicKey", "badSignatureAlgorithm") or (
                code == "unauthorized" and _names_the_account(exc)):
            return TerminalError(f"{self._what} refused the ACME account: {_detail(exc)}", reason="CaAuthFailed",
                                 ca_code=code)
        if code == "unauthorized":
            # Here the account was registered or found already (a refusal then is _account_problem's)
            # and no challenge failed (that is _validation_failed's): the CA refuses this request,
            # e.g. a CSR whose names are not the order's. Sending the owner to the EAB and account
            # key would be wrong; the CA's detail says what it objects to.
            return _Refusal("RequestRefused", f"the ACME CA refused the request: {_detail(exc)}")
        if code in _VALIDATION:  # an order that failed because an authorization did
            return TerminalError(f"the ACME CA could not validate {_detail(exc)}", reason="ChallengeFailed",
                                 ca_code=code)
        return TerminalError(f"{self._what} refused the request: {_detail(exc)}", reason="CaError",
                             ca_code=code or exc.typ)

    def _validation_failed(self, exc: acme_errors.ValidationError) -> CertlcError | _Refusal:
        problems: list[tuple[str, messages.Error]] = []
        for authz in exc.failed_authzrs:
            name = _identifier_text(authz)
            errors = [c.error for c in authz.body.challenges if c.error is not None]
            problems += [(name, e) for e in errors] or [(name, messages.Error(detail="no detail from the CA"))]
        if problems and all(e.code == "caa" for _, e in problems):
            return _Refusal("CaaForbidden", "the ACME CA refused: " + "; ".join(
                f"{name}: {_detail(e)}" for name, e in problems))
        text = "; ".join(f"{name} with {self.solver.challenge_type}: {_detail(e)}" for name, e in problems)
        return TerminalError(f"the ACME CA could not validate {text}", reason="ChallengeFailed",
                             ca_code=problems[0][1].code if problems else None)

    @contextlib.contextmanager
    def _mapped(self, holder: list[Any]) -> Iterator[None]:
        """ACME and network failures as certlc errors (``holder[0]``: the client, for Retry-After)."""
        try:
            yield
        except Exception as exc:
            mapped = self._classify(exc, holder[0] if holder else None)
            if mapped is None or mapped is exc:
                raise
            raise mapped from None

    # --- submit -------------------------------------------------------------------------------
    def submit(self, request: SigningRequest) -> Disposition:
        request_id = request.request_key
        try:
            csr = self._csr(request.csr_pem)
            holder: list[Any] = []
            deadline = dt.datetime.now() + dt.timedelta(seconds=self.timeout)  # the library's clock is naive local
            with self._mapped(holder):
                client = self._client_factory()
                holder.append(client)
                self._account(client)
                order = self._new_order(client, request.csr_pem.encode())
                request_id = str(order.uri or request_id)
                order = self._authorize(client, order, deadline)
                try:
                    order = client.finalize_order(order, deadline,
                                                  fetch_alternative_chains=bool(self.preferred_chain))
                except messages.Error as exc:
                    if exc.code != "unauthorized" or _names_the_account(exc):
                        raise
                    raise _Refusal("RequestRefused", f"the ACME CA refused to finalize the order with this CSR: "
                                   f"{_detail(exc)}. ACME CAs compare the CSR's names with the order's: every "
                                   "name belongs in the SANs, the subject CN among them") from None
                except acme_errors.TimeoutError:
                    log.info("ACME order %s for %s/%s is still processing; asking again later", order.uri,
                             request.vault, request.certificate)
                    return Disposition(DispositionStatus.PENDING, str(order.uri), reason="Pending",
                                       message="the ACME CA is still processing the order")
                return self._issued(order, csr)
        except _Refusal as refusal:
            return Disposition(DispositionStatus.DENIED, request_id, reason=refusal.reason, message=refusal.message)

    def _new_order(self, client: Any, csr_pem: bytes) -> Any:
        try:
            return client.new_order(csr_pem)
        except messages.Error as exc:
            if exc.code != "accountDoesNotExist":
                raise
        # The CA forgot the account (a test CA restarted, an account deactivated): register anew once.
        self._account(client, fresh=True)
        return client.new_order(csr_pem)

    def _csr(self, csr_pem: str) -> x509.CertificateSigningRequest:
        """The CSR, refused before any order when ACME could not certify what it asks for."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            raise _Refusal("CsrRejected", "the CSR cannot be read as PEM PKCS#10") from None
        try:
            san_dns, san_ips, other = _san_names(csr)
        except ValueError:
            raise _Refusal("CsrRejected", "the CSR's subject alternative names cannot be read") from None
        if other:
            raise _Refusal("IdentifierUnsupported", "ACME CAs validate DNS names and IP addresses only; the CSR also "
                           f"asks for {', '.join(_san_text(g) for g in other)}")
        cn = _subject_cn(csr)
        if not san_dns and not san_ips:
            raise _Refusal("CsrNamesMissing", _names_missing_text(cn))
        if cn is not None:
            address = _ip(cn)
            if address is not None and address not in {ipaddress.ip_address(ip) for ip in san_ips}:
                raise _Refusal("IdentifierUnsupported", f"the subject CN {cn!r} is an IP address the CSR's subject "
                               "alternative names do not include; ACME CAs certify the names in the SANs (RFC 8738 "
                               "for IP addresses): add it to the IP address SANs")
            if address is None and not _is_dns_name(cn):
                raise _Refusal("IdentifierUnsupported", f"the subject CN {cn!r} is neither a DNS name an ACME CA can "
                               "validate nor an IP address, and the CN is ordered too: make the CN one of the names in "
                               "the SANs (in Key Vault, the certificate policy's subject, e.g. CN=www.contoso.com "
                               "with www.contoso.com among subject_alternative_names.dns_names)")
        dns_names, ips = _identifiers(csr)
        bad = [n for n in dns_names if not _is_dns_name(n)]
        if bad:
            raise _Refusal("IdentifierUnsupported", f"not DNS names an ACME CA can validate: {', '.join(bad)}")
        typ = self.solver.challenge_type
        wildcards = [n for n in dns_names if n.startswith("*.")]
        if wildcards and typ != "dns-01":
            raise TerminalError(f"{', '.join(wildcards)}: ACME validates wildcard names with dns-01 only, and CA "
                                f"profile {self.profile!r} answers {typ}", reason="ChallengeUnsupported")
        if ips and typ == "dns-01":
            raise TerminalError(f"{', '.join(ips)}: ACME validates IP addresses with http-01 only, and CA profile "
                                f"{self.profile!r} answers dns-01", reason="ChallengeUnsupported")
        return csr

    @staticmethod
    def _challenge_errors(client: Any, order: Any) -> list[str]:
        """The errors a CA attached to challenges it still calls pending (best effort)."""
        found: list[str] = []
        for authz in order.authorizations:
            try:
                fresh, _ = client.poll(authz)
            except Exception:  # noqa: S112 - only a better message is at stake; the timeout stands
                continue
            for challb in fresh.body.challenges:
                if getattr(challb, "error", None) is not None:
                    found.append(f"{_identifier_text(fresh)} ({challb.chall.typ}): {_detail(challb.error)}")
        return found

    def _authorize(self, client: Any, order: Any, deadline: dt.datetime) -> Any:
        """Answer every pending authorization with the solver; cleanup runs whatever happens."""
        work: list[tuple[Any, Challenge]] = []
        for authz in order.authorizations:
            status = authz.body.status
            if status == messages.STATUS_VALID:
                continue  # the CA reuses an earlier validation
            if status != messages.STATUS_PENDING:
                raise TerminalError(f"the ACME CA's authorization for {_identifier_text(authz)} is {status.name}",
                                    reason="ChallengeFailed")
            work.append(self._challenge(authz))
        if not work:
            return order
        prepared = [c for _, c in work]
        try:
            self.solver.present(prepared)
            for challb, _ in work:
                client.answer_challenge(challb, challb.chall.response(self._key))
            try:
                return client.poll_authorizations(order, deadline)
            except acme_errors.TimeoutError:
                # step-ca (0.19) never marks a failed challenge invalid: it stays pending with the
                # error attached. An error there is a failed validation, not a slow CA.
                failed = self._challenge_errors(client, order)
                if failed:
                    raise TerminalError(f"the ACME CA could not validate {'; '.join(failed)}",
                                        reason="ChallengeFailed") from None
                names = ", ".join(c.identifier for c in prepared)
                raise TransientError(f"the ACME CA did not finish validating {names} within {self.timeout:g} s "
                                     "(timeout_seconds)", reason="ValidationTimeout") from None
        finally:
            self.solver.cleanup(prepared)

    def _challenge(self, authz: Any) -> tuple[Any, Challenge]:
        typ = self.solver.challenge_type
        name = authz.body.identifier.value
        for challb in authz.body.challenges:
            if challb.chall.typ == typ and isinstance(challb.chall, acme_challenges.KeyAuthorizationChallenge):
                chall = challb.chall
                return challb, Challenge(
                    typ=typ, identifier=name, token=chall.encode("token"),
                    key_authorization=chall.key_authorization(self._key),
                    validation=chall.validation(self._key))
        offered = ", ".join(sorted({c.chall.typ for c in authz.body.challenges})) or "none"
        raise TerminalError(f"the ACME CA offers no {typ} challenge for {_identifier_text(authz)} (offered: {offered})",
                            reason="ChallengeUnsupported")

    def _issued(self, order: Any, csr: x509.CertificateSigningRequest | None) -> Disposition:
        chains = [order.fullchain_pem, *(order.alternative_fullchains_pem or [])]
        certs = split_pem(select_chain(chains, self.preferred_chain))
        if not certs:
            raise TerminalError(f"{self._what} reported order {order.uri} valid but sent no certificate",
                                reason="CaResponseInvalid")
        leaf = x509.load_pem_x509_certificate(certs[0].encode())
        if csr is not None:
            # Only a certificate for the key Key Vault holds can be merged; anything else is a CA fault.
            der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            if leaf.public_key().public_bytes(der, spki) != csr.public_key().public_bytes(der, spki):
                raise TerminalError(f"{self._what} issued a certificate for another key (order {order.uri})",
                                    reason="CaResponseInvalid")
        log.info("ACME order %s issued serial %x", order.uri, leaf.serial_number)
        return Disposition(DispositionStatus.ISSUED, str(order.uri), certificate_pem=certs[0],
                           chain_pem=tuple(certs[1:]), reason="Issued", message="Issued")

    # --- retrieve -----------------------------------------------------------------------------
    def retrieve(self, request_id: str) -> Disposition:
        if not request_id.startswith(("https://", "http://")):
            raise TerminalError(f"{request_id!r} is not an ACME order URL, so there is nothing to retrieve",
                                reason="RequestUnknown", request_id=request_id)
        holder: list[Any] = []
        try:
            with self._mapped(holder):
                client = self._client_factory()
                holder.append(client)
                self._account(client)
                # POST-as-GET of the order (RFC 8555 §6.3) through the library's signed POST.
                response = client.net.post(request_id, None, new_nonce_url=client.directory["newNonce"])
                body = messages.Order.from_json(response.json())
                if body.status == messages.STATUS_INVALID:
                    if body.error is not None:
                        raise acme_errors.IssuanceError(body.error)
                    raise TerminalError(f"ACME order {request_id} is invalid; the CA gave no reason",
                                        reason="OrderInvalid", request_id=request_id)
                if body.status not in (messages.STATUS_VALID, messages.STATUS_PROCESSING):
                    raise TerminalError(f"ACME order {request_id} is {body.status.name}, not finalized; the next "
                                        "renewal makes a new order", reason="OrderStale", request_id=request_id)
                order = messages.OrderResource(body=body, uri=request_id)
                deadline = dt.datetime.now() + dt.timedelta(seconds=min(self.timeout, RETRIEVE_WAIT))
                try:
                    order = client.poll_finalization(order, deadline,
                                                     fetch_alternative_chains=bool(self.preferred_chain))
                except acme_errors.TimeoutError:
                    return Disposition(DispositionStatus.PENDING, request_id, reason="Pending",
                                       message="the ACME CA is still processing the order")
                return self._issued(order, None)
        except _Refusal as refusal:
            return Disposition(DispositionStatus.DENIED, request_id, reason=refusal.reason, message=refusal.message)

    # --- check --------------------------------------------------------------------------------
    def check(self) -> Health:
        problems: list[str] = []
        holder: list[Any] = []
        try:
            with self._mapped(holder):
                client = self._client_factory()
                holder.append(client)
                self._account(client)
        except (CertlcError, _Refusal) as exc:
            problems.append(str(exc))
        problems += self.solver.check()
        return Health(ok=not problems, problems=problems)


_accounts: dict[tuple[str, str], str] = {}  # (directory URL, key thumbprint) -> account URL
_accounts_lock = threading.Lock()


# --- helpers ------------------------------------------------------------------------------------
def _detail(problem: messages.Error) -> str:
    where = f"{problem.identifier.value}: " if problem.identifier is not None else ""
    text = problem.detail or problem.description or problem.title or "no detail"
    return f"{where}{text} ({problem.typ})"


def _names_the_account(problem: messages.Error) -> bool:
    """Whether an ``unauthorized`` problem is about the account (Boulder's and Pebble's "Account is
    not valid, has status deactivated", "... does not own order") rather than the request."""
    return bool(re.search(r"\baccount\b", problem.detail or "", re.IGNORECASE))


def _identifier_text(authz: Any) -> str:
    name = str(authz.body.identifier.value)
    return f"*.{name}" if getattr(authz.body, "wildcard", False) else name


def _is_dns_name(name: str) -> bool:
    body = name[2:] if name.startswith("*.") else name
    labels = body.rstrip(".").split(".")
    if len(body) > 253 or len(labels) < 2:
        return False
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(body)
        return False  # an address is not a DNS name
    return all(_LABEL.match(label) for label in labels)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _san_names(csr: x509.CertificateSigningRequest) -> tuple[list[str], list[str], list[x509.GeneralName]]:
    """The CSR's DNS name SANs, IP address SANs and other SANs (ValueError: unreadable)."""
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], [], []
    dns_names = sans.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    return dns_names, ips, [g for g in sans if not isinstance(g, x509.DNSName | x509.IPAddress)]


def _subject_cn(csr: x509.CertificateSigningRequest) -> str | None:
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None


def _identifiers(csr: x509.CertificateSigningRequest) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses to order for ``csr``: its SANs, and the first subject CN as a
    DNS name when it is not among them (as certbot and the ``acme`` library order it; RFC 8555
    §7.4 lets a name appear in the CN only). A CN that is an IP address is not a DNS name: it is
    ordered through the IP address SANs, which must hold it (RFC 8738; checked in ``_csr``)."""
    dns_names, ips, _ = _san_names(csr)
    cn = _subject_cn(csr)
    if cn is not None and _ip(cn) is None:
        dns_names = [cn, *(n for n in dns_names if n.lower() != cn.lower())]
    return dns_names, ips


def _names_missing_text(cn: str | None) -> str:
    """Why a CSR without DNS name or IP address SANs is refused, and what the owner changes."""
    intro = "the CSR has no DNS name or IP address in its subject alternative names (SANs)"
    if cn is not None and _ip(cn) is not None:
        return (f"{intro}, only the subject CN {cn!r}. ACME CAs certify the names in the SANs: add {cn} to the "
                "certificate's IP address SANs, then renew")
    if cn is not None and _is_dns_name(cn):
        return (f"{intro}, only the subject CN {cn!r}. ACME CAs certify the names in the SANs: add {cn!r} as a DNS "
                "name to the Key Vault certificate policy's SANs (subject_alternative_names.dns_names), then renew")
    shown = f" (the subject CN {cn!r} is not a DNS name either)" if cn else ""
    return (f"{intro}{shown}. ACME CAs certify the names in the SANs: put the certificate's DNS names in the Key "
            "Vault certificate policy's SANs (subject_alternative_names.dns_names), then renew")


def _san_text(name: x509.GeneralName) -> str:
    if isinstance(name, x509.RFC822Name):
        return f"e-mail address {name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI {name.value}"
    if isinstance(name, x509.OtherName):
        return "UPN" if name.type_id.dotted_string == "1.3.6.1.4.1.311.20.2.3" else f"other name {name.type_id.dotted_string}"
    if isinstance(name, x509.DirectoryName):
        return f"directory name {name.value.rfc4514_string()}"
    return type(name).__name__


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(int(value)))
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
    return None


# --- options ------------------------------------------------------------------------------------
_COMMON = {"email", "account_key", "eab_kid", "eab_hmac_key", "eab_hmac_key_file", "ca_bundle", "preferred_chain",
           "challenge", "timeout_seconds", "propagation_seconds"}
_HTTP01 = {"webroot", "http_listen"}
_DNS01 = {"dns_provider"}
_RFC2136 = {"rfc2136_server", "rfc2136_tsig_key_name", "rfc2136_tsig_secret", "rfc2136_tsig_secret_file",
            "rfc2136_tsig_algorithm", "rfc2136_zone"}
_AZURE = {"azure_subscription_id", "azure_resource_group", "azure_zone"}


def _text(name: str, options: dict[str, Any], key: str, *, required: bool = False, what: str = "") -> str | None:
    value = options.get(key)
    if value is None or value == "":
        if required:
            raise ConfigError(f"CA profile {name!r} ({KIND}) needs options.{key}{' = ' + what if what else ''}",
                              reason="CaProfileInvalid")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"CA profile {name!r}: {key} must be a non-empty string", reason="CaProfileInvalid")
    return value.strip()


def _seconds(name: str, options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"CA profile {name!r}: {key} must be a number of seconds, 0 or more",
                          reason="CaProfileInvalid")
    return float(value)


def _secret_file(name: str, key: str, path: str) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"CA profile {name!r}: {key} {path!r} cannot be read "
                          f"({getattr(exc, 'strerror', None) or type(exc).__name__})", reason="CaProfileInvalid") from None


def _eab(name: str, options: dict[str, Any]) -> ExternalAccount | None:
    kid = _text(name, options, "eab_kid")
    inline, path = _text(name, options, "eab_hmac_key"), _text(name, options, "eab_hmac_key_file")
    if inline and path:
        raise ConfigError(f"CA profile {name!r}: set eab_hmac_key or eab_hmac_key_file, not both",
                          reason="CaProfileInvalid")
    hmac_key = inline or (_secret_file(name, "eab_hmac_key_file", path) if path else None)
    if not kid and not hmac_key:
        return None
    if not kid or not hmac_key:
        raise ConfigError(f"CA profile {name!r}: external account binding needs both eab_kid and eab_hmac_key "
                          "(or eab_hmac_key_file)", reason="CaProfileInvalid")
    try:
        decoded = jose.b64.b64decode(hmac_key)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded or not re.fullmatch(r"[A-Za-z0-9_=-]+", hmac_key):  # never echo the value
        raise ConfigError(f"CA profile {name!r}: the EAB HMAC key ({'eab_hmac_key_file' if path else 'eab_hmac_key'}) "
                          "is not base64url", reason="CaProfileInvalid")
    return ExternalAccount(kid, hmac_key)


def _host_port(name: str, key: str, value: str, default_port: int | None) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\s\[\]]*)(?::(\d+))?", value)
    host = port = None
    if match:
        host = match.group(1) or match.group(3)
        port = match.group(2) or match.group(4)
    if not match or not host or (port is None and default_port is None) or not 0 < int(port or default_port or 0) < 65536:
        form = "host:port" if default_port is None else "host or host:port"
        raise ConfigError(f"CA profile {name!r}: {key} must be {form}, not {value!r}", reason="CaProfileInvalid")
    return host, int(port) if port else int(default_port)  # type: ignore[arg-type]


def _tsig_key(name: str, options: dict[str, Any]) -> Any:
    import dns.name
    import dns.tsig

    key_name = _text(name, options, "rfc2136_tsig_key_name")
    inline, path = _text(name, options, "rfc2136_tsig_secret"), _text(name, options, "rfc2136_tsig_secret_file")
    if inline and path:
        raise ConfigError(f"CA profile {name!r}: set rfc2136_tsig_secret or rfc2136_tsig_secret_file, not both",
                          reason="CaProfileInvalid")
    if not inline and not path:
        raise ConfigError(f"CA profile {name!r} (acme, rfc2136) needs options.rfc2136_tsig_secret or "
                          "rfc2136_tsig_secret_file (the key's base64 secret, as tsig-keygen prints it)",
                          reason="CaProfileInvalid")
    algorithm = _text(name, options, "rfc2136_tsig_algorithm") or "hmac-sha256"
    source = "rfc2136_tsig_algorithm"
    secret = inline or ""
    if path:
        text = _secret_file(name, "rfc2136_tsig_secret_file", path)
        # A BIND key file (tsig-keygen's output) or just the secret.
        found = re.search(r'secret\s+"([^"]+)"', text)
        secret = found.group(1) if found else text
        if found and not key_name:
            named = re.search(r'key\s+"?([^"\s{]+)"?\s*\{', text)
            key_name = named.group(1) if named else None
        if found and "rfc2136_tsig_algorithm" not in options:
            alg = re.search(r'algorithm\s+"?([A-Za-z0-9.-]+)"?\s*;', text)
            if alg:
                algorithm, source = alg.group(1), f"the key file's algorithm ({path!r})"
    if not key_name:
        raise ConfigError(f"CA profile {name!r} (acme, rfc2136) needs options.rfc2136_tsig_key_name",
                          reason="CaProfileInvalid")
    dns_algorithm = tsig_algorithm(algorithm)  # dnspython's own name: it signs with no other
    if dns_algorithm is None:
        raise ConfigError(f"CA profile {name!r}: {source} must be one of {', '.join(TSIG_ALGORITHMS)}, "
                          f"not {algorithm!r}", reason="CaProfileInvalid")
    try:
        if not base64.b64decode(secret, validate=True):
            raise ValueError
    except (binascii.Error, ValueError):  # never echo the value
        raise ConfigError(f"CA profile {name!r}: the TSIG secret "
                          f"({'rfc2136_tsig_secret_file' if path else 'rfc2136_tsig_secret'}) is not base64",
                          reason="CaProfileInvalid") from None
    try:
        return dns.tsig.Key(dns.name.from_text(key_name), secret, dns_algorithm)
    except Exception:  # dnspython's name errors
        raise ConfigError(f"CA profile {name!r}: rfc2136_tsig_key_name {key_name!r} is not a DNS name",
                          reason="CaProfileInvalid") from None


def _solver(name: str, options: dict[str, Any], settings: Settings) -> ChallengeSolver:
    challenge = _text(name, options, "challenge", required=True, what='"http-01" or "dns-01"')
    if challenge not in ("http-01", "dns-01"):
        raise ConfigError(f'CA profile {name!r}: challenge must be "http-01" or "dns-01", not {challenge!r}',
                          reason="CaProfileInvalid")
    other = (_DNS01 | _RFC2136 | _AZURE) if challenge == "http-01" else _HTTP01
    misplaced = sorted(set(options) & other)
    if misplaced:
        raise ConfigError(f"CA profile {name!r}: option(s) {misplaced} do not apply to challenge {challenge}",
                          reason="CaProfileInvalid")
    if challenge == "http-01":
        webroot, listen = _text(name, options, "webroot"), _text(name, options, "http_listen")
        if bool(webroot) == bool(listen):
            raise ConfigError(f"CA profile {name!r} (acme, http-01) needs exactly one of options.webroot (a directory "
                              'the web server serves) or options.http_listen ("host:port" for the built-in responder)',
                              reason="CaProfileInvalid")
        if "propagation_seconds" in options:
            raise ConfigError(f"CA profile {name!r}: propagation_seconds applies to dns-01 only",
                              reason="CaProfileInvalid")
        if webroot:
            return WebrootSolver(Path(webroot).expanduser())
        host, port = _host_port(name, "http_listen", str(listen), None)
        return HttpResponderSolver(host, port)
    provider = _text(name, options, "dns_provider", required=True, what='"rfc2136" or "azure"')
    if provider not in ("rfc2136", "azure"):
        raise ConfigError(f'CA profile {name!r}: dns_provider must be "rfc2136" or "azure", not {provider!r}',
                          reason="CaProfileInvalid")
    misplaced = sorted(set(options) & (_AZURE if provider == "rfc2136" else _RFC2136))
    if misplaced:
        raise ConfigError(f"CA profile {name!r}: option(s) {misplaced} do not apply to dns_provider {provider}",
                          reason="CaProfileInvalid")
    if provider == "rfc2136":
        server = _text(name, options, "rfc2136_server", required=True, what='"host" or "host:port" of the primary')
        host, port = _host_port(name, "rfc2136_server", str(server), 53)
        return Rfc2136Solver(host, port, _tsig_key(name, options), zone=_text(name, options, "rfc2136_zone"),
                             propagation_seconds=_seconds(name, options, "propagation_seconds", 0))
    subscription = _text(name, options, "azure_subscription_id", required=True)
    group = _text(name, options, "azure_resource_group", required=True)
    zone = _text(name, options, "azure_zone", required=True, what="the DNS zone, e.g. contoso.com")
    from azure.mgmt.dns import DnsManagementClient

    from certlc.clients import credential

    client = DnsManagementClient(credential(settings), str(subscription))
    return AzureDnsSolver(client, str(group), str(zone),
                          propagation_seconds=_seconds(name, options, "propagation_seconds", AZURE_PROPAGATION))


def from_profile(name: str, profile: CAProfile, settings: Settings) -> AcmeConnector:
    options = profile.options
    check_options(name, KIND, options, _COMMON | _HTTP01 | _DNS01 | _RFC2136 | _AZURE)
    endpoint = http_endpoint(name, KIND, profile.endpoint,
                             "the ACME directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory")
    timeout = timeout_option(name, options, DEFAULT_TIMEOUT)
    email = _text(name, options, "email")
    if email is not None and not re.fullmatch(r"[^@\s,]+@[^@\s,]+\.[^@\s,]+", email):
        raise ConfigError(f"CA profile {name!r}: email {email!r} is not an e-mail address", reason="CaProfileInvalid")
    ca_bundle = _text(name, options, "ca_bundle")
    if ca_bundle:
        ca_bundle = str(Path(ca_bundle).expanduser())
        trust_context(name, ca_bundle)  # readable PEM, or a plain-word ConfigError now
    key_option = _text(name, options, "account_key")
    if key_option:
        key_path = Path(key_option).expanduser()
        try:
            pem = key_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"CA profile {name!r}: account_key {key_option!r} cannot be read ({exc.strerror})",
                              reason="CaProfileInvalid") from None
        source = f"{key_option!r} (account_key)"
    else:
        key_path = account_key_path(settings.state_dir, name)
        try:
            pem = load_or_create_account_key(key_path)
        except OSError as exc:
            raise ConfigError(f"CA profile {name!r}: cannot keep the generated ACME account key at {str(key_path)!r} "
                              f"({exc.strerror}); set account_key or make state_dir writable",
                              reason="CaProfileInvalid") from None
        source = repr(str(key_path))
    return AcmeConnector(
        name,
        endpoint,
        pem,
        _solver(name, options, settings),
        email=email,
        eab=_eab(name, options),
        ca_bundle=ca_bundle,
        preferred_chain=_text(name, options, "preferred_chain"),
        timeout=timeout,
        key_source=source,
    )

