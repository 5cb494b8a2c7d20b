"""certlc inspect: passwords, encrypted keys, standard input and oversized input."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SECRET = "correct horse battery"


def run(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certlc.cli", "inspect", *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60, check=False)


@pytest.fixture(scope="module")
def key_and_cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enc.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    path = tmp_path_factory.mktemp("enc") / "key-then-cert.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(SECRET.encode()))
                     + cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_an_encrypted_key_without_its_password_is_not_called_a_mismatch(key_and_cert: Path) -> None:
    proc = run(str(key_and_cert))
    assert proc.returncode == 0
    assert "encrypted; give its password" in proc.stdout and "matches no certificate" not in proc.stdout


def test_the_right_password_checks_the_key_from_file_or_environment(key_and_cert: Path, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    for proc in (run(str(key_and_cert), "--password-file", str(pw)),
                 run(str(key_and_cert), env={"CERTLC_PASSWORD": SECRET})):
        assert proc.returncode == 0, proc.stderr
        assert "belongs to a certificate" in proc.stdout
        assert SECRET not in proc.stdout + proc.stderr


def test_a_wrong_password_is_one_line_and_not_echoed(key_and_cert: Path) -> None:
    proc = run(str(key_and_cert), "--password", "hunter2")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"certlc: error: {key_and_cert}: wrong password for the encrypted private key"
    assert "hunter2" not in proc.stdout + proc.stderr


@pytest.mark.skipif(not Path("/dev/stdin").exists(), reason="no /dev/stdin")
def test_standard_input_is_read_through_dev_stdin(key_and_cert: Path) -> None:
    proc = run("/dev/stdin", "--json", stdin=key_and_cert.read_bytes())
    assert proc.returncode == 0, proc.stderr
    assert '"subject": "CN=enc.example"' in proc.stdout


def test_oversized_input_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "big.pem"
    with big.open("wb") as fh:
        fh.truncate(17 * 1024 * 1024)
    proc = run(str(big))
    assert proc.returncode == 2 and "larger than 16 MiB" in proc.stderr
    if Path("/dev/zero").exists():
        proc = run("/dev/zero")
        assert proc.returncode == 2 and "larger than 16 MiB" in proc.stderr
