"""A simulated AD CS web enrollment site (certsrv) in front of the dev CA (issue 4, part 2).

It speaks the contract of docs/azure-reference.md §11.3, byte for byte where clients look:

* ``POST /certsrv/certfnsh.asp`` (form ``Mode=newreq``, ``CertRequest``, ``CertAttrib``,
  ``TargetStoreFlags``, ``SaveCert``) answers an HTML page: issued (links to
  ``certnew.cer?ReqID=N&amp;Enc=b64``), pending ("Certificate Pending" ... "Your Request Id is N.")
  or denied (``The disposition message is "<msg>"`` with the HRESULT). ``Mode=chkpnd`` with
  ``ReqID`` asks again about a held request, as the "check on a pending certificate" page does.
* ``GET /certsrv/certnew.cer?ReqID=N&Enc=b64|bin``: the certificate (``application/pkix-cert``;
  b64 = PEM with CRLF line ends), or an HTML error page carrying "Disposition message:".
* ``GET /certsrv/certnew.p7b?ReqID=N&Enc=b64|bin``: PKCS#7 with the certificate and its chain,
  the SET not in chain order; b64 puts the PKCS#7 inside ``BEGIN CERTIFICATE`` armor with CRLF,
  as AD CS does.
* ``GET /certsrv/``: the Welcome page (certdflt.asp) with the title, header and task links
  (``certrqus.asp``, ``certckpn.asp``, ``certcarc.asp``) of a real one; ``certlc ca check`` knows
  the site by those links. ``/certsrv/certckpn.asp``: a plain page.
* ``GET /certsrv/certrqxt.asp``: the advanced request page, whose ``<Select Name=lbCertTemplate>``
  offers the templates the caller may enrol on, one ``<Option>`` each, written as AD CS's
  ``certsgcl.inc`` (``EnumTemplates``) writes them: ``Value="E;<cn>;<key spec>;<key flags>;
  <enrollment flags>;<private key flags>;<subject flags>;<RA signatures>;<CSPs>;<v2 OID>;<major>;
  <minor flag>;<minor>;<display name>"`` and the display name as text. Templates the dev CA
  denies are left out, as AD CS leaves out templates the account has no Enroll permission on.

The issue / pending / deny decisions are the dev CA's own (:class:`DevCAConnector`), so the
simulator and the dev CA agree. A CA manager's approval is :func:`approve` (the dev CA's
``set_decision``). ``app.state.fault`` set to an HTTP status makes every request fail with it
(outage rehearsal); ``app.state.logons`` lists each completed Windows logon.

Authentication (``auth``), as IIS does it:

* ``basic``: checked against ``users`` when given; a refusal is a 401 offering ``Basic
  realm=...`` (plus Negotiate/NTLM, as IIS lists them).
* ``ntlm`` (IIS with only the NTLM provider): 401 ``WWW-Authenticate: NTLM``; the NTLM
  handshake (RFC 4559) is run by pyspnego's acceptor against ``users``.
* ``negotiate`` (IIS's default providers, "Negotiate" then "NTLM"): Kerberos through SPNEGO when
  the process has a keytab (``KRB5_KTNAME``, a key for ``HTTP/<host>``) and the gssapi package,
  NTLM inside SPNEGO or under the NTLM scheme otherwise.

A challenge leg answers 401 with the acceptor's token (``WWW-Authenticate: NTLM <b64>``); a
refusal answers 401 with the bare offers again; a completed handshake's last token (Kerberos
mutual authentication) rides on the page's own 200. The security context belongs to the TCP
connection, as in IIS: it is kept per connection, keyed by the peer address and port of the ASGI
scope (``scope["client"]``), which is unique per open TCP connection under uvicorn (ASGI gives
no connection object; a port reused after a close at worst meets a stale context, which the
next handshake's first token replaces). A connection that finished a handshake stays
authenticated, as IIS's default ``authPersistNonNTLM`` keeps it. In-process transports report a
fixed client address, i.e. one connection. With ``channel_binding_certificate`` (the server's
TLS certificate, DER or x509) the acceptor requires the client's ``tls-server-end-point`` binding
to match it, as IIS "Extended Protection: Required" does.

pyspnego's NTLM acceptor reads its users from the file named by ``NTLM_USER_FILE`` (lines
``DOMAIN:USER:PASSWORD``), read when the handshake's last message is checked. The simulator
writes ``users`` to such a file in the dev CA's state directory (mode 0600) and points the variable
at it only while its acceptor steps, under a lock: the variable is process-wide, and a client
in the same process (the tests) must not see it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import html
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certlc.ca.base import Disposition, DispositionStatus, SigningRequest
from certlc.ca.devca import DevCA, DevCAConnector
from certlc.ca.winauth import channel_bindings
from certlc.config import TemplateSpec
from certlc.errors import CertlcError, TransientError

__all__ = ["AUTH_KINDS", "NO_CERT_TYPE", "NO_REQUEST", "approve", "certsrv_app", "deny", "display_name",
           "template_option"]

log = logging.getLogger(__name__)

AUTH_KINDS = ("basic", "ntlm", "negotiate")

NO_CERT_TYPE = (
    "The request contains no certificate template information. "
    "0x80094801 (-2146875391 CERTSRV_E_NO_CERT_TYPE)"
)
NO_REQUEST = "Cannot find request. 0x80094002 (-2146877438 CERTSRV_E_NO_REQUEST)"
BAD_REQUEST = "ASN1 bad tag value met. 0x8009310b (ASN: 267 CRYPT_E_ASN1_BADTAG)"
UNAVAILABLE = "The RPC server is unavailable. 0x800706ba (WIN32: 1722 RPC_S_SERVER_UNAVAILABLE)"

_HEADER = (
    '<HTML>\r\n<Head>\r\n\t<Meta HTTP-Equiv="Content-Type" Content="text/html; charset=UTF-8">\r\n'
    "\t<Title>Microsoft Active Directory Certificate Services</Title>\r\n</Head>\r\n"
    '<Body BgColor=#FFFFFF><Font ID=locPageFont Face="Arial">\r\n'
    "<Table Border=0 CellSpacing=0 CellPadding=4 Width=100% BgColor=#008080>\r\n<TR>\r\n"
    "\t<TD><Font Color=#FFFFFF><LocID ID=locMSCertSrv><Font Face=\"Arial\" Size=-1><B><I>Microsoft</I></B> "
    "Active Directory Certificate Services &nbsp;--&nbsp; {ca} &nbsp;</Font></LocID></Font></TD>\r\n"
    '\t<TD ID=locHomeAlign Align=Right><A Href="/certsrv"><Font Color=#FFFFFF><LocID ID=locHomeLink>'
    '<Font Face="Arial" Size=-1><B>Home</B></Font></LocID></Font></A></TD>\r\n</TR>\r\n</Table>\r\n'
)
_FOOTER = "</Font>\r\n</Body>\r\n</HTML>\r\n"


def approve(ca: DevCA, request_id: str) -> None:
    """A CA manager issues a held request (certsrv.msc: All Tasks > Issue)."""
    ca.set_decision(str(request_id), "approve")


def deny(ca: DevCA, request_id: str) -> None:
    """A CA manager denies a held request."""
    ca.set_decision(str(request_id), "deny")


def _page(ca_name: str, body: str) -> str:
    return _HEADER.format(ca=html.escape(ca_name)) + body + _FOOTER


def _title(text: str) -> str:
    return f"<P ID=locPageTitle> <B> {text} </B>\r\n"


def _home_page(ca_name: str) -> str:
    """The Welcome page (certdflt.asp) with its three tasks, whose links are what clients (and
    ``certlc ca check``) know the site by: the texts are localised, the .asp names are not."""
    def task(loc_id: str, href: str, text: str) -> str:
        return (f'<TR>\r\n\t<TD><LocID ID={loc_id}><A Href="{href}"><Font Face="Arial">{text}</Font></A>'
                "</LocID></TD>\r\n</TR>\r\n")

    return _page(ca_name, (
        "<P><LocID ID=locPageTitle> <B> Welcome </B></LocID>\r\n"
        "<P><LocID ID=locPageDesc>\r\nUse this Web site to request a certificate for your Web browser, "
        "e-mail client, or other program, to download the CA certificate, its chain or CRL, or to see "
        "whether a pending request was issued.</LocID>\r\n"
        "<P>\r\n<Table Border=0 CellSpacing=0 CellPadding=0>\r\n<TR>\r\n"
        "\t<TD ColSpan=2 ID=locPrompt><Font Face=\"Arial\"><B>Select a task:</B></Font></TD>\r\n</TR>\r\n"
        + task("locLblRequestCert", "certrqus.asp", "Request a certificate")
        + task("locLblCheckPend", "certckpn.asp", "View the status of a pending certificate request")
        + task("locLblRetrieveRoot", "certcarc.asp", "Download a CA certificate, certificate chain, or CRL")
        + "</Table>\r\n"
    ))


def _issued_page(ca_name: str, request_id: str) -> str:
    rid = html.escape(request_id)
    return _page(ca_name, (
        _title("Certificate Issued")
        + "<P ID=locInfo>The certificate you requested was issued to you.</P>\r\n"
        + "\t<Input Type=Radio Name=rbEncoding ID=rbDerEnc Value=\"bin\">DER encoded or\r\n"
        + "\t<Input Type=Radio Name=rbEncoding ID=rbB64Enc Value=\"b64\" Checked>Base 64 encoded\r\n"
        + f'<P><A Href="certnew.cer?ReqID={rid}&amp;Enc=b64"><Img Src="certcert.gif" Border=0 Alt="Certificate">'
        + "<LocID ID=locDownloadCert1>Download certificate</LocID></A>\r\n"
        + f'<P><A Href="certnew.p7b?ReqID={rid}&amp;Enc=b64"><Img Src="certcert.gif" Border=0 Alt="Chain">'
        + "<LocID ID=locDownloadCertChain1>Download certificate chain</LocID></A>\r\n"
        + "<Script Language=\"JavaScript\">\r\n\tfunction handleGetCert() {\r\n"
        + f'\t\tlocation="certnew.cer?ReqID={rid}&"+getEncoding();\r\n\t}}\r\n</Script>\r\n'
    ))


def _pending_page(ca_name: str, request_id: str, mode: str) -> str:
    if mode == "chkpnd":
        info = ("<P ID=locInfoChkPnd> Your certificate request is still pending. You must wait for an\r\n"
                "administrator to issue the certificate you requested. </P>\r\n")
    else:
        info = ("<P ID=locInfoNewReq> Your certificate request has been received. However, you must wait for an\r\n"
                "administrator to issue the certificate you requested. </P>\r\n")
    return _page(ca_name, (
        _title("Certificate Pending") + info
        + f"<P ID=locReqID> Your Request Id is {html.escape(request_id)}. </P>\r\n"
        + "<P ID=locInstructions> Please return to this web site in a day or two to retrieve your certificate.</P>\r\n"
    ))


def _denied_page(ca_name: str, request_id: str, message: str) -> str:
    rid = f"<P ID=locReqID> Your Request Id is {html.escape(request_id)}. </P>\r\n" if request_id else ""
    return _page(ca_name, (
        _title("Certificate Request Denied")
        + "<P ID=locDenied> Your certificate request was denied. </P>\r\n" + rid
        + f"<P ID=locDispMsg> The disposition message is \"{html.escape(message, quote=False)}\". </P>\r\n"
        + "<P ID=locContactAdmin>Contact your administrator for further information.\r\n</P>\r\n"
    ))


def _error_page(ca_name: str, mode: str, disposition: str, message: str, result: str) -> str:
    """certrser.asp: what certnew.cer and certfnsh.asp answer when there is nothing to hand out."""
    return _page(ca_name, (
        _title("Error")
        + "<P ID=locInfo> An unexpected error has occurred: </P>\r\n"
        + "<Table Border=0 CellSpacing=0 CellPadding=0>\r\n"
        + f"<TR><TD ID=locModeLabel>Request Mode:</TD>\r\n\t\t<TD>{html.escape(mode)}</TD></TR>\r\n"
        + f"<TR><TD ID=locDispLabel>Disposition:</TD>\r\n\t\t<TD>{html.escape(disposition)}</TD></TR>\r\n"
        + f"<TR><TD ID=locDispMsgLabel>Disposition message:</TD>\r\n\t\t{html.escape(message, quote=False)}\r\n"
        + f"<TR><TD ID=locResultLabel>Result:</TD>\r\n\t\t<TD>{html.escape(result, quote=False)}</TD></TR>\r\n"
        + "</Table>\r\n"
    ))


def display_name(spec: TemplateSpec) -> str:
    """The dev CA has no display names; AD CS's are the cn with spaces ("WebServer" -> "Web Server")."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", spec.name)


