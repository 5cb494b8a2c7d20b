"""A real step-ca on loopback for the tests and the local stack.

``start_step_ca(workdir)`` makes a root and an intermediate CA with ``cryptography``, writes a
``ca.json`` by hand (HTTPS on 127.0.0.1, a bbolt database in ``workdir``, an ACME provisioner
named ``acme`` and optionally a JWK provisioner), starts the ``step-ca`` binary that
``deployments/dev/build-step-ca.sh`` builds from Debian's Go sources and returns once
``GET /health`` answers ok over TLS trusting the new root.

step-ca validates ACME challenges for real (there is no always-valid switch): dns-01 looks the TXT
record up through ``resolver`` (e.g. pebble-challtestsrv or BIND), and http-01 always dials port
80 of the identifier (step-ca 0.19 has no setting for another port).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certlc.errors import CertlcError
from certlc.stack import free_port, repository_root, stop_process, wait_until

__all__ = [
    "BUILD_SCRIPT",
    "JwkProvisioner",
    "StepCA",
    "StepCANotFound",
    "find_step_ca",
    "start_step_ca",
]

BUILD_SCRIPT = "deployments/dev/build-step-ca.sh"
ACME_PROVISIONER = "acme"
JWK_PROVISIONER = "renewer@example.test"


class StepCANotFound(CertlcError):
    """No step-ca binary: build one with deployments/dev/build-step-ca.sh."""

    reason = "StepCANotFound"


@dataclass(frozen=True)
class JwkProvisioner:
    """The JWK provisioner's name and signing key, for one-time tokens (``POST /1.0/sign``)."""

    name: str
    kid: str
    key: ec.EllipticCurvePrivateKey


@dataclass
class StepCA:
    """A running step-ca. ``root_pem`` is the CA bundle for its TLS listener and for the chains
    it issues (both end at the same root)."""

    workdir: Path
    url: str
    directory_url: str
    root_pem: Path
    intermediate_pem: Path
    root: x509.Certificate
    intermediate: x509.Certificate
    config_path: Path
    log_path: Path
    validity: dt.timedelta
    proc: subprocess.Popen[bytes]
    jwk: JwkProvisioner | None = field(default=None)

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> StepCA:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def find_step_ca(binary: str | os.PathLike[str] | None = None) -> Path:
    """The step-ca binary: ``binary``, ``$CERTLC_STEP_CA``, ``<repo>/.tools/step-ca``, then PATH."""
    if binary is not None:
        path = Path(binary)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise StepCANotFound(f"step-ca binary {path} does not exist or is not executable; "
                             f"build it with {BUILD_SCRIPT} {path}")
    env = os.environ.get("CERTLC_STEP_CA")
    if env:
        return find_step_ca(env)
    local = repository_root() / ".tools" / "step-ca"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("step-ca")
    if found:
        return Path(found)
    raise StepCANotFound(f"no step-ca binary (looked at $CERTLC_STEP_CA, {local} and PATH); build it with "
                         f"{BUILD_SCRIPT} (installs golang-go and golang-github-smallstep-certificates-dev "
                         f"as root, then writes {local})")


def start_step_ca(workdir: str | os.PathLike[str], *, binary: str | os.PathLike[str] | None = None,
                  resolver: str | None = None, port: int | None = None, acme: bool = True,
                  jwk: bool = False, validity_hours: int = 2160, timeout: float = 30) -> StepCA:
    """Create a CA in ``workdir`` and start step-ca on 127.0.0.1:``port`` (a free one by default).

    ``resolver`` (``host:port``) is the DNS server step-ca asks for dns-01 TXT records and for
    the addresses http-01 and tls-alpn-01 connect to. Leaves are valid ``validity_hours`` by
    default and at most. StepCANotFound when there is no binary; CertlcError naming the log when
    step-ca does not come up.
    """
    exe = find_step_ca(binary)
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"https://127.0.0.1:{port}"

    root, root_key = _ca_cert("certlc step-ca Test Root CA", None, None, path_length=1, days=3650)
    inter, inter_key = _ca_cert("certlc step-ca Test Intermediate CA", root, root_key, path_length=0, days=1825)
    root_pem, inter_pem, inter_key_pem = work / "root_ca.crt", work / "intermediate_ca.crt", work / "intermediate_ca_key"
    root_pem.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    inter_pem.write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    # Unencrypted, so step-ca needs no --password-file.
    inter_key_pem.write_bytes(inter_key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    inter_key_pem.chmod(0o600)

    provisioners: list[dict[str, object]] = []
    if acme:
        provisioners.append({"type": "ACME", "name": ACME_PROVISIONER})
    jwk_provisioner = None
    if jwk:
        key = ec.generate_private_key(ec.SECP256R1())
        public = _public_jwk(key)
        jwk_provisioner = JwkProvisioner(name=JWK_PROVISIONER, kid=public["kid"], key=key)
        provisioners.append({"type": "JWK", "name": JWK_PROVISIONER, "key": public})

    duration = f"{validity_hours}h"
    config = {
        "root": str(root_pem),
        "crt": str(inter_pem),
        "key": str(inter_key_pem),
        "address": f"127.0.0.1:{port}",
        "dnsNames": ["localhost", "127.0.0.1"],
        "logger": {"format": "text"},
        "db": {"type": "bbolt", "dataSource": str(work / "step.db")},
        "authority": {
            "claims": {"minTLSCertDuration": "5m", "defaultTLSCertDuration": duration,
                       "maxTLSCertDuration": duration},
            "provisioners": provisioners,
        },
        "tls": {"minVersion": 1.2, "maxVersion": 1.3, "renegotiation": False},
    }
    config_path = work / "ca.json"
    config_path.write_text(json.dumps(config, indent=2))

    # urfave/cli v1 stops at the first positional argument: every flag goes before ca.json.
    command = [str(exe)]
    if resolver:
        command += ["--resolver", resolver]
    command.append(str(config_path))
    log_path = work / "step-ca.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, cwd=work, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    trust = ssl.create_default_context(cafile=str(root_pem))

    def healthy() -> bool:
        response = httpx.get(f"{url}/health", verify=trust, timeout=2)
        return response.status_code == 200 and response.json().get("status") == "ok"

    wait_until(proc, healthy, f"step-ca ({exe})", log_path, timeout)
    return StepCA(workdir=work, url=url, directory_url=f"{url}/acme/{ACME_PROVISIONER}/directory",
                  root_pem=root_pem, intermediate_pem=inter_pem, root=root, intermediate=inter,
                  config_path=config_path, log_path=log_path, validity=dt.timedelta(hours=validity_hours),
                  proc=proc, jwk=jwk_provisioner)


def _ca_cert(common_name: str, issuer: x509.Certificate | None, issuer_key: ec.EllipticCurvePrivateKey | None,
             *, path_length: int, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certlc"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer = issuer_key or key
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name)
        .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    return builder.sign(signer, hashes.SHA256()), key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public JWK step-ca wants, ``kid`` = its RFC 7638 thumbprint."""
    numbers = key.public_key().public_numbers()
    members = {"crv": "P-256", "kty": "EC", "x": _b64(numbers.x.to_bytes(32, "big")),
               "y": _b64(numbers.y.to_bytes(32, "big"))}
    thumbprint = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return {"use": "sig", "alg": "ES256", "kid": _b64(thumbprint), **members}
