"""certreq.exe enrollment: argv, recorded console outputs, files, chain order, errors, cleanup."""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from certlc.ca.base import CAConnector, DispositionStatus, SigningRequest, TemplateStatus
from certlc.ca.certreq import HRESULTS, CertreqConnector, from_profile, parse_catemplates
from certlc.config import CAProfile
from certlc.errors import ConfigError, InvalidInput, TerminalError, TransientError

CONFIG = "ca01.corp.example.com\\Corp Issuing CA"
V2_OID = "1.3.6.1.4.1.311.21.8.1.2.3"


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


# --- recorded certreq outputs (Windows Server 2019/2022, English; CRLF as the console writes) ----
ISSUED = crlf('RequestId: 123\nRequestId: "123"\nCertificate retrieved(Issued) Issued\n')
PENDING = crlf('RequestId: 124\nRequestId: "124"\nCertificate request is pending: Taken Under Submission (0)\n')
RETRIEVED = crlf('RequestId: 124\nRequestId: "124"\nCertificate retrieved(Issued) Issued  Resubmitted by CORP\\pkiadmin\n')
DENIED_BY_MANAGER = crlf(
    'RequestId: 125\nRequestId: "125"\n'
    "Certificate not issued (Denied) Denied by CORP\\pkiadmin 0x80094014 (-2146877420 CERTSRV_E_ADMIN_DENIED_REQUEST)"
    ", The request was denied by a certificate manager or CA administrator.\n")
TEMPLATE_DENIED = crlf(
    'RequestId: 126\nRequestId: "126"\n'
    "Certificate not issued (Denied) Denied by Policy Module  0x80094012, The permissions on the certificate "
    "template do not allow the current user to enroll for this type of certificate.\n")
UNSUPPORTED_TEMPLATE = crlf(
    'RequestId: 127\nRequestId: "127"\n'
    "Certificate not issued (Denied) Denied by Policy Module  0x80094800, The request was for a certificate "
    "template that is not supported by the Active Directory Certificate Services policy: WebServerShort.\n"
    "The requested certificate template is not supported by this CA. 0x80094800 "
    "(-2146875392 CERTSRV_E_UNSUPPORTED_CERT_TYPE)\n")
RPC_UNAVAILABLE = crlf(
    "Certificate Request Processor: The RPC server is unavailable. 0x800706ba (WIN32: 1722 RPC_S_SERVER_UNAVAILABLE)\n")
ACCESS_DENIED = crlf("Certificate Request Processor: Access is denied. 0x80070005 (WIN32: 5 ERROR_ACCESS_DENIED)\n")
NO_REQUEST = crlf(
    "Certificate Request Processor: The request ID does not exist. 0x80094002 (-2146877438 CERTSRV_E_NO_REQUEST)\n")
PING_ALIVE = crlf(
    'Connecting to ca01.corp.example.com\\Corp Issuing CA ...\n'
    'Server "Corp Issuing CA" ICertRequest2 interface is alive (16ms)\n'
    "CertReq: -ping command completed successfully.\n")
PING_DOWN = crlf(
    'Connecting to ca01.corp.example.com\\Corp Issuing CA ...\n'
    "Server could not be reached: The RPC server is unavailable. 0x800706ba (WIN32: 1722 RPC_S_SERVER_UNAVAILABLE) "
    "-- (31ms)\n")
# certreq exits with the failing HRESULT: 0x800706ba as Windows reports it.
RC_RPC = 0x800706BA
RC_ACCESS = 0x80070005


# --- a small PKI: root -> issuing CA -> leaf ------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, issuer, public_key, signing_key, *, ca: bool, issuer_key=None):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=10)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key or public_key), critical=False)
    )
    return builder.sign(signing_key, hashes.SHA256())


@dataclass
class PKI:
    root: x509.Certificate
    issuing: x509.Certificate
    leaf: x509.Certificate
    csr_pem: str


