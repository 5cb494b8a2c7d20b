"""AD CS through its web enrollment site, certsrv (kind ``adcs-web``; issue 4, part 2).

The contract is docs/azure-reference.md §11.3: ``POST certfnsh.asp`` with ``Mode=newreq``, the
CSR and ``CertAttrib=CertificateTemplate:<name>`` answers an HTML page that is read for the
disposition (issued: a ``certnew.cer?ReqID=N&`` link; pending: "Certificate Pending" and "Your
Request Id is N."; denied: ``The disposition message is "..."``). The certificate then comes
from ``certnew.cer?ReqID=N&Enc=b64`` and the chain from ``certnew.p7b`` (a PKCS#7 whose SET is not
in chain order, inside ``BEGIN CERTIFICATE`` armor); the chain is re-ordered leaf to root.
``retrieve`` asks ``certnew.cer`` again: a certificate, or an HTML page whose "Disposition
message:" says pending or denied. ``check_templates`` reads the advanced request page
``certrqxt.asp``, whose ``<Select Name=lbCertTemplate>`` offers the templates the account may
enrol on (see :func:`parse_template_list`).

Profile options: ``auth`` (``negotiate`` | ``ntlm`` | ``kerberos`` | ``basic`` |
``client_certificate``), ``username``, ``password_env`` (the variable holding the password) or
``password_file`` (a file holding it, as systemd credentials and Kubernetes secrets provide it;
not readable by others); the password itself is never logged nor put in a message. ``spn``
(Kerberos service principal, default ``HTTP/<endpoint host>``), ``ca_bundle``,
``client_certificate``/``client_key``, ``timeout_seconds``. negotiate, ntlm and kerberos are
IIS's Windows Authentication (:mod:`certlc.ca.winauth`, RFC 4559 on pyspnego, with the TLS
channel binding IIS Extended Protection asks for); negotiate and kerberos without a password use
the worker's own Kerberos ticket cache or keytab (a gMSA or the machine account of a
domain-joined worker). Basic authentication over plain ``http://`` is refused (the password would
cross the network in clear text) unless the CA is on loopback; see :func:`_plain_http`.

``check`` asks for the certsrv home page and passes only if it is one (:func:`is_home_page`):
an IIS default site, a login proxy or any other web server answering 200 is a problem.

Errors: no connection, timeouts and HTTP 5xx/408/429 are :class:`TransientError`; 401/403
:class:`TerminalError` ``CaAuthFailed``; a page certlc cannot read :class:`TerminalError`
``CaResponseInvalid``; a Kerberos setup problem on the worker :class:`TerminalError`
``KerberosNoCredentials`` / ``KerberosKdcUnreachable`` / ``KerberosSpnUnknown``, and a server
failing Kerberos mutual authentication ``MutualAuthFailed``.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import os
import re
import ssl
import stat
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certlc.ca.base import Disposition, DispositionStatus, Health, SigningRequest, TemplateCheck, TemplateStatus
from certlc.ca.certreq import HRESULTS, _chain_after, _pem
from certlc.ca.http import (
    check_options,
    check_status,
    http_endpoint,
    resolve_template,
    timeout_option,
    transport_errors,
    trust_context,
)
from certlc.ca.winauth import WindowsAuth, split_spn
from certlc.config import CAProfile, Settings, is_loopback_url
from certlc.errors import CertlcError, ConfigError, InvalidInput, TerminalError, first_line
from certlc.x509.load import load_certificates, load_csr

__all__ = ["KIND", "CertsrvConnector", "OfferedTemplate", "TemplateList", "from_profile", "is_home_page",
           "parse_certificates", "parse_page", "parse_template_list"]

log = logging.getLogger(__name__)

KIND = "adcs-web"
DEFAULT_TIMEOUT = 60.0
AUTH_KINDS = ("negotiate", "ntlm", "kerberos", "basic", "client_certificate")

_ISSUED = re.compile(r"certnew\.cer\?ReqID=(\d+)&", re.IGNORECASE)
_PENDING = re.compile(r"Certificate Pending", re.IGNORECASE)
_REQUEST_ID = re.compile(r"Your Request Id is (\d+)", re.IGNORECASE)
_DENIED = re.compile(r'The disposition message is "([^"]*)"', re.IGNORECASE | re.S)
_DISP_MSG = re.compile(r"Disposition message:(.*?)(?:<TR>|</Table>|Result:|$)", re.IGNORECASE | re.S)
_DISPOSITION = re.compile(r"Disposition:(.*?)(?:<TR>|</Table>|Disposition message:|$)", re.IGNORECASE | re.S)
_RESULT = re.compile(r"Result:(.*?)(?:<TR>|</Table>|$)", re.IGNORECASE | re.S)
_HEX = re.compile(r"\b0x([0-9a-fA-F]{8})\b")
_TAG = re.compile(r"<[^>]*>")


def _text(fragment: str) -> str:
    return " ".join(html.unescape(_TAG.sub(" ", fragment)).split())


def _hresult(text: str) -> int | None:
    for match in _HEX.finditer(text):
        value = int(match.group(1), 16)
        if value & 0x80000000:
            return value
    return None


def parse_page(page: str) -> Disposition | None:
    """The disposition a certfnsh.asp (or certnew.cer error) page states; None if it states none.

    An error page that says nothing about a request raises :class:`TerminalError` naming its
    result line (e.g. ``CERTSRV_E_NO_REQUEST``)."""
    if match := _ISSUED.search(html.unescape(page)):
        return Disposition(DispositionStatus.ISSUED, match.group(1), reason="Issued", message="Issued")
    rid = _REQUEST_ID.search(page)
    request_id = rid.group(1) if rid else ""
    if _PENDING.search(page) and request_id:
        return Disposition(DispositionStatus.PENDING, request_id, reason="Pending", message="Taken Under Submission")
    if match := _DENIED.search(page):
        message = _text(match.group(1))
        return _denied(request_id, message)
    if match := _DISP_MSG.search(page):
        message = _text(match.group(1))
        disposition = _text(m.group(1)) if (m := _DISPOSITION.search(page)) else ""
        result = _text(m.group(1)) if (m := _RESULT.search(page)) else ""
        if "under submission" in f"{disposition} {message}".lower():
            return Disposition(DispositionStatus.PENDING, request_id, reason="Pending", message=message)
        if disposition.lower().startswith("denied") or (message and message != "(none)" and _hresult(message)):
            return _denied(request_id, message)
        code = _hresult(result)
        known = HRESULTS.get(code) if code is not None else None
        reason = known.reason if known is not None else "CaError"
        label = f" ({known.name})" if known is not None else ""
        raise TerminalError(f"AD CS web enrollment reported an error{label}: {result or message}"[:400],
                            reason=reason, ca_code=f"0x{code:08X}" if code is not None else None)
    return None


def _denied(request_id: str, message: str) -> Disposition:
    code = _hresult(message)
    known = HRESULTS.get(code) if code is not None else None
    reason = known.reason if known is not None and known.kind == "denied" else "Denied"
    return Disposition(DispositionStatus.DENIED, request_id, reason=reason, message=message or "Denied")


def parse_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Certificates in a certnew.cer / certnew.p7b body: DER, PEM, PKCS#7 in CERTIFICATE armor."""
    try:
        certs = load_certificates(data)
    except CertlcError:
        certs = []
    if not certs:
        raise TerminalError(f"AD CS web enrollment sent a {what} that holds no readable certificate",
                            reason="CaResponseInvalid")
    return certs