def template_option(spec: TemplateSpec) -> str:
    """One ``<Option>`` of the lbCertTemplate list, fields in certsgcl.inc's order (see above)."""
    # v1 templates have no template extension: the OID, major, minor flag and minor fields are empty.
    extension = f"{spec.oid};{spec.major or 0};1;{spec.minor or 0}" if spec.oid else ";;;"
    fields = ["E", spec.name, "1", "0", "0", "16", "1", "0",
              "Microsoft RSA SChannel Cryptographic Provider", extension, display_name(spec)]
    return (f'\t\t\t<Option Value="{html.escape(";".join(fields))}">'
            f"{html.escape(display_name(spec), quote=False)}</Option>\r\n")


def _request_page(ca_name: str, templates: list[TemplateSpec]) -> str:
    # An account without Enroll on any template gets AD CS's placeholder option instead.
    options = "".join(template_option(t) for t in templates) or '\t\t\t<Option Value="X">(No templates found!)</Option>\r\n'
    return _page(ca_name, (
        _title("Submit a Certificate Request or Renewal Request")
        + '<Form Name=UIForm OnSubmit="goNext();return false;" Action="certlynx.asp" Method=Post>\r\n'
        + "<Table Border=0 CellSpacing=0 CellPadding=0>\r\n<TR><TD></TD>\r\n"
        + "\t\t<TD><TextArea ID=locTaRequest Rows=6 Cols=40 Name=taRequest Wrap=Off></TextArea></TD>\r\n</TR>\r\n"
        + "<TR><TD ColSpan=3><Label For=lbCertTemplateID><LocID ID=locTemplateHead><B>Certificate Template:</B>"
        + "</LocID></Label></TD></TR>\r\n"
        + "<TR><TD></TD>\r\n\t\t<TD><Select Name=lbCertTemplate ID=lbCertTemplateID>\r\n" + options
        + "\t\t</Select></TD>\r\n\t</TR>\r\n</Table>\r\n</Form>\r\n"
    ))