@pytest.fixture(scope="module")
def pki() -> PKI:
    root_key, issuing_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert(_name("Corp Root CA"), _name("Corp Root CA"), root_key.public_key(), root_key, ca=True)
    issuing = _cert(_name("Corp Issuing CA"), root.subject, issuing_key.public_key(), root_key, ca=True,
                    issuer_key=root_key.public_key())
    leaf = _cert(_name("www.example.com"), issuing.subject, leaf_key.public_key(), issuing_key, ca=False,
                 issuer_key=issuing_key.public_key())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(_name("www.example.com"))
           .sign(leaf_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    return PKI(root, issuing, leaf, csr)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def files_for(pki: PKI, *, der: bool = True) -> dict[str, bytes]:
    """What certreq writes on issuance: cert.cer and a PKCS#7 whose SET order is not chain order."""
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    return {
        "cer": pki.leaf.public_bytes(encoding),
        # root first, leaf last: the reverse of chain order, to prove it is rebuilt.
        "p7b": pkcs7.serialize_certificates([pki.root, pki.issuing, pki.leaf], encoding),
    }


# --- a fake certreq -------------------------------------------------------------------------------
@dataclass
class Answer:
    stdout: str = ""
    stderr: str = ""
    returncode: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    raises: BaseException | None = None


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


class FakeCertreq:
    """Plays recorded answers in order; writes cert.cer/chain.p7b where argv says."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []
        self.csr_seen: list[str] = []
        self.dirs: list[Path] = []

    def __call__(self, argv: list[str]) -> Completed:
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
        self.calls.append(list(argv))
        answer = self.answers.pop(0)
        if argv[1] in ("-submit", "-retrieve"):
            cer, p7b = Path(argv[-2]), Path(argv[-1])
            self.dirs.append(cer.parent)
            assert cer.parent.is_dir() and not cer.exists()
            if argv[1] == "-submit":
                self.csr_seen.append(Path(argv[-3]).read_text())
            if "cer" in answer.files:
                cer.write_bytes(answer.files["cer"])
            if "p7b" in answer.files:
                p7b.write_bytes(answer.files["p7b"])
        if answer.raises is not None:
            raise answer.raises
        return Completed(answer.returncode, answer.stdout.encode(), answer.stderr.encode())


def connector(fake: FakeCertreq, **kw) -> CertreqConnector:
    kw.setdefault("template_map", {V2_OID: "WebServerShort"})
    return CertreqConnector("corp", CONFIG, runner=fake, **kw)


def request(pki: PKI, template: str = V2_OID) -> SigningRequest:
    return SigningRequest(pki.csr_pem, template, request_key="kv1/web/abc")


# --- tests ----------------------------------------------------------------------------------------
def test_is_a_ca_connector() -> None:
    assert isinstance(connector(FakeCertreq()), CAConnector)


def test_issued_argv_files_chain_order_and_cleanup(pki: PKI) -> None:
    fake = FakeCertreq(Answer(ISSUED, files=files_for(pki)))
    result = connector(fake).submit(request(pki))

    assert result.status is DispositionStatus.ISSUED and result.request_id == "123"
    assert result.certificate_pem == pem(pki.leaf)
    assert result.chain_pem == (pem(pki.issuing), pem(pki.root))  # issuing CA first, no leaf
    assert result.message == "Certificate retrieved(Issued) Issued"

    (argv,) = fake.calls
    folder = fake.dirs[0]
    assert argv == [
        "certreq.exe", "-submit", "-q", "-config", CONFIG,
        "-attrib", "CertificateTemplate:WebServerShort",  # OID mapped through template_map
        str(folder / "req.csr"), str(folder / "cert.cer"), str(folder / "chain.p7b"),
    ]
    assert fake.csr_seen == [pki.csr_pem]
    assert not folder.exists()  # temp dir removed


def test_pem_files_are_read_too(pki: PKI) -> None:
    fake = FakeCertreq(Answer(ISSUED, files=files_for(pki, der=False)))
    result = connector(fake).submit(request(pki, "WebServer"))
    assert result.issued and result.chain_pem == (pem(pki.issuing), pem(pki.root))
    assert "CertificateTemplate:WebServer" in fake.calls[0]  # unmapped names pass through


def test_pending_then_retrieve_later_issued(pki: PKI) -> None:
    fake = FakeCertreq(Answer(PENDING), Answer(RETRIEVED, files=files_for(pki)))
    conn = connector(fake)

    held = conn.submit(request(pki))
    assert held.status is DispositionStatus.PENDING and held.request_id == "124"
    assert held.message == "Certificate request is pending: Taken Under Submission (0)"

    later = conn.retrieve(held.request_id)
    assert later.issued and later.request_id == "124"
    assert later.certificate_pem == pem(pki.leaf)
    assert later.chain_pem == (pem(pki.issuing), pem(pki.root))
    folder = fake.dirs[1]
    assert fake.calls[1] == ["certreq.exe", "-retrieve", "-q", "-config", CONFIG, "124",
                             str(folder / "cert.cer"), str(folder / "chain.p7b")]
    assert not any(d.exists() for d in fake.dirs)


def test_retrieve_still_pending() -> None:
    fake = FakeCertreq(Answer(PENDING))
    assert connector(fake).retrieve("124").status is DispositionStatus.PENDING


@pytest.mark.parametrize("bad", ["12a", "-submit", "", "1 2", "12345678901"])
def test_retrieve_refuses_non_numeric_ids(bad: str) -> None:
    fake = FakeCertreq()
    with pytest.raises(InvalidInput):
        connector(fake).retrieve(bad)
    assert fake.calls == []


def test_denied_by_manager() -> None:
    result = connector(FakeCertreq(Answer(DENIED_BY_MANAGER, returncode=0x80094014))).retrieve("125")
    assert result.status is DispositionStatus.DENIED and result.request_id == "125"
    assert result.reason == "Denied"
    assert "0x80094014" in result.message and "certificate manager" in result.message


def test_template_permission_denied(pki: PKI) -> None:
    result = connector(FakeCertreq(Answer(TEMPLATE_DENIED))).submit(request(pki))
    assert result.status is DispositionStatus.DENIED and result.request_id == "126"
    assert result.reason == "TemplateDenied" and "0x80094012" in result.message


def test_unsupported_template(pki: PKI) -> None:
    result = connector(FakeCertreq(Answer(UNSUPPORTED_TEMPLATE, returncode=0x80094800))).submit(request(pki))
    assert result.status is DispositionStatus.DENIED and result.request_id == "127"
    assert result.reason == "TemplateNotSupported" and "0x80094800" in result.message


def test_unsupported_template_without_request_id_is_still_denied(pki: PKI) -> None:
    text = crlf("Certificate Request Processor: The requested certificate template is not supported by this CA. "
                "0x80094800 (-2146875392 CERTSRV_E_UNSUPPORTED_CERT_TYPE)\n")
    result = connector(FakeCertreq(Answer(stderr=text, returncode=0x80094800))).submit(request(pki))
    assert result.status is DispositionStatus.DENIED and result.reason == "TemplateNotSupported"


def test_rpc_unavailable_is_transient(pki: PKI) -> None:
    fake = FakeCertreq(Answer(stderr=RPC_UNAVAILABLE, returncode=RC_RPC))
    with pytest.raises(TransientError) as err:
        connector(fake).submit(request(pki))
    assert err.value.reason == "CAUnavailable" and err.value.context["ca_code"] == "0x800706BA"
    assert "RPC server is unavailable" in err.value.message
    assert not fake.dirs[0].exists()


def test_exit_code_alone_classifies(pki: PKI) -> None:
    # Localized console: no English, no hex, only the exit code carries the HRESULT (negative when
    # read as a signed int).
    fake = FakeCertreq(Answer(stderr="Der RPC-Server ist nicht verfügbar.\r\n", returncode=RC_RPC - 2**32))
    with pytest.raises(TransientError):
        connector(fake).submit(request(pki))


def test_access_denied_is_configuration(pki: PKI) -> None:
    fake = FakeCertreq(Answer(stderr=ACCESS_DENIED, returncode=RC_ACCESS))
    with pytest.raises(ConfigError) as err:
        connector(fake).submit(request(pki))
    assert err.value.reason == "AccessDenied" and "enroll" in err.value.message


def test_unknown_request_is_terminal() -> None:
    with pytest.raises(TerminalError) as err:
        connector(FakeCertreq(Answer(stderr=NO_REQUEST, returncode=0x80094002))).retrieve("999")
    assert err.value.reason == "RequestUnknown" and err.value.context["request_id"] == "999"


def test_process_timeout_is_transient(pki: PKI) -> None:
    fake = FakeCertreq(Answer(raises=subprocess.TimeoutExpired(["certreq.exe"], 120)))
    with pytest.raises(TransientError) as err:
        connector(fake).submit(request(pki))
    assert err.value.reason == "CATimeout"
    assert not fake.dirs[0].exists()


def test_missing_certreq_is_configuration(pki: PKI) -> None:
    with pytest.raises(ConfigError) as err:
        connector(FakeCertreq(Answer(raises=FileNotFoundError("certreq.exe")))).submit(request(pki))
    assert err.value.reason == "CertreqMissing"


def test_garbage_output_is_terminal_and_named(pki: PKI) -> None:
    fake = FakeCertreq(Answer("\r\n  Something went sideways: flux capacitor  \r\nmore noise\r\n", returncode=1))
    with pytest.raises(TerminalError) as err:
        connector(fake).submit(request(pki))
    assert err.value.reason == "CertreqUnrecognised"
    assert "Something went sideways: flux capacitor" in err.value.message and "exit 1" in err.value.message


def test_unknown_hresult_is_terminal_with_code(pki: PKI) -> None:
    text = crlf("Certificate Request Processor: Something new. 0x80091234 (-2146889164 SOMETHING_NEW)\n")
    with pytest.raises(TerminalError) as err:
        connector(FakeCertreq(Answer(stderr=text, returncode=0x80091234))).submit(request(pki))
    assert err.value.context["ca_code"] == "0x80091234" and "Something new" in err.value.message


def test_issued_text_without_file_is_terminal(pki: PKI) -> None:
    with pytest.raises(TerminalError) as err:
        connector(FakeCertreq(Answer(ISSUED))).submit(request(pki))
    assert err.value.reason == "CertreqOutputMissing"


def test_unreadable_certificate_file_is_terminal(pki: PKI) -> None:
    fake = FakeCertreq(Answer(ISSUED, files={"cer": b"not a certificate"}))
    with pytest.raises(TerminalError) as err:
        connector(fake).submit(request(pki))
    assert err.value.reason == "CertreqOutputUnreadable"
    assert not fake.dirs[0].exists()


def test_noise_around_the_answer_is_tolerated(pki: PKI) -> None:
    noisy = "\ufeff" + crlf("Active Directory-Zertifikatdienste\n\n" + ISSUED.replace("\r\n", "\n") + "Fertig.\n")
    result = connector(FakeCertreq(Answer(noisy, files=files_for(pki)))).submit(request(pki))
    assert result.issued and result.request_id == "123"


def test_chain_without_p7b_is_empty(pki: PKI) -> None:
    fake = FakeCertreq(Answer(ISSUED, files={"cer": files_for(pki)["cer"]}))
    result = connector(fake).submit(request(pki))
    assert result.issued and result.chain_pem == ()


@pytest.mark.parametrize("template", ["Web\\nServer", "Web\nServer", "Web\x00"])
def test_template_cannot_inject_attributes(pki: PKI, template: str) -> None:
    fake = FakeCertreq()
    with pytest.raises(InvalidInput):
        connector(fake, template_map={}).submit(request(pki, template))
    assert fake.calls == []


def test_missing_template_uses_default_or_refuses(pki: PKI) -> None:
    with pytest.raises(InvalidInput):
        connector(FakeCertreq()).submit(request(pki, ""))
    fake = FakeCertreq(Answer(PENDING))
    connector(fake, default_template="WebServerShort").submit(request(pki, ""))
    assert "CertificateTemplate:WebServerShort" in fake.calls[0]


def test_bad_csr_is_refused_before_certreq_runs() -> None:
    fake = FakeCertreq()
    with pytest.raises(InvalidInput):
        connector(fake).submit(SigningRequest("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "WebServer"))
    assert fake.calls == []


def test_check_alive_and_down() -> None:
    fake = FakeCertreq(Answer(PING_ALIVE), Answer(PING_DOWN, returncode=RC_RPC),
                       Answer(raises=subprocess.TimeoutExpired(["certreq.exe"], 120)))
    conn = connector(fake)
    assert conn.check().ok
    assert fake.calls[0] == ["certreq.exe", "-ping", "-q", "-config", CONFIG]
    down = conn.check()
    assert not down.ok and "RPC server is unavailable" in down.problems[0]
    slow = conn.check()
    assert not slow.ok and "did not answer" in slow.problems[0]


@pytest.mark.parametrize("endpoint", [None, "", "ca01", "https://ca01/certsrv", "-ca\\x", "a\\b\\c", "ca\\\n"])
def test_bad_config_string_is_a_config_error(endpoint) -> None:
    with pytest.raises(ConfigError):
        from_profile("corp", CAProfile(kind="certreq", endpoint=endpoint), None)  # type: ignore[arg-type]


def test_from_profile(pki: PKI) -> None:
    profile = CAProfile(kind="certreq", endpoint=f'"{CONFIG}"', template_map={V2_OID: "WebServerShort"},
                        options={"certreq": "C:\\Windows\\System32\\certreq.exe", "timeout": 30})
    conn = from_profile("corp", profile, None)  # type: ignore[arg-type]
    assert conn.profile == "corp" and conn.config == CONFIG and conn.timeout == 30
    fake = FakeCertreq(Answer(PENDING))
    conn.runner = fake
    conn.submit(request(pki))
    assert fake.calls[0][:5] == ["C:\\Windows\\System32\\certreq.exe", "-submit", "-q", "-config", CONFIG]
    with pytest.raises(ConfigError):
        from_profile("corp", CAProfile(kind="certreq", endpoint=CONFIG, options={"timeout": "soon"}), None)  # type: ignore[arg-type]
    # timeout_seconds, as every other kind names it; bad values and unknown options are refused by name.
    assert from_profile("corp", CAProfile(kind="certreq", endpoint=CONFIG, options={"timeout_seconds": 45}),
                        None).timeout == 45  # type: ignore[arg-type]
    for options, fragment in (({"timeout_seconds": -3}, "timeout_seconds must be a positive number"),
                              ({"timout": 5}, r"unknown option\(s\) \['timout'\]")):
        with pytest.raises(ConfigError, match=fragment):
            from_profile("corp", CAProfile(kind="certreq", endpoint=CONFIG, options=options), None)  # type: ignore[arg-type]


def test_default_runner_uses_no_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def fake_run(argv, **kw):
        seen.update(kw, argv=argv)
        return subprocess.CompletedProcess(argv, 0, PING_ALIVE.encode(), b"")

    monkeypatch.setattr(subprocess, "run", fake_run)
    conn = CertreqConnector("corp", CONFIG, timeout=42)
    assert conn.check().ok
    assert seen["argv"] == ["certreq.exe", "-ping", "-q", "-config", CONFIG]
    assert seen["shell"] is False and seen["timeout"] == 42 and seen["capture_output"] is True


def test_hresult_table_codes_are_hresults() -> None:
    assert all(code & 0x80000000 for code in HRESULTS)
    assert HRESULTS[0x80094014].name == "CERTSRV_E_ADMIN_DENIED_REQUEST"
    assert HRESULTS[0x80094012].name == "CERTSRV_E_TEMPLATE_DENIED"


# --- check_templates: certutil -config <cfg> -CATemplates ---------------------------------------
# azure-reference.md has no sample; these follow certutil's line format in public captures
# ("<cn>: <display name> -- <access>") and its trailer lines. Access words: "Auto-Enroll" = Enroll
# and Autoenroll; "Auto-Enroll: Access is denied." = Enroll only; "Access is denied." = no Enroll.
CATEMPLATES = crlf(
    "WebServerShort: Web Server Short -- Auto-Enroll: Access is denied.\n"
    "Machine: Computer -- Auto-Enroll\n"
    "WebServer: Web Server -- Access is denied.\n"
    "SubCA: Subordinate Certification Authority -- Access is denied.\n"
    "CertUtil: -CATemplates command completed successfully.\n")
CATEMPLATES_NONE = crlf(
    "CertUtil: -CATemplates command FAILED: 0x80070490 (WIN32: 1168 ERROR_NOT_FOUND)\n"
    "CertUtil: Element not found.\n")
CATEMPLATES_DOWN = crlf(
    "CertUtil: -CATemplates command FAILED: 0x800706ba (WIN32: 1722 RPC_S_SERVER_UNAVAILABLE)\n"
    "CertUtil: The RPC server is unavailable.\n")


def test_catemplates_lines_are_parsed_with_access() -> None:
    listed = parse_catemplates(CATEMPLATES)
    assert [(t.name, t.display, t.access) for t in listed] == [
        ("WebServerShort", "Web Server Short", "enroll"), ("Machine", "Computer", "enroll"),
        ("WebServer", "Web Server", "denied"), ("SubCA", "Subordinate Certification Authority", "denied")]
    # Another language keeps the line but not a verdict.
    [german] = parse_catemplates("WebServer: Webserver -- Zugriff verweigert.\r\n")
    assert german.access == "" and german.text == "Zugriff verweigert."


def test_check_templates_runs_certutil_and_reads_each_template() -> None:
    fake = FakeCertreq(Answer(CATEMPLATES))
    results = connector(fake).check_templates([V2_OID, "Machine", "WebServer", "NoSuch", "Web Server Short",
                                               "1.3.6.1.4.1.311.21.8.9.9"])
    assert fake.calls == [["certutil.exe", "-config", CONFIG, "-CATemplates"]]
    short, machine, web, nosuch, display, oid = results
    assert short.ok and (short.template, short.ca_name) == (V2_OID, "WebServerShort")
    assert machine.ok
    assert web.status is TemplateStatus.NOT_ENROLLABLE and "Access is denied." in web.detail
    assert "grant Enroll on the template to the worker's account" in web.action
    assert "computer account" in web.action
    assert nosuch.status is TemplateStatus.UNKNOWN and "publish" in nosuch.action
    assert display.status is TemplateStatus.UNKNOWN and "'WebServerShort'" in display.action
    assert oid.status is TemplateStatus.UNVERIFIABLE and "template_map" in oid.action


def test_check_templates_with_nothing_published_says_unknown() -> None:
    fake = FakeCertreq(Answer(CATEMPLATES_NONE, returncode=0x80070490))
    [result] = connector(fake).check_templates(["WebServer"])
    assert result.status is TemplateStatus.UNKNOWN


@pytest.mark.parametrize(("answer", "error", "reason"), [
    (Answer(CATEMPLATES_DOWN, returncode=RC_RPC), TransientError, "CAUnavailable"),
    (Answer(stderr=ACCESS_DENIED.replace("Certificate Request Processor", "CertUtil"), returncode=RC_ACCESS),
     ConfigError, "AccessDenied"),
    (Answer("Something went sideways\r\n", returncode=1), TerminalError, "CertreqUnrecognised"),
    (Answer(raises=FileNotFoundError("certutil.exe")), ConfigError, "CertreqMissing"),
])
def test_check_templates_failures_raise(answer: Answer, error: type[Exception], reason: str) -> None:
    with pytest.raises(error) as caught:
        connector(FakeCertreq(answer)).check_templates(["WebServer"])
    assert caught.value.reason == reason  # type: ignore[attr-defined]


def test_certutil_path_from_profile() -> None:
    profile = CAProfile(kind="certreq", endpoint=CONFIG, options={"certutil": "C:\\Windows\\System32\\certutil.exe"})
    conn = from_profile("corp", profile, None)  # type: ignore[arg-type]
    fake = FakeCertreq(Answer(CATEMPLATES))
    conn.runner = fake
    assert conn.check_templates(["Machine"])[0].ok
    assert fake.calls[0][0] == "C:\\Windows\\System32\\certutil.exe"
