"""AD CS enrollment through ``certreq.exe``, for a worker running on Windows (issue 4, part 3).

The connector drives the stock Windows client instead of speaking DCOM/MS-WCCE itself::

    certreq -submit   -q -config "<CA host>\\<CA name>" -attrib "CertificateTemplate:<name>" req.csr cert.cer chain.p7b
    certreq -retrieve -q -config "<CA host>\\<CA name>" <RequestId> cert.cer chain.p7b
    certreq -ping     -q -config "<CA host>\\<CA name>"

``check_templates`` runs ``certutil -config "<CA host>\\<CA name>" -CATemplates`` (see
:func:`parse_catemplates`).

``-q`` keeps certreq silent (no dialog can block an unattended worker). Every call runs in a
private temporary directory that is always removed, through an injectable ``runner`` taking the
argv list (default: :func:`subprocess.run` with a timeout and no shell). Nothing is ever quoted
by hand or handed to a shell: the CSR goes through a file, every value is its own argv element.

certreq's console text is localized and chatty, so the answer is read from what does not
change with the language: the files it wrote (``cert.cer`` present means issued), the
``RequestId:`` line, and the HRESULTs it prints (``0x80094800`` ...). The English disposition
lines ("Certificate retrieved(Issued) Issued", "Certificate request is pending: Taken Under
Submission (0)", "Certificate not issued (Denied) ...") are used where no file or code decides.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certlc.ca.base import Disposition, DispositionStatus, Health, SigningRequest, TemplateCheck, TemplateStatus
from certlc.ca.http import check_options, resolve_template, timeout_option
from certlc.config import CAProfile, Settings
from certlc.errors import CertlcError, ConfigError, InvalidInput, TerminalError, TransientError
from certlc.x509.chain import is_issued_by, order_chain
from certlc.x509.load import load_certificates, load_csr

__all__ = ["HRESULTS", "CaTemplate", "CertreqConnector", "CertreqResult", "Runner", "default_runner", "from_profile",
           "parse_catemplates"]

KIND = "certreq"
DEFAULT_TIMEOUT = 120.0
REQUEST_FILE = "req.csr"
CERT_FILE = "cert.cer"
CHAIN_FILE = "chain.p7b"

# A runner takes the argv list and returns something shaped like subprocess.CompletedProcess:
# ``returncode`` and ``stdout``/``stderr`` as bytes or str. It may raise subprocess.TimeoutExpired.
Runner = Callable[[list[str]], Any]

_DENIED, _TRANSIENT, _CONFIG, _TERMINAL = "denied", "transient", "config", "terminal"


@dataclass(frozen=True)
class _Code:
    name: str
    kind: str  # denied (a disposition), transient, config or terminal (raised errors)
    reason: str
    text: str


# HRESULT -> what it means for certlc. Values from winerror.h (certsrv facility 0x0009_4xxx,
# Win32 errors as 0x8007xxxx); texts are the system's FormatMessage texts, shortened.
HRESULTS: dict[int, _Code] = {
    # --- the CA answered and refused the request: a denied disposition (stop and alert) ---------
    0x80094014: _Code("CERTSRV_E_ADMIN_DENIED_REQUEST", _DENIED, "Denied",
                      "The request was denied by a certificate manager or CA administrator."),
    0x80094012: _Code("CERTSRV_E_TEMPLATE_DENIED", _DENIED, "TemplateDenied",
                      "The permissions on the certificate template do not allow the current user to enroll "
                      "for this type of certificate (grant the worker's account Enroll on the template)."),
    0x80094800: _Code("CERTSRV_E_UNSUPPORTED_CERT_TYPE", _DENIED, "TemplateNotSupported",
                      "The requested certificate template is not supported by this CA."),
    0x80094801: _Code("CERTSRV_E_NO_CERT_TYPE", _DENIED, "TemplateMissing",
                      "The request contains no certificate template information."),
    0x80094001: _Code("CERTSRV_E_BAD_REQUESTSUBJECT", _DENIED, "SubjectRejected",
                      "The request subject name is invalid or too long."),
    0x80094803: _Code("CERTSRV_E_SUBJECT_ALT_NAME_REQUIRED", _DENIED, "SubjectAltNameRequired",
                      "The request must include a subject alternative name extension."),
    0x8009480F: _Code("CERTSRV_E_SUBJECT_DNS_REQUIRED", _DENIED, "SubjectDnsRequired",
                      "The Domain Name System (DNS) name is unavailable and cannot be added to the "
                      "Subject Alternate name."),
    0x80094811: _Code("CERTSRV_E_KEY_LENGTH", _DENIED, "KeyLength",
                      "The public key does not meet the minimum size required by the specified certificate template."),
    0x80094813: _Code("CERTSRV_E_UNKNOWN_CERT_TYPE", _DENIED, "TemplateUnknown",
                      "The certificate template is unknown to the CA."),
    # --- the CA could not be reached or is busy: try again later -------------------------------
    0x800706BA: _Code("RPC_S_SERVER_UNAVAILABLE", _TRANSIENT, "CAUnavailable",
                      "The RPC server is unavailable (CA host down, certsvc stopped or blocked by a firewall)."),
    0x800706BE: _Code("RPC_S_CALL_FAILED", _TRANSIENT, "CAUnavailable", "The remote procedure call failed."),
    0x800706BF: _Code("RPC_S_CALL_FAILED_DNE", _TRANSIENT, "CAUnavailable",
                      "The remote procedure call failed and did not execute."),
    0x800706D9: _Code("EPT_S_NOT_REGISTERED", _TRANSIENT, "CAUnavailable",
                      "There are no more endpoints available from the endpoint mapper."),
    0x80070015: _Code("ERROR_NOT_READY", _TRANSIENT, "CAUnavailable",
                      "The device is not ready (the CA service is starting)."),
    0x8007045B: _Code("ERROR_SHUTDOWN_IN_PROGRESS", _TRANSIENT, "CAUnavailable", "A system shutdown is in progress."),
    0x80094006: _Code("CERTSRV_E_SERVER_SUSPENDED", _TRANSIENT, "CAUnavailable",
                      "The certification authority's certificate service is suspended."),
    0x8009400F: _Code("CERTSRV_E_NO_DB_SESSIONS", _TRANSIENT, "CABusy",
                      "There are not enough database sessions available on the CA."),
    # --- the worker may not enroll, or the profile names something wrong: configuration --------
    0x80070005: _Code("E_ACCESSDENIED", _CONFIG, "AccessDenied",
                      "Access is denied: the worker's account has no Request Certificates (enroll) "
                      "permission on this CA."),
    0x80094011: _Code("CERTSRV_E_ENROLL_DENIED", _CONFIG, "EnrollDenied",
                      "The permissions on this CA do not allow the current user to enroll for certificates."),
    0x8007052E: _Code("ERROR_LOGON_FAILURE", _CONFIG, "LogonFailure",
                      "The user name or password is incorrect (the worker's account cannot log on to the CA)."),
    0x80070057: _Code("E_INVALIDARG", _CONFIG, "InvalidArgument",
                      "The parameter is incorrect (check the -config string \"<CA host>\\<CA name>\")."),
    # --- nothing a retry or a config change fixes ------------------------------------------------
    0x80094002: _Code("CERTSRV_E_NO_REQUEST", _TERMINAL, "RequestUnknown",
                      "The CA has no request with this RequestId."),
    0x80094003: _Code("CERTSRV_E_BAD_REQUESTSTATUS", _TERMINAL, "RequestStatusInvalid",
                      "The request's current status does not allow this operation."),
    0x80094004: _Code("CERTSRV_E_PROPERTY_EMPTY", _TERMINAL, "RequestEmpty",
                      "The requested property value is empty."),
}
_BY_NAME = {code.name: value for value, code in HRESULTS.items()}

_CRLF = re.compile(r"\r\n?")
_REQUEST_ID = re.compile(r"RequestId\s*[:=]\s*\"?(\d+)\"?", re.IGNORECASE)
_HEX = re.compile(r"\b0x([0-9a-fA-F]{8})\b")
_NAME = re.compile(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b")
_ISSUED = re.compile(r"\(\s*Issued\s*\)|\bCertificate retrieved\b", re.IGNORECASE)
_PENDING = re.compile(r"\bpending\b|Taken Under Submission", re.IGNORECASE)
_DENIED_TEXT = re.compile(r"\(\s*Denied\s*\)|\bnot issued\b|\bDenied by\b", re.IGNORECASE)
_ALIVE = re.compile(r"interface is alive", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONFIG_STRING = re.compile(r"^[^\\\s\"-][^\\\"]*\\[^\\\"]+$")
_CATEMPLATE = re.compile(r"^(?P<name>[^\s:][^:]*):\s(?P<display>.*)\s--\s(?P<access>[^-].*)$")
_OID = re.compile(r"^\d+(\.\d+)+$")
# certutil -CATemplates on a CA with no template published (🔶 seen in public scripts, not documented).
_ERROR_NOT_FOUND = 0x80070490


@dataclass(frozen=True)
class CertreqResult:
    """One certreq run: exit code and its output decoded to text with ``\\n`` line ends."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return "\n".join(part for part in (self.stdout, self.stderr) if part)

    @property
    def lines(self) -> list[str]:
        return [" ".join(line.split()) for line in self.text.split("\n") if line.strip()]