@dataclass(frozen=True)
class OfferedTemplate:
    """One template the advanced request page offers: its cn, v2+ OID (if any) and display name."""

    name: str
    oid: str
    display: str


@dataclass(frozen=True)
class TemplateList:
    """What certrqxt.asp's template list says. ``found`` is False when the page has no list at
    all; ``error`` holds the text of AD CS's "(Unexpected Error 0x...)" placeholder option."""

    found: bool
    templates: tuple[OfferedTemplate, ...] = ()
    error: str = ""


class _SelectReader(HTMLParser):
    """The ``<option>``s of ``<select name=lbCertTemplate>``. HTMLParser takes care of what real
    pages vary in: tag and attribute case, attribute order, single, double or no quotes,
    character references in values and an ``</option>`` left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found = False
        self.options: list[tuple[str, str]] = []  # (value, text)
        self._in_select = False
        self._value: str | None = None
        self._text: list[str] = []

    def _close_option(self) -> None:
        if self._value is not None:
            self.options.append((self._value, " ".join("".join(self._text).split())))
        self._value, self._text = None, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: (v or "") for k, v in attrs}
        if tag == "select":
            self._close_option()
            self._in_select = (values.get("name", "").lower() == "lbcerttemplate"
                               or values.get("id", "").lower() == "lbcerttemplateid")
            self.found = self.found or self._in_select
        elif tag == "option" and self._in_select:
            self._close_option()
            self._value = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "option":
            self._close_option()
        elif tag == "select":
            self._close_option()
            self._in_select = False

    def handle_data(self, data: str) -> None:
        if self._value is not None:
            self._text.append(data)


def parse_template_list(page: str) -> TemplateList:
    """The templates certrqxt.asp offers this account.

    AD CS writes each option as ``certsgcl.inc``'s ``EnumTemplates`` does (Windows Server 2003
    source; later versions keep the format): ``Value="<E|O>;<cn>;<key spec>;<key flags>;
    <enrollment flags>;<private key flags>;<subject flags>;<RA signatures>;<CSPs>;<v2 OID>;<major>;
    <minor flag>;<minor>;<display name>"`` with the display name as the option's text. It lists
    only templates published on this CA that the account may enrol on; ``Value="X"`` is its
    placeholder for "(No templates found!)" or "(Unexpected Error 0x...)". azure-reference.md §11.3
    says nothing about this page: this follows the AD CS source and public scrapers of it.
    """
    reader = _SelectReader()
    reader.feed(page)
    reader.close()
    reader._close_option()
    offered: list[OfferedTemplate] = []
    error = ""
    for value, text in reader.options:
        fields = [f.strip() for f in value.split(";")]
        if fields[0].upper() == "X":
            if "error" in text.lower() or _HEX.search(text):
                error = text
            continue
        if len(fields) == 1:  # a value that is just the name, as some proxies and clones write it
            offered.append(OfferedTemplate(fields[0], "", text))
            continue
        oid = fields[9] if len(fields) > 9 else ""
        display = fields[13] if len(fields) > 13 and fields[13] else text
        if fields[1]:
            offered.append(OfferedTemplate(fields[1], oid, display))
    return TemplateList(reader.found, tuple(offered), error)


# The certsrv home page (certdflt.asp, served as /certsrv/) links to its tasks: "Request a
# certificate" (certrqus.asp; certrqxt.asp for a text-only browser; certrqad.asp on an enterprise
# CA offering the user no template), "View the status of a pending certificate request"
# (certckpn.asp) and "Download a CA certificate, certificate chain, or CRL" (certcarc.asp). The
# title and the link texts are translated in a localised AD CS; the file names are not.
HOME_PAGE_LINKS = frozenset({"certrqus.asp", "certrqxt.asp", "certrqad.asp", "certckpn.asp", "certcarc.asp"})
_MAX_HOME_PAGE = 512 * 1024  # a home page is a few KB; a huge body is not one


class _HomeReader(HTMLParser):
    """The file names an ``<a href>`` points at (lower case, no path or query) and the ``<title>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.targets: set[str] = set()
        self.title: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for name, value in attrs:
                if name == "href" and value:
                    try:
                        path = urlsplit(value.strip()).path
                    except ValueError:
                        continue
                    self.targets.add(path.rsplit("/", 1)[-1].lower())
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)


