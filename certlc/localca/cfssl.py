"""A real ``cfssl serve`` on loopback whose signing profiles mirror certlc's templates.

Used by ``certlc up --ca cfssl`` (and so ``make demo CA=cfssl``): each dev-CA template becomes a
cfssl profile of the same name with the same validity and usages, every profile requires the
HMAC ``auth_key`` (cfssl's ``authsign``), and there is no authenticated default, so an unknown
profile is refused rather than signed with a default policy.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certlc.config import TemplateSpec
from certlc.errors import CertlcError
from certlc.files import PRIVATE_FILE_MODE, atomic_write
from certlc.localca.tls import self_signed_ca
from certlc.stack import _spawn, free_port, wait_until

__all__ = ["LocalCfssl", "cfssl_profiles", "start_cfssl"]

# cfssl's usage names for the EKUs and key usages certlc's templates use; others have no cfssl name.
_EKU_NAMES = {"1.3.6.1.5.5.7.3.1": "server auth", "1.3.6.1.5.5.7.3.2": "client auth",
              "1.3.6.1.5.5.7.3.4": "email protection", "1.3.6.1.5.5.7.3.3": "code signing"}
_KU_NAMES = {"digitalSignature": "digital signature", "keyEncipherment": "key encipherment",
             "keyAgreement": "key agreement", "nonRepudiation": "content commitment",
             "dataEncipherment": "data encipherment"}


@dataclass(frozen=True)
class LocalCfssl:
    endpoint: str
    auth_key_file: Path  # hex HMAC key, mode 0600
    ca_pem: Path
    proc: subprocess.Popen[bytes]


def cfssl_profiles(templates: list[TemplateSpec], key_name: str = "certlc") -> dict[str, object]:
    """cfssl's ``signing`` section: one authenticated profile per issuable template."""
    profiles: dict[str, object] = {}
    for template in templates:
        if template.approval == "deny":
            continue  # not offered: cfssl then refuses it as an unknown profile
        usages = [_KU_NAMES[k] for k in template.key_usages if k in _KU_NAMES]
        usages += [_EKU_NAMES[e] for e in template.ekus if e in _EKU_NAMES]
        profiles[template.name] = {"expiry": f"{template.validity_days * 24}h", "usages": usages,
                                   "auth_key": key_name}
    return {"profiles": profiles}


def _ca(folder: Path) -> Path:
    ca_pem = folder / "ca.pem"
    if ca_pem.exists() and (folder / "ca-key.pem").exists():
        return ca_pem
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_ca(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certlc local cfssl CA"),
                                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certlc")]))
    # cfssl 1.2 reads "EC PRIVATE KEY" (traditional) reliably; PKCS#8 EC support came later.
    atomic_write(folder / "ca-key.pem", key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                                          serialization.NoEncryption()), PRIVATE_FILE_MODE)
    atomic_write(ca_pem, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return ca_pem


def start_cfssl(folder: Path, templates: list[TemplateSpec], log: Path, *, port: int | None = None,
                timeout: float = 30) -> LocalCfssl:
    """Start ``cfssl serve`` on 127.0.0.1 with a CA of its own; returns once /info answers."""
    binary = shutil.which("cfssl")
    if binary is None:
        raise CertlcError("cfssl is not installed (Debian: apt-get install golang-cfssl)", reason="StackFailed")
    folder.mkdir(parents=True, exist_ok=True)
    ca_pem = _ca(folder)
    key_file = folder / "auth-key.hex"
    if not key_file.exists():
        atomic_write(key_file, secrets.token_hex(16), PRIVATE_FILE_MODE)
    config = {"signing": cfssl_profiles(templates),
              "auth_keys": {"certlc": {"type": "standard", "key": key_file.read_text().strip()}}}
    atomic_write(folder / "config.json", json.dumps(config, indent=1), PRIVATE_FILE_MODE)
    port = port or free_port()
    proc = _spawn([binary, "serve", "-address", "127.0.0.1", "-port", str(port), "-ca", str(ca_pem),
                   "-ca-key", str(folder / "ca-key.pem"), "-config", str(folder / "config.json")], log, cwd=folder)
    endpoint = f"http://127.0.0.1:{port}"
    wait_until(proc, lambda: httpx.post(endpoint + "/api/v1/cfssl/info", json={}, timeout=2).status_code == 200,
               "cfssl serve", log, timeout)
    return LocalCfssl(endpoint, key_file, ca_pem, proc)