def _armor(der: bytes) -> bytes:
    """``BEGIN CERTIFICATE`` armor with 64-character lines and CRLF, the way AD CS writes Base 64."""
    body = base64.b64encode(der).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return ("-----BEGIN CERTIFICATE-----\r\n" + "\r\n".join(lines) + "\r\n-----END CERTIFICATE-----\r\n").encode()


def _csr_pem(value: str) -> str:
    """``CertRequest`` may be PEM (with any armor label) or bare base64 of the DER request."""
    text = value.replace("\r", "")
    match = re.search(r"-----BEGIN [A-Z0-9 ]+-----(.*?)-----END [A-Z0-9 ]+-----", text, re.S)
    body = match.group(1) if match else text
    compact = "".join(body.split())
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    csr = x509.load_der_x509_csr(der)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _template(attributes: str) -> str:
    # CertAttrib holds name:value pairs, one per line (certreq and the web form both use \n).
    for line in re.split(r"[\r\n]+", attributes or ""):
        name, _, value = line.partition(":")
        if name.strip().lower() == "certificatetemplate":
            return value.strip()
    return ""


# --- Windows authentication (the acceptor side of certlc.ca.winauth) ---------------------------
_NTLM_FILE_LOCK = threading.Lock()
_MAX_CONNECTIONS = 512  # handshake states kept; the oldest go first (a client that vanished mid-way)
_AUTH_REPLY = "certsrv_sim.auth_reply"  # scope key: the final token to put on the page's response