def _read_home(page: str) -> _HomeReader:
    reader = _HomeReader()
    reader.feed(page[:_MAX_HOME_PAGE])
    reader.close()
    return reader


def is_home_page(page: str) -> bool:
    """True when ``page`` is AD CS web enrollment's home page: it links to at least two of the
    certsrv task pages (:data:`HOME_PAGE_LINKS`). The links are what every version and language
    of the page has in common; an IIS default site, a login proxy or nginx's welcome page has
    none of them."""
    return len(_read_home(page).targets & HOME_PAGE_LINKS) >= 2


def _spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class CertsrvConnector:
    """AD CS web enrollment (certsrv) behind the CA connector contract."""

    def __init__(
        self,
        profile: str,
        endpoint: str,
        *,
        auth: httpx.Auth | tuple[str, str] | None = None,
        template_map: dict[str, str] | None = None,
        default_template: str | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        client: httpx.Client | None = None,
        account: str = "",
    ) -> None:
        self.profile = profile
        # Who the CA sees, for advice such as "grant Enroll to ..."; never the password.
        self.account = account or (auth[0] if isinstance(auth, tuple) else "") or "certlc's account"
        base = endpoint.rstrip("/")
        if not base.lower().endswith("/certsrv"):
            base += "/certsrv"
        self.endpoint = base
        self._auth = auth
        self.template_map = dict(template_map or {})
        self.default_template = default_template
        self._client = client or httpx.Client(verify=verify, timeout=timeout, transport=transport)

    def __repr__(self) -> str:  # credentials stay out of reprs
        return f"CertsrvConnector(profile={self.profile!r}, endpoint={self.endpoint!r})"

    # --- wire ---------------------------------------------------------------------------------
    def _send(self, method: str, page: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.endpoint}/{page}"
        what = f"AD CS web enrollment at {self.endpoint}"
        if self._auth is not None:
            kwargs["auth"] = self._auth
        try:
            with transport_errors(what, profile=self.profile):
                response = self._client.request(method, url, **kwargs)
        except CertlcError as exc:  # from the Windows authentication handshake (no ticket, no KDC, ...)
            exc.context.setdefault("profile", self.profile)
            raise
        status = response.status_code
        check_status(what, status, profile=self.profile)
        if status in (401, 403):
            offered = ", ".join(response.headers.get_list("www-authenticate")) or "none"
            raise TerminalError(
                f"AD CS web enrollment at {self.endpoint} refused certlc's credentials (HTTP {status}); "
                f"{self._credentials_hint()} (the server offers: {offered})", reason="CaAuthFailed",
                profile=self.profile)
        if status >= 400:
            raise TerminalError(f"AD CS web enrollment at {url} answered HTTP {status}; check the CA profile's "
                                "endpoint (it should end in /certsrv)", reason="CaResponseInvalid",
                                profile=self.profile)
        return response

    def _credentials_hint(self) -> str:
        auth = self._auth
        if isinstance(auth, WindowsAuth):
            if not auth.uses_password:
                return (f"check that {self.account} has a valid ticket (klist) and may use the CA's web "
                        "enrollment site, and that the site's SPN is right (options.spn)")
            scheme = {"ntlm": "NTLM", "kerberos": "Kerberos", "negotiate": "Negotiate"}[auth.protocol]
            return (f"check the CA profile's user name ({self.account}, as DOMAIN\\user or user@REALM) and password "
                    f"({scheme}) and that the account may use the CA's web enrollment site")
        return "check the CA profile's user name and password or client certificate"

    def _template(self, requested: str) -> str:
        return resolve_template(requested, self.default_template, self.template_map, self.profile)

    def _download(self, kind: str, request_id: str) -> httpx.Response:
        return self._send("GET", f"certnew.{kind}", params={"ReqID": request_id, "Enc": "b64"})

    @staticmethod
    def _is_certificate(response: httpx.Response) -> bool:
        ctype = response.headers.get("content-type", "").lower()
        return ctype.startswith(("application/pkix-cert", "application/x-pkcs7", "application/pkcs7",
                                 "application/x-x509", "application/octet-stream"))

    def _issued(self, request_id: str, public_key: bytes | None) -> Disposition:
        cer = self._download("cer", request_id)
        if not self._is_certificate(cer):
            found = parse_page(cer.text)
            if found is not None and found.status is not DispositionStatus.ISSUED:
                return Disposition(found.status, request_id, reason=found.reason, message=found.message)
            raise TerminalError(f"AD CS web enrollment reported request {request_id} issued but certnew.cer "
                                "sent no certificate", reason="CaResponseInvalid", profile=self.profile,
                                request_id=request_id)
        certs = parse_certificates(cer.content, "certnew.cer")
        p7b = self._download("p7b", request_id)
        others = parse_certificates(p7b.content, "certnew.p7b") if self._is_certificate(p7b) else []
        # Find the issued certificate by its key (AD CS's PKCS#7 SET has no order); certnew.cer
        # holds it alone, so its first certificate is the fallback.
        leaf = next((c for c in certs + others if public_key and _spki(c.public_key()) == public_key), None)
        if leaf is None:
            if public_key is not None:
                raise TerminalError(f"AD CS issued request {request_id} for another key than the request's",
                                    reason="CaResponseInvalid", profile=self.profile, request_id=request_id)
            leaf = certs[0]
        chain = _chain_after(leaf, [c for c in certs + others if c != leaf])
        log.info("AD CS web enrollment at %s issued request %s", self.endpoint, request_id)
        return Disposition(DispositionStatus.ISSUED, request_id, certificate_pem=_pem(leaf),
                           chain_pem=tuple(_pem(c) for c in chain), reason="Issued", message="Issued")

    # --- the connector contract ---------------------------------------------------------------
    def submit(self, request: SigningRequest) -> Disposition:
        template = self._template(request.template)
        try:
            csr = load_csr(request.csr_pem)
        except CertlcError:
            raise InvalidInput("the certificate request is not a readable PKCS#10 request",
                               reason="CsrInvalid", profile=self.profile) from None
        form = {
            "Mode": "newreq",
            "CertRequest": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "CertAttrib": f"CertificateTemplate:{template}",
            "TargetStoreFlags": "0",
            "SaveCert": "yes",
            "ThumbPrint": "",
            "FriendlyType": "Saved-Request Certificate",
        }
        response = self._send("POST", "certfnsh.asp", data=form)
        try:
            disposition = parse_page(response.text)
        except TerminalError as exc:
            exc.context.setdefault("profile", self.profile)
            raise
        if disposition is None:
            raise TerminalError(f"AD CS web enrollment at {self.endpoint} answered a page certlc cannot read "
                                f"(no issued, pending or denied disposition in certfnsh.asp, HTTP "
                                f"{response.status_code}: {_text(response.text)[:120]!r})",
                                reason="CaResponseInvalid", profile=self.profile)
        if disposition.status is DispositionStatus.ISSUED:
            return self._issued(disposition.request_id, _spki(csr.public_key()))
        return disposition

    def retrieve(self, request_id: str) -> Disposition:
        request_id = str(request_id).strip()
        if not request_id.isdigit() or len(request_id) > 10:
            raise InvalidInput(f"AD CS request id {request_id!r} is not a number", reason="RequestIdInvalid",
                               profile=self.profile)
        cer = self._download("cer", request_id)
        if self._is_certificate(cer):
            return self._issued(request_id, None)
        try:
            found = parse_page(cer.text)
        except TerminalError as exc:
            exc.context.setdefault("profile", self.profile)
            exc.context.setdefault("request_id", request_id)
            raise
        if found is None or found.status is DispositionStatus.ISSUED:
            raise TerminalError(f"AD CS web enrollment at {self.endpoint} answered certnew.cer for request "
                                f"{request_id} with a page certlc cannot read: {_text(cer.text)[:120]!r}",
                                reason="CaResponseInvalid", profile=self.profile, request_id=request_id)
        return Disposition(found.status, request_id, reason=found.reason, message=found.message)

    def check(self) -> Health:
        """The certsrv home page answers, with certlc's credentials, and is AD CS's: any web
        server answers *something* with 200, so the page itself must be recognised."""
        try:
            response = self._send("GET", "")
        except CertlcError as exc:
            return Health(ok=False, problems=[exc.message])
        if 200 <= response.status_code < 300 and is_home_page(response.text):
            return Health(ok=True)
        return Health(ok=False, problems=[
            f"the web server at {self.endpoint}/ answered, but not with AD CS web enrollment pages "
            f"({self._what_answered(response)}); check the endpoint (it ends in /certsrv)"])

    @staticmethod
    def _what_answered(response: httpx.Response) -> str:
        status = response.status_code
        if 300 <= status < 400:
            location = response.headers.get("location", "")
            return f"HTTP {status}, a redirect to {location[:200]!r}" if location else f"HTTP {status}, a redirect"
        ctype = response.headers.get("content-type", "").split(";")[0].strip()
        if ctype and "html" not in ctype:
            return f"HTTP {status}, {ctype[:80]}"
        title = " ".join("".join(_read_home(response.text).title).split())
        return f"HTTP {status}, a page titled {title[:120]!r}" if title else f"HTTP {status}, a page without the certsrv links"

    def check_templates(self, templates: list[str]) -> list[TemplateCheck]:
        """Each template against the list certrqxt.asp offers this account (nothing is submitted)."""
        listing = parse_template_list(self._send("GET", "certrqxt.asp").text)
        return [self._template_check(asked, listing) for asked in templates]

    def _template_check(self, asked: str, listing: TemplateList) -> TemplateCheck:
        name = self.template_map.get(asked, asked)
        where = f"the web enrollment pages at {self.endpoint}"
        if not listing.found:
            return TemplateCheck(asked, name, TemplateStatus.UNVERIFIABLE,
                                 f"{where} show no certificate template list (certrqxt.asp): a standalone CA "
                                 "has no templates, or the page is not AD CS's")
        if listing.error:
            return TemplateCheck(asked, name, TemplateStatus.UNVERIFIABLE,
                                 f"{where} could not list templates: {listing.error}",
                                 "look at certrqxt.asp in a browser as this account, or ask the CA administrator")
        folded = name.casefold()
        for offered in listing.templates:
            if folded in (offered.name.casefold(), offered.oid.casefold()):
                return TemplateCheck(asked, name, TemplateStatus.OK,
                                     f"offered to {self.account} as {offered.name!r} ({offered.display})")
        for offered in listing.templates:
            if folded == offered.display.casefold():
                # The CA takes the cn (or OID) in CertificateTemplate:, never the display name.
                return TemplateCheck(asked, name, TemplateStatus.UNKNOWN,
                                     f"{name!r} is the display name of template {offered.name!r}; the CA knows "
                                     "templates by their common name",
                                     "check template_map: v2 templates are named by their common name, not the "
                                     f"display name (use {offered.name!r})")
        # Not listed: the page cannot tell "no such template on this CA" from "no Enroll
        # permission", so the check claims only what is certain: this account cannot enrol it here.
        return TemplateCheck(asked, name, TemplateStatus.NOT_ENROLLABLE,
                             f"not offered to {self.account}: it does not exist on this CA or the account lacks "
                             "Enroll permission",
                             f"check the name (and template_map) against `certutil -CATemplates` on the CA, and ask "
                             f"the CA administrator to grant Enroll on the template to {self.account}")

    def close(self) -> None:
        self._client.close()


