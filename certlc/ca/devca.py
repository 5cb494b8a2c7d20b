"""The development CA: a local root and issuing CA that issues the way AD CS does.

It stamps the template extensions exactly as AD CS does (v1: the template's cn as a BMPString
in 1.3.6.1.4.1.311.20.2; v2+: OID, major and minor version in 1.3.6.1.4.1.311.21.7), takes key
usage and EKUs from the template (plus the Application Policies mirror, 1.3.6.1.4.1.311.21.10),
copies subject and SANs from the request, backdates ``notBefore`` by ten minutes and sets
``notAfter`` to now + the template's validity. Templates may issue at once, hold the request for
CA manager approval (pending) or deny it, so the whole disposition contract can be exercised.

Its state (keys, certificates, held requests) lives in one directory, so the CA survives
restarts and several processes can share it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import encoder
from pyasn1.type import univ

from certlc.ca.base import Disposition, DispositionStatus, Health, SigningRequest, TemplateCheck, TemplateStatus
from certlc.config import CAProfile, Settings, TemplateSpec
from certlc.errors import ConfigError, InvalidInput, TerminalError, TransientError
from certlc.files import atomic_write
from certlc.x509.templates import TEMPLATE_NAME_OID, TEMPLATE_V2_OID, encode_template_name, encode_template_v2
from certlc.x509.usage import key_usage

__all__ = ["DROP_SANS_FILE", "OFFLINE_FILE", "DevCA", "DevCAConnector", "from_profile"]

APPLICATION_POLICIES_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.21.10")
# AD CS backdates notBefore by ten minutes to absorb clock skew between CA and clients.
BACKDATE = dt.timedelta(minutes=10)
OFFLINE_FILE = "OFFLINE"
# While <devca state>/DROP_SANS exists the CA ignores the request's SANs, as AD CS does for a template
# set to "Build from this Active Directory information": rehearses a CA answer merge must refuse.
DROP_SANS_FILE = "DROP_SANS"

# The texts AD CS puts in its disposition messages, so operators see familiar words.
UNSUPPORTED_TEMPLATE = (
    "The requested certificate template is not supported by this CA. "
    "0x80094800 (-2146875392 CERTSRV_E_UNSUPPORTED_CERT_TYPE)"
)
DENIED_BY_POLICY = "Denied by Policy Module 0x80094012 (-2146877422 CERTSRV_E_TEMPLATE_DENIED)"
TAKEN_UNDER_SUBMISSION = "Taken Under Submission"



def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _application_policies(ekus: list[str]) -> bytes:
    # SEQUENCE OF SEQUENCE { policyIdentifier OID }: AD CS mirrors the EKUs here.
    outer = univ.SequenceOf(componentType=univ.Sequence())
    for i, oid in enumerate(ekus):
        inner = univ.SequenceOf(componentType=univ.ObjectIdentifier())
        inner[0] = univ.ObjectIdentifier(oid)
        outer[i] = inner
    return encoder.encode(outer)


@dataclass(frozen=True)
class _Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


class DevCA:
    """A root + issuing CA kept in ``state_dir``; created on first use."""

    def __init__(self, state_dir: Path, templates: list[TemplateSpec], common_name: str = "certlc Dev Issuing CA"):
        self.state_dir = Path(state_dir)
        self.templates = list(templates)
        self.common_name = common_name
        self._issuing: _Authority | None = None
        self._root_cert: x509.Certificate | None = None

    # --- keys and certificates of the CA itself -----------------------------------------------
    def ensure(self) -> None:
        """Create the root and issuing CA once; later calls (and processes) load them."""
        if self._issuing is not None:
            return
        issuing_key = self.state_dir / "issuing.key"
        if not issuing_key.exists():
            self._create()
        self._issuing = _Authority(
            key=serialization.load_pem_private_key(issuing_key.read_bytes(), None),  # type: ignore[arg-type]
            certificate=x509.load_pem_x509_certificate((self.state_dir / "issuing.pem").read_bytes()),
        )
        self._root_cert = x509.load_pem_x509_certificate((self.state_dir / "root.pem").read_bytes())

    def _create(self) -> None:
        # Build everything in a private temporary directory and rename it into place, so two
        # processes racing on first use end with one consistent CA.
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.state_dir.parent, prefix=f".{self.state_dir.name}."))
        now = _now()
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, "certlc Dev Root CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certlc development"),
        ])
        root = self._ca_cert(root_name, root_name, root_key.public_key(), root_key, now, 3650, path_length=1)
        issuing_key = ec.generate_private_key(ec.SECP384R1())
        issuing_name = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, self.common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certlc development"),
        ])
        issuing = self._ca_cert(issuing_name, root_name, issuing_key.public_key(), root_key, now, 1825,
                                path_length=0, issuer_cert=root)
        pem = serialization.Encoding.PEM
        pkcs8 = serialization.PrivateFormat.PKCS8
        none = serialization.NoEncryption()
        atomic_write(staging / "root.key", root_key.private_bytes(pem, pkcs8, none))
        atomic_write(staging / "root.pem", root.public_bytes(pem), 0o644)
        atomic_write(staging / "issuing.key", issuing_key.private_bytes(pem, pkcs8, none))
        atomic_write(staging / "issuing.pem", issuing.public_bytes(pem), 0o644)
        (staging / "requests").mkdir()
        try:
            staging.rename(self.state_dir)
        except OSError:
            # Another process won the race (or the directory exists but is empty): keep theirs.
            for child in staging.rglob("*"):
                if child.is_file():
                    child.unlink()
            for child in sorted(staging.rglob("*"), reverse=True):
                child.rmdir()
            staging.rmdir()
            if not (self.state_dir / "issuing.key").exists():
                raise TerminalError(f"dev CA state directory {self.state_dir} exists but holds no CA",
                                    reason="CaStateInvalid") from None

    @staticmethod
    def _ca_cert(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
                 signing_key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int, *, path_length: int,
                 issuer_cert: x509.Certificate | None = None) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(key_usage(["digitalSignature", "keyCertSign", "cRLSign"]), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if issuer_cert is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        return builder.sign(signing_key, hashes.SHA384())

    @property
    def chain(self) -> list[x509.Certificate]:
        """Issuing CA then root: what follows a leaf in a chain."""
        self.ensure()
        assert self._issuing is not None and self._root_cert is not None
        return [self._issuing.certificate, self._root_cert]

    # --- templates ----------------------------------------------------------------------------
    def template(self, identifier: str) -> TemplateSpec | None:
        """The template named by its common name or its OID (AD CS accepts both in a request)."""
        for spec in self.templates:
            if identifier in (spec.name, spec.oid):
                return spec
        return None

    # --- issuing ------------------------------------------------------------------------------
    def sign(
        self,
        csr: x509.CertificateSigningRequest,
        template: TemplateSpec,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        drop_sans: bool = False,
    ) -> x509.Certificate:
        """Issue a certificate for ``csr`` with ``template``. Validity may be forced (seeding demos);
        ``drop_sans`` leaves the request's SANs out (see DROP_SANS_FILE)."""
        self.ensure()
        assert self._issuing is not None
        if not csr.is_signature_valid:
            raise InvalidInput("the certificate request's signature does not verify", reason="CsrInvalid")
        now = _now()
        start = not_before or now - BACKDATE
        end = not_after or now + dt.timedelta(days=template.validity_days)
        public_key = csr.public_key()
        issuer = self._issuing.certificate
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(issuer.subject)
            .public_key(public_key)
            # AD CS serials are long and random-looking; 19 random bytes keep them positive.
            .serial_number(int.from_bytes(secrets.token_bytes(19), "big") >> 1)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(template.key_usages), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if template.ekus:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.ObjectIdentifier(o) for o in template.ekus]), critical=False
            )
            builder = builder.add_extension(
                x509.UnrecognizedExtension(APPLICATION_POLICIES_OID, _application_policies(template.ekus)),
                critical=False,
            )
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            if not drop_sans:
                builder = builder.add_extension(san.value, critical=san.critical)
        except x509.ExtensionNotFound:
            pass
        if template.schema_version == 1:
            value = encode_template_name(template.name)
            builder = builder.add_extension(x509.UnrecognizedExtension(TEMPLATE_NAME_OID, value), critical=False)
        else:
            assert template.oid is not None
            value = encode_template_v2(template.oid, template.major, template.minor)
            builder = builder.add_extension(x509.UnrecognizedExtension(TEMPLATE_V2_OID, value), critical=False)
        return builder.sign(self._issuing.key, hashes.SHA256())

    # --- held requests (CA manager approval) --------------------------------------------------
    def _request_path(self, request_id: str) -> Path:
        if not request_id.isdigit():
            raise InvalidInput(f"dev CA request id {request_id!r} is not a number", reason="RequestIdInvalid")
        return self.state_dir / "requests" / f"{request_id}.json"

    def _next_request_id(self) -> str:
        folder = self.state_dir / "requests"
        folder.mkdir(parents=True, exist_ok=True)
        # O_EXCL makes the id unique across processes without a lock.
        while True:
            ids = [int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()]
            candidate = str(max(ids, default=1000) + 1)
            try:
                fd = os.open(folder / f"{candidate}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                continue
            os.close(fd)
            return candidate

    def record(self, request_id: str, data: dict[str, object]) -> None:
        atomic_write(self._request_path(request_id), json.dumps(data).encode())

    def load_request(self, request_id: str) -> dict[str, object]:
        path = self._request_path(request_id)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise TerminalError(f"dev CA has no request {request_id}", reason="RequestUnknown",
                                request_id=request_id) from None

    def set_decision(self, request_id: str, decision: str) -> None:
        """CA manager action: ``approve`` or ``deny`` a held request."""
        data = self.load_request(request_id)
        data["decision"] = decision
        self.record(request_id, data)


class DevCAConnector:
    """The dev CA behind the CA connector contract."""

    def __init__(self, profile: str, ca: DevCA, template_map: dict[str, str] | None = None):
        self.profile = profile
        self.ca = ca
        # Only check_templates maps names: requests arrive already mapped (renewal.template_for).
        self.template_map = dict(template_map or {})

    def _issued(self, request_id: str, cert: x509.Certificate) -> Disposition:
        pem = serialization.Encoding.PEM
        return Disposition(
            status=DispositionStatus.ISSUED,
            request_id=request_id,
            certificate_pem=cert.public_bytes(pem).decode(),
            chain_pem=tuple(c.public_bytes(pem).decode() for c in self.ca.chain),
            reason="Issued",
            message="Issued",
        )

    def _available(self) -> None:
        # An operator's outage switch, as `net stop certsvc` is on AD CS: while the file
        # <devca state>/OFFLINE exists the CA cannot be reached (used to rehearse CA outages).
        if (self.ca.state_dir / OFFLINE_FILE).exists():
            raise TransientError("the CA is not available: the RPC server is unavailable (certsvc stopped)",
                                 reason="CAUnavailable")

    def submit(self, request: SigningRequest) -> Disposition:
        self._available()
        self.ca.ensure()
        try:
            csr = x509.load_pem_x509_csr(request.csr_pem.encode())
        except ValueError:
            raise InvalidInput("the certificate request is not a PEM PKCS#10 request", reason="CsrInvalid") from None
        request_id = self.ca._next_request_id()
        template = self.ca.template(request.template)
        record: dict[str, object] = {"csr_pem": request.csr_pem, "template": request.template,
                                     "request_key": request.request_key}
        if template is None:
            record["decision"] = "deny"
            self.ca.record(request_id, record)
            return Disposition(DispositionStatus.DENIED, request_id, reason="TemplateNotSupported",
                               message=UNSUPPORTED_TEMPLATE)
        if template.approval == "deny":
            record["decision"] = "deny"
            self.ca.record(request_id, record)
            return Disposition(DispositionStatus.DENIED, request_id, reason="Denied", message=DENIED_BY_POLICY)
        if template.approval == "manager":
            record["decision"] = "pending"
            self.ca.record(request_id, record)
            return Disposition(DispositionStatus.PENDING, request_id, reason="Pending",
                               message=TAKEN_UNDER_SUBMISSION)
        cert = self.ca.sign(csr, template, drop_sans=(self.ca.state_dir / DROP_SANS_FILE).exists())
        record["decision"] = "issued"
        record["certificate_pem"] = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.ca.record(request_id, record)
        return self._issued(request_id, cert)

    def retrieve(self, request_id: str) -> Disposition:
        self._available()
        data = self.ca.load_request(request_id)
        decision = data.get("decision")
        if decision == "issued" and data.get("certificate_pem"):
            return self._issued(request_id, x509.load_pem_x509_certificate(str(data["certificate_pem"]).encode()))
        if decision == "approve":
            template = self.ca.template(str(data["template"]))
            if template is None:
                return Disposition(DispositionStatus.DENIED, request_id, reason="TemplateNotSupported",
                                   message=UNSUPPORTED_TEMPLATE)
            cert = self.ca.sign(x509.load_pem_x509_csr(str(data["csr_pem"]).encode()), template)
            data["decision"] = "issued"
            data["certificate_pem"] = cert.public_bytes(serialization.Encoding.PEM).decode()
            self.ca.record(request_id, data)
            return self._issued(request_id, cert)
        if decision == "deny":
            return Disposition(DispositionStatus.DENIED, request_id, reason="Denied", message=DENIED_BY_POLICY)
        return Disposition(DispositionStatus.PENDING, request_id, reason="Pending", message=TAKEN_UNDER_SUBMISSION)

    def check(self) -> Health:
        problems: list[str] = []
        try:
            self.ca.ensure()
        except (OSError, ValueError) as exc:
            problems.append(f"dev CA state in {self.ca.state_dir} cannot be used: {exc}")
        if not self.ca.templates:
            problems.append("dev CA has no templates configured")
        return Health(ok=not problems, problems=problems)

    def check_templates(self, templates: list[str]) -> list[TemplateCheck]:
        """Each template as ``submit`` would treat it: issued (or held), denied by policy, unknown."""
        self._available()
        results = []
        for asked in templates:
            name = self.template_map.get(asked, asked)
            spec = self.ca.template(name)
            if spec is None:
                known = ", ".join(t.name for t in self.ca.templates) or "none"
                results.append(TemplateCheck(asked, name, TemplateStatus.UNKNOWN,
                                             f"the dev CA has no template {name!r} (it has: {known})",
                                             "check the name (and the profile's template_map) against the dev CA's "
                                             "templates in [devca] templates"))
            elif spec.approval == "deny":
                # How the dev CA stands for a template the account may not enrol on.
                results.append(TemplateCheck(asked, name, TemplateStatus.NOT_ENROLLABLE,
                                             f"the dev CA refuses every request for {name!r} by policy "
                                             "(CERTSRV_E_TEMPLATE_DENIED, as AD CS answers an account without "
                                             "Enroll permission)",
                                             f"set approval = \"auto\" (or \"manager\") for {name!r} in [devca] templates"))
            else:
                held = " (requests wait for a CA manager's approval)" if spec.approval == "manager" else ""
                results.append(TemplateCheck(asked, name, TemplateStatus.OK, f"the dev CA issues {name!r}{held}"))
        return results


def from_profile(name: str, profile: CAProfile, settings: Settings) -> DevCAConnector:
    # The dev CA is configured in [devca]; a profile's endpoint or options would be ignored, so a
    # profile that sets them was surely meant for another kind.
    if profile.options or profile.endpoint:
        raise ConfigError(f"CA profile {name!r} is kind devca, which takes no endpoint or options (it is set up in "
                          "[devca]); was another kind meant (adcs-web, certreq, acme, cfssl)?", reason="CaProfileInvalid")
    return DevCAConnector(name, DevCA(settings.devca_path, settings.devca.templates, settings.devca.common_name),
                          profile.template_map)