def default_runner(timeout: float = DEFAULT_TIMEOUT) -> Runner:
    """``subprocess.run`` with output captured, no shell, no stdin and a timeout."""

    def run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout,
                              check=False, shell=False)

    return run


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            text = data.decode("utf-16", errors="replace")
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                # The OEM code page of a localized console: only the ASCII tokens matter here.
                text = data.decode("cp437", errors="replace")
    else:
        text = data
    return _CRLF.sub("\n", text.lstrip("\ufeff").replace("\x00", ""))


def _codes(result: CertreqResult) -> list[int]:
    """HRESULTs in the output, in order, then the exit code when it is one (certreq exits with
    the failing HRESULT); symbolic names stand in when no number is printed."""
    found: list[int] = []
    for match in _HEX.finditer(result.text):
        value = int(match.group(1), 16)
        if value & 0x80000000 and value not in found:
            found.append(value)
    for match in _NAME.finditer(result.text):
        value = _BY_NAME.get(match.group(1), 0)
        if value and value not in found:
            found.append(value)
    rc = result.returncode & 0xFFFFFFFF
    if rc & 0x80000000 and rc not in found:
        found.append(rc)
    return found


def _line_with(result: CertreqResult, pattern: re.Pattern[str] | str) -> str:
    for line in result.lines:
        if (re.search(pattern, line, re.IGNORECASE) if isinstance(pattern, str) else pattern.search(line)):
            return line[:300]
    return ""


