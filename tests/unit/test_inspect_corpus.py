"""`certlc inspect` reads every file of the field corpus as EXPECTED.json says, and fails cleanly.

The corpus lives outside the project (``../shared/corpus`` from the project root) and is never
copied in; without it the corpus cases are skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from certlc.x509 import describe, load_any

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
EXPECTED: dict[str, dict[str, Any]] = (
    json.loads((CORPUS / "EXPECTED.json").read_text(encoding="utf-8")) if (CORPUS / "EXPECTED.json").is_file() else {}
)
CORPUS_FILES = sorted(EXPECTED) or [pytest.param("", marks=pytest.mark.skip(reason=f"no corpus at {CORPUS}"))]


def run_inspect(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "certlc.cli", "inspect", *args],
                          capture_output=True, timeout=60, env=env, check=False)


def is_subsequence(expected: list[str], actual: list[str]) -> bool:
    rest = iter(actual)
    return all(note in rest for note in expected)


def password_args(expected: dict[str, Any]) -> list[str]:
    password = expected.get("pfx_password")
    return ["--password", password] if password else []


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_cli_json_matches_expected(name: str) -> None:
    expected = EXPECTED[name]
    result = run_inspect(str(CORPUS / name), "--json", *password_args(expected))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    report = json.loads(result.stdout.decode("utf-8"))
    assert report["objects"] == expected["objects"]
    # The notes EXPECTED.json lists appear in that order; certlc may say more (see the DER p7b).
    assert is_subsequence(expected["format_notes"], report["format_notes"]), report["format_notes"]
    if "key_matches_cert" in expected:
        assert report["key_matches_cert"] == expected["key_matches_cert"]


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_load_and_describe_match_expected(name: str) -> None:
    expected = EXPECTED[name]
    password = expected.get("pfx_password")
    loaded = load_any((CORPUS / name).read_bytes(), password.encode() if password else None)
    assert [describe(o) for o in [*loaded.certificates, *loaded.csrs]] == expected["objects"]
    assert is_subsequence(expected["format_notes"], loaded.format_notes)
    if "key_matches_cert" in expected:
        assert loaded.has_private_key is True
        assert loaded.key_matches_cert is expected["key_matches_cert"]


@pytest.mark.parametrize("name", [n for n in EXPECTED if EXPECTED[n].get("pfx_password")] or
                         [pytest.param("", marks=pytest.mark.skip(reason="no password-protected PFX in corpus"))])
def test_cli_pfx_without_its_password_says_so(name: str) -> None:
    result = run_inspect(str(CORPUS / name), "--json")
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [f"certlc: error: {CORPUS / name}: PKCS#12 file needs a password"]


# --- unreadable files: exit 2, one line on stderr, nothing on stdout -------------------------------


def _pfx(password: bytes) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "pfx.example.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)).sign(key, hashes.SHA256()))
    return pkcs12.serialize_key_and_certificates(b"x", key, cert, None,
                                                 serialization.BestAvailableEncryption(password))


@pytest.mark.parametrize(("content", "args", "message"), [
    pytest.param(b"", [], "file is empty", id="empty"),
    pytest.param(bytes(range(256)) * 4, [], "file holds no certificate, CSR or PKCS#12 data", id="random-bytes"),
    pytest.param(b"-----BEGIN CERTIFICATE-----\nMIIDozCCAyigAwIBAgISBSiaScUCl8DPYDK34a5iRDiD\n", [],
                 "PEM CERTIFICATE block has no END line (file truncated?)", id="truncated-pem"),
    pytest.param(None, ["--password", "Hunter2-guess"], "wrong password for PKCS#12 file", id="wrong-pfx-password"),
    pytest.param(None, [], "PKCS#12 file needs a password", id="missing-pfx-password"),
])
def test_cli_unreadable_file_exits_2_with_one_line(
        tmp_path: Path, content: bytes | None, args: list[str], message: str) -> None:
    path = tmp_path / "input.bin"
    path.write_bytes(_pfx(b"Hunter2-right") if content is None else content)
    result = run_inspect(str(path), *args)
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [f"certlc: error: {path}: {message}"]
    assert b"Hunter2" not in result.stderr


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_cli_file_that_cannot_be_opened(tmp_path: Path, kind: str) -> None:
    path = tmp_path if kind == "directory" else tmp_path / "nope.pem"
    result = run_inspect(str(path), "--json")
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"certlc: error: cannot read {path}: ")


def test_cli_human_output_names_the_certificate(tmp_path: Path) -> None:
    path = tmp_path / "cert.pfx"
    path.write_bytes(_pfx(b"pw"))
    result = run_inspect(str(path), "--password", "pw")
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "CN=pfx.example.com" in out and "private key: present (not shown)" in out
    assert "pw\n" not in out and "PRIVATE KEY" not in out