# --- profile ----------------------------------------------------------------------------------
def _ssl_context(name: str, options: dict[str, Any], auth_kind: str) -> ssl.SSLContext:
    # Always a context of our own (the client certificate goes into it); no bundle: the system's trust.
    context = trust_context(name, options.get("ca_bundle")) or ssl.create_default_context()
    if auth_kind == "client_certificate":
        cert, key = options.get("client_certificate"), options.get("client_key")
        if not cert:
            raise ConfigError(f"CA profile {name!r}: auth client_certificate needs options.client_certificate "
                              "(and client_key unless the file holds the key)", reason="CaProfileInvalid")
        try:
            context.load_cert_chain(str(Path(str(cert)).expanduser()),
                                    str(Path(str(key)).expanduser()) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"CA profile {name!r}: client certificate {str(cert)!r} / key cannot be loaded: "
                              f"{first_line(exc)}", reason="CaProfileInvalid") from None
    return context


def _has_password(options: dict[str, Any]) -> bool:
    return bool(options.get("password_env") or options.get("password_file"))


def _password(name: str, options: dict[str, Any]) -> str:
    variable, file = options.get("password_env"), options.get("password_file")  # not both: from_profile
    if file:
        return _password_from_file(name, str(file))
    if not variable:
        raise ConfigError(f"CA profile {name!r}: options.password_env must name the environment variable "
                          "holding the password (or options.password_file the file holding it)",
                          reason="CaProfileInvalid")
    value = os.environ.get(str(variable), "")
    if not value:
        raise ConfigError(f"CA profile {name!r}: environment variable {variable} (password_env) is not set",
                          reason="CaProfileInvalid")
    return value


