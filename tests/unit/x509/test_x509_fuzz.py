"""Whatever bytes arrive, load_any and describe answer with a Loaded/dict or InvalidInput, nothing else."""

from __future__ import annotations

import base64
import datetime as dt
import functools
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certlc.errors import InvalidInput
from certlc.x509 import describe, load_any

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "corpus"
# Mutated serials come out negative; cryptography's deprecation warning about that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def seeds() -> tuple[bytes, ...]:
    """Corpus files when present, plus generated samples so the fuzz never runs empty."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "fuzz.example.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("fuzz.example.com")]), critical=False)
            .sign(key, hashes.SHA256()))
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    der = cert.public_bytes(serialization.Encoding.DER)
    generated = [
        der,
        cert.public_bytes(serialization.Encoding.PEM),
        pkcs7.serialize_certificates([cert], serialization.Encoding.DER),
        csr.public_bytes(serialization.Encoding.PEM),
        base64.encodebytes(der),
        pkcs12.serialize_key_and_certificates(b"f", key, cert, None, serialization.NoEncryption()),
    ]
    corpus = [p.read_bytes() for p in sorted(CORPUS.glob("*")) if p.suffix not in (".json", ".md")] \
        if CORPUS.is_dir() else []
    return tuple(corpus + generated)


def load_and_describe(data: bytes, password: bytes | None = None) -> None:
    try:
        loaded = load_any(data, password)
        for obj in [*loaded.certificates, *loaded.csrs]:
            describe(obj)
    except InvalidInput as exc:
        assert exc.message and "\n" not in exc.message


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    load_and_describe(data)


@FUZZ
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-\n\r ", max_size=2000))
def test_random_base64_like_text(text: str) -> None:
    load_and_describe(text.encode())
    load_and_describe(b"-----BEGIN CERTIFICATE-----\n" + text.encode() + b"\n-----END CERTIFICATE-----\n")


@FUZZ
@given(st.data())
def test_mutated_samples(data: st.DataObject) -> None:
    sample = bytearray(data.draw(st.sampled_from(seeds())))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(sample) - 1))
        sample[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(sample)))
    if data.draw(st.booleans()):
        sample = sample[:cut]
    load_and_describe(bytes(sample), data.draw(st.sampled_from([None, b"cryptography", b"wrong"])))