def _first_line(result: CertreqResult) -> str:
    lines = result.lines
    return lines[0][:300] if lines else "(no output)"


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class CaTemplate:
    """One line of ``certutil -CATemplates``: cn, display name and the caller's access to it."""

    name: str
    display: str
    access: str  # "enroll" (Enroll; Auto-Enroll or not), "denied" (no Enroll), "" when unrecognised
    text: str  # certutil's own words after "--"


def parse_catemplates(text: str) -> list[CaTemplate]:
    """The templates ``certutil -config <cfg> -CATemplates`` lists: every template published on
    the CA, one line each, ``<cn>: <display name> -- <access>``, where certutil checks the caller's
    rights: ``Auto-Enroll`` (Enroll and Autoenroll), ``Auto-Enroll: Access is denied.`` (Enroll
    but no Autoenroll, which certreq does not need) or ``Access is denied.`` (no Enroll).

    azure-reference.md has no sample of this output; the format is the one certutil prints in
    public captures (e.g. "WebServer: Web Server -- Auto-Enroll: Access is denied."), English
    only. Access words certlc does not recognise (another language) stay unclassified.
    """
    found: list[CaTemplate] = []
    for raw in _decode(text).split("\n"):
        line = " ".join(raw.split())
        if line.lower().startswith("certutil:"):
            continue
        match = _CATEMPLATE.match(line)
        if match is None:
            continue
        access = match.group("access").strip()
        words = access.lower().rstrip(".")
        if words == "auto-enroll" or words.startswith("auto-enroll:"):
            kind = "enroll"
        elif words == "access is denied" or "0x80070005" in words:
            kind = "denied"
        else:
            kind = ""
        found.append(CaTemplate(match.group("name").strip(), match.group("display").strip(), kind, access))
    return found