_MAX_PASSWORD_FILE = 64 * 1024


def _password_from_file(name: str, value: str) -> str:
    """The password in ``password_file``: its text less the trailing newline. A systemd credential
    (``$CREDENTIALS_DIRECTORY/<name>``, 0400) or a Kubernetes secret volume (``defaultMode: 0400``)
    fits; a file every user of the machine may read is refused, as is a FIFO or directory."""
    where = f"CA profile {name!r}: options.password_file {value!r}"
    path = Path(value).expanduser()
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the worker (ignored for a regular file).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            info = os.fstat(fd)  # the file opened, not whatever the path names a moment later
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"{where} is not a regular file", reason="CaProfileInvalid")
            if os.name != "nt" and info.st_mode & stat.S_IROTH:
                raise ConfigError(
                    f"{where} is readable by every user on this machine (mode {stat.S_IMODE(info.st_mode):04o}); "
                    f"make it readable by certlc's account only: chmod 600 {value} (or 640 with a group only "
                    "certlc's account is in; a Kubernetes secret volume: defaultMode 0400)",
                    reason="CaProfileInvalid")
            handle = open(fd, "rb")  # noqa: SIM115 - closed below; it owns the descriptor from here
        except BaseException:
            os.close(fd)
            raise
        with handle:
            data = handle.read(_MAX_PASSWORD_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or first_line(exc)}",
                          reason="CaProfileInvalid") from None
    if len(data) > _MAX_PASSWORD_FILE:
        raise ConfigError(f"{where} is too large to hold a password", reason="CaProfileInvalid")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text", reason="CaProfileInvalid") from None
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"{where} is empty", reason="CaProfileInvalid")
    if "\n" in password or "\r" in password:
        raise ConfigError(f"{where} holds more than one line; put only the password in it",
                          reason="CaProfileInvalid")
    return password