@contextlib.contextmanager
def _ntlm_user_file(path: Path | None) -> Iterator[None]:
    """``NTLM_USER_FILE`` names ``path`` for the duration (pyspnego's acceptor reads it), then is restored."""
    if path is None:
        yield
        return
    with _NTLM_FILE_LOCK:
        before = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = str(path)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("NTLM_USER_FILE", None)
            else:
                os.environ["NTLM_USER_FILE"] = before


def _write_ntlm_users(path: Path, users: dict[str, str]) -> Path:
    """``DOMAIN:USER:PASSWORD`` lines (``:user@REALM:PASSWORD`` for UPNs), mode 0600."""
    lines = []
    for name, password in users.items():
        domain, sep, user = name.partition("\\")
        lines.append(f"{domain}:{user}:{password}" if sep else f":{name}:{password}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


def _initial_token(token: bytes) -> bool:
    """A token that starts a handshake: NTLM NEGOTIATE_MESSAGE, or a GSS initial context token
    (SPNEGO NegTokenInit or a raw Kerberos AP-REQ, both tagged [APPLICATION 0] = 0x60)."""
    return token.startswith(b"NTLMSSP\x00\x01\x00\x00\x00") or token[:1] == b"\x60"


@dataclass
class _Handshake:
    scheme: str
    context: Any = None
    user: str | None = None


class _AuthReply:
    """Puts a completed handshake's last token (``WWW-Authenticate: Negotiate <b64>``, Kerberos
    mutual authentication) on whatever response the page makes, as IIS does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def reply(message: Message) -> None:
            header = scope.get(_AUTH_REPLY)
            if message["type"] == "http.response.start" and header:
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"www-authenticate", header.encode("latin-1"))]}
            await send(message)

        await self.app(scope, receive, reply)


def certsrv_app(ca: DevCA, *, users: dict[str, str] | None = None, realm: str = "ca.contoso.com",
                ca_name: str | None = None, auth: str = "basic",
                channel_binding_certificate: bytes | x509.Certificate | None = None,
                service_host: str = "localhost") -> Starlette:
    """The certsrv site for ``ca``. ``users`` maps user name (``DOMAIN\\user`` or ``user@REALM``)
    -> password; None: no authentication (basic), or for ntlm/negotiate the NTLM users already
    in ``NTLM_USER_FILE`` and any Kerberos principal the keytab's KDC vouches for. ``auth`` is
    ``basic``, ``ntlm`` or ``negotiate``; ``channel_binding_certificate`` makes the TLS channel
    binding mandatory (IIS Extended Protection); ``service_host`` is the host part of the
    ``HTTP/<host>`` service principal the Kerberos acceptor is."""
    if auth not in AUTH_KINDS:
        raise ValueError(f"auth must be one of {', '.join(AUTH_KINDS)}")
    connector = DevCAConnector("certsrv-sim", ca)
    display = ca_name or ca.common_name
    windows = auth != "basic"
    schemes = {"ntlm": ("NTLM",), "negotiate": ("Negotiate", "NTLM")}.get(auth, ())
    ntlm_file = None
    if windows and users:
        ca.ensure()  # the dev CA creates its directory by renaming a finished one into place: first
        ntlm_file = _write_ntlm_users(ca.state_dir / "certsrv-ntlm-users", users)
    bindings = None
    if channel_binding_certificate is not None:
        der = (channel_binding_certificate.public_bytes(serialization.Encoding.DER)
               if isinstance(channel_binding_certificate, x509.Certificate) else channel_binding_certificate)
        bindings = channel_bindings(der)
    handshakes: OrderedDict[Any, _Handshake] = OrderedDict()

    def unauthorized() -> Response:
        body = _page(display, _title("401 - Unauthorized: Access is denied due to invalid credentials."))
        response = HTMLResponse(body, status_code=401)
        # One header per scheme, in IIS's order; basic mode lists Windows schemes too, as IIS does.
        for offer in schemes or ("Negotiate", "NTLM", f'Basic realm="{realm}"'):
            response.headers.append("WWW-Authenticate", offer)
        return response

    def challenge(scheme: str, token: bytes) -> Response:
        body = _page(display, _title("401 - Unauthorized: Access is denied due to invalid credentials."))
        response = HTMLResponse(body, status_code=401)
        response.headers["WWW-Authenticate"] = f"{scheme} {base64.b64encode(token).decode()}"
        return response

    def windows_guard(request: Request) -> Response | None:
        """None when the request may proceed; else the 401 (challenge leg or refusal)."""
        import spnego  # the simulator's Windows modes only

        key = request.scope.get("client") or ("-", 0)
        state = handshakes.get(key)
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        scheme = {"negotiate": "Negotiate", "ntlm": "NTLM"}.get(scheme.lower(), scheme)
        if not scheme:
            # An authenticated connection stays so; anything else is asked to authenticate.
            return None if state is not None and state.user else unauthorized()
        if scheme not in schemes:
            return unauthorized()
        try:
            token = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return unauthorized()
        if state is None or state.scheme != scheme or state.user or _initial_token(token):
            state = _Handshake(scheme)
        handshakes[key] = state
        handshakes.move_to_end(key)
        while len(handshakes) > _MAX_CONNECTIONS:
            handshakes.popitem(last=False)
        try:
            with _ntlm_user_file(ntlm_file):
                if state.context is None:
                    protocol = "ntlm" if scheme == "NTLM" else "negotiate"
                    state.context = spnego.server(hostname=service_host, service="HTTP", protocol=protocol,
                                                  channel_bindings=bindings)
                out = state.context.step(token)
        except Exception as exc:  # a bad password, a mismatched binding, a token out of order: refused
            log.info("certsrv simulator refused %s authentication from %s: %s", scheme, key, exc)
            handshakes.pop(key, None)
            return unauthorized()
        if not state.context.complete:
            return challenge(scheme, bytes(out or b""))
        state.user = state.context.client_principal or "authenticated"
        request.app.state.logons.append((key, scheme, state.user, state.context.negotiated_protocol))
        if out:
            request.scope[_AUTH_REPLY] = f"{scheme} {base64.b64encode(bytes(out)).decode()}"
        return None

    def authorized(request: Request) -> bool:
        if users is None:
            return True
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return False
        expected = users.get(user)
        return expected is not None and secrets.compare_digest(expected.encode(), password.encode())

    def guard(request: Request) -> Response | None:
        fault = request.app.state.fault
        if fault:
            return HTMLResponse(f"<html><body><h1>HTTP Error {int(fault)}</h1></body></html>", status_code=int(fault))
        if windows:
            return windows_guard(request)
        if not authorized(request):
            return unauthorized()
        return None

    def decide(disposition: Disposition, mode: str) -> HTMLResponse:
        rid = disposition.request_id
        if disposition.status is DispositionStatus.ISSUED:
            return HTMLResponse(_issued_page(display, rid))
        if disposition.status is DispositionStatus.PENDING:
            return HTMLResponse(_pending_page(display, rid, mode))
        return HTMLResponse(_denied_page(display, rid, disposition.message))

    async def home(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        return HTMLResponse(_home_page(display))

    async def advanced_request(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        return HTMLResponse(_request_page(display, [t for t in ca.templates if t.approval != "deny"]))

    async def check_pending(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        return HTMLResponse(_page(display, _title("View the Status of a Pending Certificate Request") + (
            '<Form Action="certfnsh.asp" Method=Post>\r\n<Input Type=Hidden Name=Mode Value="chkpnd">\r\n'
            "<Input Type=Text Name=ReqID>\r\n</Form>\r\n")))

    async def finish(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        # urlencoded only, as the certsrv pages post it (no multipart parser needed).
        raw = parse_qs((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True)
        form = {key: values[0] for key, values in raw.items()}
        mode = str(form.get("Mode") or "")
        try:
            if mode == "chkpnd":
                request_id = str(form.get("ReqID") or "").strip()
                if not request_id.isdigit():
                    return HTMLResponse(_error_page(display, mode, "(never set)", "(none)", NO_REQUEST))
                return decide(connector.retrieve(request_id), mode)
            if mode != "newreq":
                return HTMLResponse(_error_page(display, mode or "(none)", "(never set)", "(none)",
                                                "The parameter is incorrect. 0x80070057 (WIN32: 87 ERROR_INVALID_PARAMETER)"))
            try:
                csr_pem = _csr_pem(str(form.get("CertRequest") or ""))
            except ValueError:
                return HTMLResponse(_error_page(display, "newreq - New Request", "(never set)", "(none)",
                                                BAD_REQUEST))
            template = _template(str(form.get("CertAttrib") or ""))
            if not template:
                ca.ensure()
                request_id = ca._next_request_id()
                ca.record(request_id, {"csr_pem": csr_pem, "template": "", "decision": "deny"})
                return HTMLResponse(_denied_page(display, request_id, NO_CERT_TYPE))
            return decide(connector.submit(SigningRequest(csr_pem=csr_pem, template=template)), mode)
        except TransientError:
            return HTMLResponse(_error_page(display, mode, "(never set)", "(none)", UNAVAILABLE))
        except CertlcError as exc:
            if exc.reason == "RequestUnknown":
                return HTMLResponse(_error_page(display, mode, "(never set)", "(none)", NO_REQUEST))
            return HTMLResponse(_error_page(display, mode, "(never set)", "(none)", BAD_REQUEST))

    def _download(request: Request) -> tuple[Response | None, Disposition | None, str]:
        if (refused := guard(request)) is not None:
            return refused, None, ""
        request_id = request.query_params.get("ReqID", "")
        encoding = request.query_params.get("Enc", "b64")
        mode = "Retrieve"
        if not request_id.isdigit():
            return HTMLResponse(_error_page(display, mode, "(never set)", "(none)", NO_REQUEST)), None, encoding
        try:
            disposition = connector.retrieve(request_id)
        except TransientError:
            return HTMLResponse(_error_page(display, mode, "(never set)", "(none)", UNAVAILABLE)), None, encoding
        except CertlcError:
            return HTMLResponse(_error_page(display, mode, "(never set)", "(none)", NO_REQUEST)), None, encoding
        if disposition.status is DispositionStatus.PENDING:
            page = _error_page(display, mode, "Under Submission", "Taken Under Submission",
                               "The operation completed successfully. 0x0 (WIN32: 0 ERROR_SUCCESS)")
            return HTMLResponse(page), None, encoding
        if disposition.status is DispositionStatus.DENIED:
            page = _error_page(display, mode, "Denied", disposition.message,
                               "The operation completed successfully. 0x0 (WIN32: 0 ERROR_SUCCESS)")
            return HTMLResponse(page), None, encoding
        return None, disposition, encoding

    async def certnew_cer(request: Request) -> Response:
        answer, disposition, encoding = _download(request)
        if answer is not None:
            return answer
        assert disposition is not None and disposition.certificate_pem
        der = x509.load_pem_x509_certificate(disposition.certificate_pem.encode()).public_bytes(
            serialization.Encoding.DER)
        body = der if encoding == "bin" else _armor(der)
        return Response(body, media_type="application/pkix-cert",
                        headers={"Content-Disposition": "attachment; filename=certnew.cer"})

    async def certnew_p7b(request: Request) -> Response:
        answer, disposition, encoding = _download(request)
        if answer is not None:
            return answer
        assert disposition is not None and disposition.certificate_pem
        leaf = x509.load_pem_x509_certificate(disposition.certificate_pem.encode())
        issuing, root = ca.chain
        # A PKCS#7 SET has no order and AD CS does not write chain order: root, leaf, issuing CA.
        der = pkcs7.serialize_certificates([root, leaf, issuing], serialization.Encoding.DER)
        body = der if encoding == "bin" else _armor(der)
        return Response(body, media_type="application/x-pkcs7-certificates",
                        headers={"Content-Disposition": "attachment; filename=certnew.p7b"})

    app = Starlette(middleware=[Middleware(_AuthReply)], routes=[
        Route("/certsrv", home),
        Route("/certsrv/", home),
        Route("/certsrv/certckpn.asp", check_pending),
        Route("/certsrv/certrqxt.asp", advanced_request),
        Route("/certsrv/certfnsh.asp", finish, methods=["POST"]),
        Route("/certsrv/certnew.cer", certnew_cer),
        Route("/certsrv/certnew.p7b", certnew_p7b),
    ])
    app.state.fault = None
    # (connection, scheme, principal, protocol) per completed Windows logon: what IIS's log shows.
    app.state.logons = []
    return app
