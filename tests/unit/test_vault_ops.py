"""Renewal operations over the Key Vault client, against a stand-in client (the real SDK and the
emulator are exercised end to end in tests/e2e)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certlc.ca.devca import DevCA
from certlc.config import TemplateSpec
from certlc.errors import InvalidInput, TerminalError, TransientError
from certlc.vault import CertificateSnapshot, PendingCsr, _snapshot, azure_errors, desired_sans, merge_issued

DER = serialization.Encoding.DER


def _csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "r.example")]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("r.example")]), critical=False)
            .sign(key, hashes.SHA256()))


class FakeVault:
    """Just enough of CertificateClient for merge_issued: versions, one pending operation."""

    def __init__(self, first: x509.Certificate, refuse_merge: str | None = None) -> None:
        self.versions = [("v1", first)]
        self.pending: SimpleNamespace | None = None
        self.refuse_merge = refuse_merge
        self.merges = 0

    def _bundle(self, version: str, cert: x509.Certificate) -> SimpleNamespace:
        return SimpleNamespace(cer=cert.public_bytes(DER), properties=SimpleNamespace(version=version))

    def get_certificate(self, name: str) -> SimpleNamespace:
        return self._bundle(*self.versions[-1])

    def get_certificate_operation(self, name: str) -> SimpleNamespace:
        if self.pending is None:
            raise ResourceNotFoundError("no pending")
        return self.pending

    def merge_certificate(self, name: str, chain: list[bytes], tags: Any = None) -> SimpleNamespace:
        self.merges += 1
        if self.refuse_merge:
            raise HttpResponseError(message=self.refuse_merge, response=SimpleNamespace(
                status_code=400, reason="Bad Request", headers={}, text=lambda: "", request=None))
        self.versions.append((f"v{len(self.versions) + 1}", x509.load_der_x509_certificate(chain[0])))
        self.pending.status = "completed"
        return self._bundle(*self.versions[-1])


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA(tmp_path_factory.mktemp("ca"), [TemplateSpec(name="WebServer", validity_days=90)])


def setup(ca: DevCA, *, reuse_key: bool, refuse: str | None = None):
    old_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    first = ca.sign(_csr(old_key), ca.templates[0], not_before=now - dt.timedelta(days=80),
                    not_after=now + dt.timedelta(days=10))
    vault = FakeVault(first, refuse)
    snap = _snapshot("v", "r", "v1", first.public_bytes(DER), {}, True)
    new_key = old_key if reuse_key else ec.generate_private_key(ec.SECP256R1())
    csr = _csr(new_key)
    vault.pending = SimpleNamespace(status="inProgress", request_id="req-1", issuer_name="Unknown")
    pending = PendingCsr("req-1", csr.public_bytes(serialization.Encoding.PEM).decode(), reused=False)
    return vault, snap, pending, [ca.sign(csr, ca.templates[0]), *ca.chain]


def test_merge_makes_one_new_version_and_a_repeat_finds_it_merged(ca: DevCA) -> None:
    vault, snap, pending, chain = setup(ca, reuse_key=False)
    first = merge_issued(vault, snap, pending, chain)
    assert not first.already_merged and first.version == "v2"
    again = merge_issued(vault, snap, pending, chain)
    assert again.already_merged and again.version == "v2" and vault.merges == 1


def test_a_refused_merge_under_key_reuse_is_a_failure_not_already_renewed(ca: DevCA) -> None:
    # With reuse_key the old version holds the CSR's key: that must not pass for "merged".
    vault, snap, pending, chain = setup(ca, reuse_key=True, refuse="The CSR used to get your certificate has already been used.")
    with pytest.raises(TerminalError, match="already been used"):
        merge_issued(vault, snap, pending, chain)
    assert [v for v, _ in vault.versions] == ["v1"]


def test_a_vanished_pending_operation_is_terminal_unless_our_leaf_is_there(ca: DevCA) -> None:
    vault, snap, pending, chain = setup(ca, reuse_key=True)
    vault.pending = None
    with pytest.raises(TerminalError) as info:
        merge_issued(vault, snap, pending, chain)
    assert info.value.reason == "PendingOperationMissing"


def test_a_replaced_pending_operation_is_never_merged_into(ca: DevCA) -> None:
    vault, snap, pending, chain = setup(ca, reuse_key=False)
    vault.pending.request_id = "someone-else"
    with pytest.raises(TerminalError) as info:
        merge_issued(vault, snap, pending, chain)
    assert info.value.reason == "PendingOperationReplaced" and vault.merges == 0


def _http_error(status: int, code: str = "", headers: dict[str, str] | None = None) -> HttpResponseError:
    response = SimpleNamespace(status_code=status, reason="x", headers=headers or {}, text=lambda: "", request=None)
    error = HttpResponseError(message=f"{code} problem", response=response)
    error.error = SimpleNamespace(code=code, message=f"{code} problem", innererror=None)
    return error


@pytest.mark.parametrize(
    ("raised", "expected", "reason"),
    [
        pytest.param(_http_error(429, "Throttled", {"Retry-After": "7"}), TransientError, "VaultBusy", id="429 retries"),
        pytest.param(_http_error(503), TransientError, "VaultTransient", id="5xx retries"),
        pytest.param(_http_error(409, "Conflict"), TransientError, "VaultTransient", id="409 conflict retries"),
        pytest.param(_http_error(403, "Forbidden"), TerminalError, "Forbidden", id="403 is terminal"),
        pytest.param(_http_error(400, "BadParameter"), TerminalError, "BadParameter", id="400 is terminal"),
        pytest.param(ResourceNotFoundError("gone"), InvalidInput, "NotFound", id="404 is bad input"),
        pytest.param(ClientAuthenticationError("no credential"), TerminalError, "NoCredential",
                     id="no token at all"),
        pytest.param(ServiceRequestError("Connection refused"), TransientError, "VaultUnreachable",
                     id="network down retries"),
        pytest.param(ServiceRequestError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), TerminalError,
                     "VaultTlsUntrusted", id="untrusted TLS is configuration"),
    ],
)
def test_azure_errors_are_classified_where_they_happen(raised: Exception, expected: type, reason: str) -> None:
    with pytest.raises(expected) as info, azure_errors("read certificate", "v", "c"):
        raise raised
    assert info.value.reason == reason
    assert "read certificate (v/c)" in info.value.message
    if reason == "VaultBusy":
        assert info.value.retry_after == 7


def test_a_san_key_vault_cannot_request_refuses_the_certificate() -> None:
    cert = CertificateSnapshot(vault="v", name="c", version="1", thumbprint="A", subject="CN=c",
                               sans=["DNS:c.example", "otherName:1.3.6.1.4.1.311.25.1:0410ab"],
                               key={"type": "EC", "size": 256, "curve": "secp256r1"}, ekus=[],
                               not_before="", not_after="", template=None)
    with pytest.raises(InvalidInput) as info:
        desired_sans(cert)
    assert info.value.reason == "SanNotRepresentable"