_WARNED_PLAIN_HTTP: set[tuple[str, str, str]] = set()


def _plain_http(name: str, endpoint: str, auth_kind: str) -> None:
    """What each ``auth`` may do over plain ``http://`` to another machine (loopback is exempt:
    nothing crosses a network there, and the local stack and tests use it).

    * ``basic`` is refused: Basic puts the password itself in every request, base64-encoded, not
      encrypted; anyone on the path reads it.
    * ``client_certificate`` is refused: without TLS there is no client certificate to present.
    * ``negotiate``, ``ntlm`` and ``kerberos`` are warned about, not refused. The password never
      crosses the network, so refusing would only lock out the many certsrv sites that still
      answer on http (web enrollment installs with an http binding). But without TLS there is
      no channel binding: a man in the middle can relay certlc's handshake to the CA and enrol
      certificates as certlc's account (ESC8, the attack Microsoft's KB5005413 answers with
      HTTPS and Extended Protection), the NTLM response can be cracked offline for the password,
      and the request and the certificate travel unprotected. The warning names the fix.
    """
    if urlsplit(endpoint).scheme.lower() != "http" or is_loopback_url(endpoint):
        return
    if auth_kind == "basic":
        raise ConfigError(f"CA profile {name!r}: auth basic over plain http:// would send the password in clear "
                          f"text to {endpoint}; use the site's https:// URL (IIS: add an https binding), or a "
                          "Windows authentication (auth = \"negotiate\")", reason="CaProfileInvalid")
    if auth_kind == "client_certificate":
        raise ConfigError(f"CA profile {name!r}: auth client_certificate needs an https:// endpoint (plain http has "
                          f"no TLS to present the certificate in): {endpoint}", reason="CaProfileInvalid")
    key = (name, endpoint, auth_kind)
    if key not in _WARNED_PLAIN_HTTP:  # once per process, not once per renewal
        _WARNED_PLAIN_HTTP.add(key)
        log.warning("CA profile %r: auth %s over plain http:// (%s) does not reveal the password, but without TLS "
                    "the handshake can be relayed to the CA (ESC8) and the request and certificate travel "
                    "unprotected; use the site's https:// URL with IIS Extended Protection", name, auth_kind, endpoint)