def _chain_after(leaf: x509.Certificate, others: list[x509.Certificate]) -> list[x509.Certificate]:
    """``others`` without the leaf, ordered from the leaf's issuer upwards (a PKCS#7 SET has no
    order); certificates outside the leaf's chain follow, themselves in chain order."""
    pool = [c for c in order_chain(others) if c != leaf]
    chain: list[x509.Certificate] = []
    current = leaf
    while True:
        issuer = next((c for c in pool if c not in chain and is_issued_by(current, c)), None)
        if issuer is None:
            break
        chain.append(issuer)
        current = issuer
    return chain + [c for c in pool if c not in chain]


class CertreqConnector:
    """AD CS through ``certreq.exe`` on the worker (kind ``certreq``)."""

    def __init__(
        self,
        profile: str,
        config: str,
        *,
        template_map: dict[str, str] | None = None,
        default_template: str | None = None,
        runner: Runner | None = None,
        certreq: str = "certreq.exe",
        certutil: str = "certutil.exe",
        timeout: float = DEFAULT_TIMEOUT,
        work_dir: str | Path | None = None,
    ) -> None:
        self.profile = profile
        self.config = self._check_config(config)
        self.template_map = dict(template_map or {})
        self.default_template = default_template
        self.certreq = certreq
        self.certutil = certutil
        self.timeout = timeout
        self.runner: Runner = runner or default_runner(timeout)
        self.work_dir = Path(work_dir) if work_dir else None

    # --- validation ---------------------------------------------------------------------------
    def _check_config(self, config: str | None) -> str:
        value = (config or "").strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].strip()
        if not value or _CONTROL.search(value) or not _CONFIG_STRING.match(value):
            raise ConfigError(
                f"CA profile {self.profile!r}: endpoint {config!r} is not a certreq config string "
                '"<CA host>\\<CA name>" (e.g. "ca01.corp.example.com\\Corp Issuing CA")',
                reason="CAConfigInvalid", profile=self.profile)
        return value

    def _template(self, requested: str) -> str:
        name = resolve_template(requested, self.default_template, self.template_map, self.profile)
        # certreq splits -attrib on a literal "\n": a backslash could smuggle a second attribute
        # into the request (control characters are refused by resolve_template already).
        if "\\" in name:
            raise InvalidInput(f"template name {name!r} holds a backslash",
                               reason="TemplateInvalid", profile=self.profile)
        return name

    # --- running certreq ----------------------------------------------------------------------
    def _run(self, argv: list[str]) -> CertreqResult:
        tool = argv[0]
        label = PureWindowsPath(tool).stem  # certreq or certutil, whatever path the profile gives
        try:
            completed = self.runner(argv)
        except subprocess.TimeoutExpired:
            raise TransientError(f"{label} did not answer within {self.timeout:g} s (CA {self.config} "
                                 "slow or unreachable)", reason="CATimeout", profile=self.profile) from None
        except FileNotFoundError:
            raise ConfigError(f"{tool} was not found: the certreq connector needs a Windows worker "
                              f"with {PureWindowsPath(tool).name} on its PATH", reason="CertreqMissing",
                              profile=self.profile) from None
        except PermissionError:
            raise ConfigError(f"{tool} cannot be started (permission denied)",
                              reason="CertreqMissing", profile=self.profile) from None
        except OSError as exc:
            raise TerminalError(f"{label} could not be started: {exc}", reason="CertreqFailed",
                                profile=self.profile) from None
        return CertreqResult(int(getattr(completed, "returncode", 0) or 0),
                             _decode(getattr(completed, "stdout", None)),
                             _decode(getattr(completed, "stderr", None)))

    def _base(self, verb: str) -> list[str]:
        return [self.certreq, verb, "-q", "-config", self.config]

    def _workspace(self) -> tempfile.TemporaryDirectory[str]:
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        # mkdtemp creates the directory readable by its owner only.
        return tempfile.TemporaryDirectory(prefix="certlc-certreq-", dir=self.work_dir,
                                           ignore_cleanup_errors=True)

    # --- the connector contract ---------------------------------------------------------------
    def submit(self, request: SigningRequest) -> Disposition:
        template = self._template(request.template)
        try:
            csr = load_csr(request.csr_pem)
        except CertlcError:
            raise InvalidInput("the certificate request is not a readable PKCS#10 request",
                               reason="CsrInvalid", profile=self.profile) from None
        with self._workspace() as tmp:
            folder = Path(tmp)
            req, cer, p7b = folder / REQUEST_FILE, folder / CERT_FILE, folder / CHAIN_FILE
            req.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
            argv = [*self._base("-submit"), "-attrib", f"CertificateTemplate:{template}", str(req), str(cer), str(p7b)]
            return self._disposition(self._run(argv), cer, p7b, "")

    def retrieve(self, request_id: str) -> Disposition:
        request_id = str(request_id).strip().strip('"')
        if not request_id.isdigit() or len(request_id) > 10:
            raise InvalidInput(f"AD CS request id {request_id!r} is not a number", reason="RequestIdInvalid",
                               profile=self.profile)
        with self._workspace() as tmp:
            folder = Path(tmp)
            cer, p7b = folder / CERT_FILE, folder / CHAIN_FILE
            argv = [*self._base("-retrieve"), request_id, str(cer), str(p7b)]
            return self._disposition(self._run(argv), cer, p7b, request_id)

    def check(self) -> Health:
        try:
            result = self._run(self._base("-ping"))
        except CertlcError as exc:
            return Health(ok=False, problems=[exc.message])
        if _ALIVE.search(result.text) and not (result.returncode & 0xFFFFFFFF):
            return Health(ok=True)
        codes = _codes(result)
        known = next((HRESULTS[c] for c in codes if c in HRESULTS), None)
        if known is not None:
            problem = f"CA {self.config} does not answer certreq -ping: {known.text} (0x{codes[0]:08X} {known.name})"
        else:
            problem = f"CA {self.config} does not answer certreq -ping (exit {result.returncode}): {_first_line(result)}"
        return Health(ok=False, problems=[problem])

    def check_templates(self, templates: list[str]) -> list[TemplateCheck]:
        """Each template against ``certutil -CATemplates``, run as the worker's account (the one
        certreq enrols as), so its access words are about that account."""
        result = self._run([self.certutil, "-config", self.config, "-CATemplates"])
        listed = parse_catemplates(result.text)
        codes = _codes(result)
        if not listed and codes and codes[0] != _ERROR_NOT_FOUND:
            known = HRESULTS.get(codes[0])
            words = known.text if known is not None else _first_line(result)
            message = f"certutil -CATemplates ({self.config}): {words} (0x{codes[0]:08X})"
            context: dict[str, Any] = {"profile": self.profile, "ca_code": f"0x{codes[0]:08X}"}
            if known is not None and known.kind == _TRANSIENT:
                raise TransientError(message, reason=known.reason, **context)
            if known is not None and known.kind == _CONFIG:
                raise ConfigError(message, reason=known.reason, **context)
            raise TerminalError(message, reason=known.reason if known else "CertutilFailed", **context)
        if not listed and not codes and not re.search(r"command completed successfully", result.text, re.I):
            raise TerminalError(f"certutil -CATemplates ({self.config}) gave an answer certlc does not recognise "
                                f"(exit {result.returncode}): {_first_line(result)}", reason="CertreqUnrecognised",
                                profile=self.profile)
        return [self._template_check(asked, listed) for asked in templates]

    def _template_check(self, asked: str, listed: list[CaTemplate]) -> TemplateCheck:
        name = self.template_map.get(asked, asked)
        account = "the worker's account (for a service running as LocalSystem or Network Service: the computer account)"
        folded = name.casefold()
        line = next((t for t in listed if t.name.casefold() == folded), None)
        if line is not None:
            if line.access == "enroll":
                return TemplateCheck(asked, name, TemplateStatus.OK,
                                     f"published on CA {self.config}; the worker's account may enrol ({line.text})")
            if line.access == "denied":
                return TemplateCheck(asked, name, TemplateStatus.NOT_ENROLLABLE,
                                     f"published on CA {self.config}, but the worker's account may not enrol "
                                     f"({line.text})",
                                     f"ask the CA administrator to grant Enroll on the template to {account}")
            return TemplateCheck(asked, name, TemplateStatus.UNVERIFIABLE,
                                 f"published on CA {self.config}; certutil's access words are not ones certlc "
                                 f"knows: {line.text!r}")
        if _OID.match(name):
            return TemplateCheck(asked, name, TemplateStatus.UNVERIFIABLE,
                                 "certutil -CATemplates names templates by common name, not OID",
                                 f"map {name} to its template's common name in template_map to have it checked")
        display = next((t for t in listed if t.display.casefold() == folded), None)
        if display is not None:
            return TemplateCheck(asked, name, TemplateStatus.UNKNOWN,
                                 f"{name!r} is the display name of template {display.name!r}; the CA knows "
                                 "templates by their common name",
                                 "check template_map: v2 templates are named by their common name, not the "
                                 f"display name (use {display.name!r})")
        return TemplateCheck(asked, name, TemplateStatus.UNKNOWN,
                             f"CA {self.config} does not issue template {name!r} (not among the templates published "
                             "on it)",
                             "check the name (and template_map), or ask the CA administrator to publish the "
                             "template on this CA (Certificate Templates > New > Certificate Template to Issue)")

    # --- reading the answer -------------------------------------------------------------------
    def _read_files(self, cer: Path, p7b: Path, request_id: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
        try:
            leaf = load_certificates(cer.read_bytes())[0]
        except (CertlcError, OSError):
            raise TerminalError(f"certreq wrote {CERT_FILE} but it holds no readable certificate",
                                reason="CertreqOutputUnreadable", profile=self.profile,
                                request_id=request_id) from None
        others: list[x509.Certificate] = []
        if p7b.exists():
            try:
                others = load_certificates(p7b.read_bytes())
            except (CertlcError, OSError):
                raise TerminalError(f"certreq wrote {CHAIN_FILE} but it holds no readable PKCS#7 chain",
                                    reason="CertreqOutputUnreadable", profile=self.profile,
                                    request_id=request_id) from None
        return leaf, _chain_after(leaf, others)

    def _disposition(self, result: CertreqResult, cer: Path, p7b: Path, request_id: str) -> Disposition:
        match = _REQUEST_ID.search(result.text)
        request_id = match.group(1) if match else request_id
        context: dict[str, Any] = {"profile": self.profile, "request_id": request_id or None}

        # 1. A certificate file is the one unambiguous sign of issuance, in any language.
        if cer.exists() and cer.stat().st_size:
            leaf, chain = self._read_files(cer, p7b, request_id)
            return Disposition(DispositionStatus.ISSUED, request_id, certificate_pem=_pem(leaf),
                               chain_pem=tuple(_pem(c) for c in chain), reason="Issued",
                               message=_line_with(result, _ISSUED) or "Issued")

        # 2. HRESULTs: the table says denied, or which error to raise.
        codes = _codes(result)
        for value in codes:
            known = HRESULTS.get(value)
            if known is None:
                continue
            label = f"0x{value:08X} {known.name}"
            if known.kind == _DENIED:
                line = _line_with(result, f"0x{value:08x}") or _line_with(result, known.name)
                return Disposition(DispositionStatus.DENIED, request_id, reason=known.reason,
                                   message=line or f"{known.text} {label}")
            message = f"certreq ({self.config}): {known.text} ({label})"
            if known.kind == _TRANSIENT:
                raise TransientError(message, reason=known.reason, ca_code=f"0x{value:08X}", **context)
            if known.kind == _CONFIG:
                raise ConfigError(message, reason=known.reason, ca_code=f"0x{value:08X}", **context)
            raise TerminalError(message, reason=known.reason, ca_code=f"0x{value:08X}", **context)

        # 3. The English disposition lines.
        if _ISSUED.search(result.text) and not _DENIED_TEXT.search(result.text):
            raise TerminalError(f"certreq reported the request issued but wrote no {CERT_FILE}",
                                reason="CertreqOutputMissing", **context)
        if request_id and _DENIED_TEXT.search(result.text):
            return Disposition(DispositionStatus.DENIED, request_id, reason="Denied",
                               message=_line_with(result, _DENIED_TEXT))
        if request_id and _PENDING.search(result.text) and not codes:
            return Disposition(DispositionStatus.PENDING, request_id, reason="Pending",
                               message=_line_with(result, _PENDING))

        # 4. Anything else is an answer certlc does not understand: stop, and say what it was.
        code = f", 0x{codes[0]:08X}" if codes else ""
        raise TerminalError(
            f"certreq gave an answer certlc does not recognise (exit {result.returncode}{code}): {_first_line(result)}",
            reason="CertreqUnrecognised", ca_code=f"0x{codes[0]:08X}" if codes else None, **context)


def from_profile(name: str, profile: CAProfile, settings: Settings) -> CertreqConnector:
    """The connector for a ``kind: certreq`` profile. ``endpoint`` is the certreq config string
    ``<CA host>\\<CA name>``; ``options`` may set ``certreq`` (path of certreq.exe), ``certutil``
    (path of certutil.exe, for ``ca check``), ``timeout_seconds`` (default 120; ``timeout`` is
    its older name) and ``work_dir`` (parent of the private temporary directories)."""
    options = dict(profile.options or {})
    check_options(name, "certreq", options, {"certreq", "certutil", "timeout_seconds", "timeout", "work_dir"})
    if "timeout" in options and "timeout_seconds" in options:
        raise ConfigError(f"CA profile {name!r}: set timeout_seconds, not both it and timeout", reason="CaProfileInvalid",
                          profile=name)
    if "timeout" in options:
        options["timeout_seconds"] = options.pop("timeout")
    timeout = timeout_option(name, options, DEFAULT_TIMEOUT)
    return CertreqConnector(
        name,
        profile.endpoint or "",
        template_map=profile.template_map,
        default_template=profile.default_template,
        certreq=str(options.get("certreq") or "certreq.exe"),
        certutil=str(options.get("certutil") or "certutil.exe"),
        timeout=timeout,
        work_dir=options.get("work_dir") or None,
    )