def _auth(name: str, options: dict[str, Any], auth_kind: str) -> httpx.Auth | None:
    if auth_kind == "client_certificate":
        return None
    username = str(options.get("username") or "")
    windows = auth_kind in ("negotiate", "ntlm", "kerberos")
    if windows:
        spn = str(options.get("spn") or "") or None
        if spn is not None:
            try:
                split_spn(spn)
            except ValueError as exc:
                raise ConfigError(f"CA profile {name!r}: options.spn: {exc}", reason="CaProfileInvalid") from None
        # negotiate and kerberos may go without a password: the worker's own ticket cache or keytab.
        password = _password(name, options) if _has_password(options) or auth_kind == "ntlm" else None
        if password is not None and not username:
            raise ConfigError(f"CA profile {name!r}: auth {auth_kind} with a password needs options.username "
                              "(DOMAIN\\user or user@REALM)", reason="CaProfileInvalid")
        kerberos_only = auth_kind == "kerberos" or password is None
        if kerberos_only and not _kerberos_available():
            raise ConfigError(f"CA profile {name!r}: auth {auth_kind} "
                              f"{'without a password ' if auth_kind == 'negotiate' else ''}needs Kerberos, and the "
                              "worker lacks the gssapi and krb5 Python packages (pip install 'certlc[kerberos]'; "
                              "building them needs libkrb5-dev and a C compiler); or give a username and "
                              "password_env or password_file for NTLM", reason="CaProfileInvalid")
        return WindowsAuth(auth_kind, username=username or None, password=password, spn=spn)  # type: ignore[arg-type]
    if spn := options.get("spn"):
        raise ConfigError(f"CA profile {name!r}: options.spn {spn!r} applies to auth negotiate, ntlm or kerberos only",
                          reason="CaProfileInvalid")
    if not username:
        raise ConfigError(f"CA profile {name!r}: auth {auth_kind} needs options.username", reason="CaProfileInvalid")
    return httpx.BasicAuth(username, _password(name, options))


def _kerberos_available() -> bool:
    """pyspnego's Kerberos on Linux needs both python-gssapi and pykrb5 (its ``kerberos`` extra)."""
    if os.name == "nt":  # SSPI: Kerberos is built in
        return True
    return all(importlib.util.find_spec(module) is not None for module in ("gssapi", "krb5"))


def from_profile(name: str, profile: CAProfile, settings: Settings) -> CertsrvConnector:
    del settings  # everything sits in the CA profile
    options = profile.options or {}
    check_options(name, KIND, options, {"auth", "username", "password_env", "password_file", "spn", "ca_bundle",
                                        "client_certificate", "client_key", "timeout_seconds"})
    endpoint = http_endpoint(name, KIND, profile.endpoint, "the certsrv URL, e.g. https://ca.contoso.com/certsrv")
    auth_kind = str(options.get("auth") or "basic").lower()
    if auth_kind not in AUTH_KINDS:
        raise ConfigError(f"CA profile {name!r}: options.auth {auth_kind!r} is not one of {', '.join(AUTH_KINDS)}",
                          reason="CaProfileInvalid")
    if options.get("password_env") and options.get("password_file"):
        raise ConfigError(f"CA profile {name!r}: options.password_env and options.password_file both name the "
                          "password; keep one", reason="CaProfileInvalid")
    _plain_http(name, endpoint, auth_kind)
    timeout = timeout_option(name, options, DEFAULT_TIMEOUT)
    return CertsrvConnector(
        name,
        endpoint,
        auth=_auth(name, options, auth_kind),
        template_map=profile.template_map,
        default_template=profile.default_template,
        verify=_ssl_context(name, options, auth_kind),
        timeout=timeout,
        account=_account(options, auth_kind),
    )


def _account(options: dict[str, Any], auth_kind: str) -> str:
    if auth_kind == "client_certificate":
        return "the account of the profile's client certificate"
    if auth_kind in ("kerberos", "negotiate") and not options.get("username"):
        return "the worker's Kerberos account"
    return str(options.get("username") or "")
